"""An emulation -> `struct moa_stage_params`: what one classifier stage of a link is told.

A stage is a schemas.Emulation (None: the stage does nothing). Emulations reach the datapath
checked at the edge (schemas.decode, docs/contract.md) and are trusted here: nothing is checked
again. What this module adds is what the kernel needs and the bus does not say: the datapath
divides nothing it can be told, so the queue (bytes) becomes time at the link rate and
probabilities become thresholds over 2^32 (abi.h), and every frame is charged its overhead
(24 bytes of L1 by default) and, with cells, its cells (`frame_wire`).
`stage_bytes` does it once per distinct emulation (emulations are frozen, hence hashable).

Queue (Emulation.queue): None = the default, what the link carries in 50 ms at its rate, at
least 64 KiB (a switch port buffer of that order; enough for a TCP window of a typical testbed
link), at most 1 s of link time but at least two full frames (as the link charges them, cells
included: `full_frame`) (below 524 kbit/s 64 KiB would be
seconds of queue, and every delay the box accepts must stay under its horizon: datapath/limits.py);
0 = no limit, only the horizon (ClassifierConfig.horizon_ns) bounds the backlog (the bus
refuses a queue below one frame, the classifier tests use it). Without a capacity no queue.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import schemas
from datapath.distributions import DIST_IDS, fixed_point, table_key
from datapath.traces import mean_rate_bps, trace_key

if TYPE_CHECKING:  # datapath.libbpf.abi reads the compiled object's BTF at import
    from datapath.libbpf.abi import Abi

__all__ = ["chain", "correlated_loss", "queue_bytes", "rate_bps", "queue_ns", "stage_params",
           "stage_bytes", "probability_threshold",
           "DEFAULT_QUEUE_MS", "MIN_DEFAULT_QUEUE_BYTES", "MAX_DEFAULT_QUEUE_MS",
           "DEFAULT_OVERHEAD",
           "frame_wire", "full_frame"]

NSEC = 1_000_000_000
ONE = 1 << 32                      # probability 1 as a threshold
DEFAULT_QUEUE_MS = 50
MIN_DEFAULT_QUEUE_BYTES = 64 * 1024
MAX_DEFAULT_QUEUE_MS = 1000
FULL_FRAME = 1538                  # 1500 + Ethernet header + L1 overhead
DEFAULT_OVERHEAD = schemas.messages.DEFAULT_OVERHEAD  # preamble 7 + SFD 1 + FCS 4 + IFG 12
SLOT_UNLIMITED = 0xFFFFFFFF         # a slot's packets or bytes without a limit (slot.h)
MIN_FRAME = 60                     # Ethernet's minimum without FCS: shorter frames are padded


def frame_wire(e: schemas.Emulation, frame: int) -> int:
    """What one frame of `frame` bytes (the inner Ethernet frame) costs on e's link, as the
    datapath charges it (datapath/bpf/charge.h): padded to 60 bytes, plus the per-frame
    overhead, in cells when the link has them: ceil((len + overhead) / cell_size) cells of
    cell_size + cell_overhead bytes."""
    w = max(0, max(frame, MIN_FRAME) + e.overhead)
    if e.cell_size:
        w = -(-w // e.cell_size) * (e.cell_size + e.cell_overhead)
    return w


def full_frame(e: schemas.Emulation) -> int:
    """A full frame (1500 bytes of MTU and the Ethernet header) as e's link charges it:
    FULL_FRAME with the default overhead and no cells."""
    return frame_wire(e, FULL_FRAME - DEFAULT_OVERHEAD)


def probability_threshold(p: float) -> int:
    """P -> threshold over 2^32: the datapath drops when a uniform u32 is below it."""
    return round(p * ONE)


def correlated_loss(p: float, rho: float) -> schemas.GilbertElliott | None:
    """Bernoulli loss P with lag-1 correlation rho as the two-state chain that has exactly that
    marginal and that autocorrelation (None without correlation or without loss).

    netem's `loss P CORR` mixes each uniform draw with the previous one, which shifts the loss
    rate away from P as CORR grows. Here the state is the previous packet's fate: lost again
    with P + rho (1 - P), lost after a kept one with P (1 - rho). Its stationary loss is P and
    the lag-k autocorrelation of the loss sequence rho^k (docs/semantics.md, "Loss"). It is a
    Gilbert-Elliott chain whose bad state always loses and whose good state never does, so
    the classifier runs it as one.
    """
    if not p or not rho or p >= 1.0:
        return None
    return schemas.GilbertElliott(p=p * (1 - rho), r=(1 - p) * (1 - rho),
                                  loss_good=0.0, loss_bad=1.0)


def chain(c: Any, p: float, rho: float) -> None:
    """A `struct moa_chain` (datapath/bpf/chain.h) for yes with probability p and lag-1
    correlation rho: the same two-state chain as correlated_loss, whose state is the last
    decision - yes again with p + rho (1 - p), yes after a no with p (1 - rho) - so the share of
    yes stays p whatever rho is (netem's correlation of its draws does not keep it)."""
    c.after_yes = probability_threshold(p + rho * (1 - p))
    c.after_no = probability_threshold(p * (1 - rho))


def rate_bps(e: schemas.Emulation) -> int:
    """The stage's rate: its capacity, or a trace's mean rate (datapath/traces.py)."""
    return e.capacity or (mean_rate_bps(e.trace.opportunities_ms) if e.trace else 0)


def queue_bytes(e: schemas.Emulation) -> int:
    """The queue the stage enforces, in bytes (0 = no limit, also without a rate). A trace
    link's default is the same rule at the trace's mean rate."""
    rate = rate_bps(e)
    if not rate:
        return 0
    if e.queue is not None:
        return e.queue
    q = max(MIN_DEFAULT_QUEUE_BYTES, rate * DEFAULT_QUEUE_MS // 8000)
    return max(2 * full_frame(e), min(q, rate * MAX_DEFAULT_QUEUE_MS // 8000))


def queue_ns(e: schemas.Emulation) -> int:
    """The queue as time at the rate (a trace's: its mean rate), rounded to the nearest ns, at
    least 1 ns if limited."""
    q = queue_bytes(e)
    if not q:
        return 0
    rate = rate_bps(e)
    return max(1, (q * 8 * NSEC + rate // 2) // rate)


def stage_params(e: schemas.Emulation | None, abi: Abi) -> Any:
    """A `struct moa_stage_params` (abi.StageParams) for one stage; None: all zero."""
    p = abi.StageParams()
    if e is None:
        return p
    p.rate_bps = e.capacity
    p.queue_ns = queue_ns(e)
    if e.trace is not None:
        # trace.h: the trace is the capacity; its queue is bytes (trace_queue), rate_bps its
        # mean rate for the telemetry and the AQM's gate, queue_ns unused (0).
        p.flags |= abi.StageFlags.TRACE
        p.trace_key = trace_key(e.trace.opportunities_ms)
        p.rate_bps = rate_bps(e)
        # a given queue is at most TRACE_QUEUE_MAX (schemas refuses more); the default too
        p.trace_queue = min(queue_bytes(e), schemas.messages.TRACE_QUEUE_MAX)
        p.queue_ns = 0
    p.latency_ns = e.latency
    p.jitter_ns = e.jitter
    p.overhead = e.overhead
    p.cell_size = e.cell_size
    p.cell_overhead = e.cell_overhead
    p.flags |= abi.StageFlags.REORDER if e.reorder else 0
    if e.state == "down":
        p.flags |= abi.StageFlags.DOWN
    p.dist = DIST_IDS[e.distribution]
    if e.distribution == "custom" and e.distribution_table:
        p.dist_key = table_key(e.distribution_table)
    if e.corrupt:
        p.flags |= abi.StageFlags.CORRUPT
        p.corrupt_threshold = probability_threshold(e.corrupt)
    if e.reorder_early is not None:
        p.flags |= abi.StageFlags.EARLY
        chain(p.early, e.reorder_early.probability, e.reorder_early.correlation)
        p.early_gap = e.reorder_early.gap
    if e.duplicate:
        p.flags |= abi.StageFlags.DUPLICATE
        chain(p.dup, e.duplicate, e.duplicate_correlation)
    if e.slot is not None:  # slot.h; checked at the edge: gaps within 4 s, limits 2^31 - 1
        p.flags |= abi.StageFlags.SLOT
        p.slot_dist = DIST_IDS[e.slot.distribution]
        p.slot_gap_ns, p.slot_span_ns = e.slot.gaps()
        p.slot_packets = e.slot.packets or SLOT_UNLIMITED
        p.slot_bytes = e.slot.bytes or SLOT_UNLIMITED
    if e.aqm.kind != "taildrop" and p.rate_bps:
        msg = schemas.messages
        codel = e.aqm.kind == "codel"
        p.aqm = int(abi.Aqm.CODEL if codel else abi.Aqm.PIE)
        p.aqm_target_ns = e.aqm.target if e.aqm.target is not None else (
            msg.CODEL_TARGET_NS if codel else msg.PIE_TARGET_NS)
        p.aqm_interval_ns = e.aqm.interval if e.aqm.interval is not None else (
            msg.CODEL_INTERVAL_NS if codel else msg.PIE_INTERVAL_NS)
        if e.aqm.ecn:
            p.flags |= abi.StageFlags.ECN
    p.delay_rho, p.delay_innov = fixed_point(e.distribution, e.delay_correlation,
                                             e.distribution_table)
    ge = e.burst if e.burst is not None else correlated_loss(e.loss, e.loss_correlation)
    if ge is not None:
        p.loss_model = abi.LossModel.GILBERT_ELLIOTT
        p.ge.p_good_to_bad = probability_threshold(ge.p)
        p.ge.p_bad_to_good = probability_threshold(ge.r)
        p.ge.loss_good = probability_threshold(ge.loss_good)
        p.ge.loss_bad = probability_threshold(ge.loss_bad)
    elif e.loss:
        p.loss_model = abi.LossModel.BERNOULLI
        p.loss_threshold = probability_threshold(e.loss)
    else:
        p.loss_model = abi.LossModel.NONE
    return p


@lru_cache(maxsize=4096)
def stage_bytes(e: schemas.Emulation | None, abi: Abi) -> bytes:
    """The bytes of stage_params(e, abi), computed once per distinct emulation (and ABI)."""
    return bytes(stage_params(e, abi))
