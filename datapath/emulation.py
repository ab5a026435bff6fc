"""LinkEmulation: one stage of one link in Python units -> `struct moa_stage_params`.

The datapath divides nothing it can be told: userspace turns the queue (bytes) into time at the
link rate, and probabilities into thresholds over 2^32 (abi.h). Validation raises ValueError
naming the field.

Queue default (queue_bytes=None): what the link carries in 50 ms at its rate, at least 64 KiB
(a switch port buffer of that order; enough for a TCP window of a typical testbed link). An
explicit 0 means no queue limit: only the horizon (ClassifierConfig.horizon_ns) bounds the backlog.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # datapath.libbpf.abi reads the compiled object's BTF at import
    from datapath.libbpf import abi as _abi

__all__ = ["GilbertElliott", "LinkEmulation", "probability_threshold", "DEFAULT_QUEUE_MS",
           "MIN_DEFAULT_QUEUE_BYTES", "DEFAULT_OVERHEAD"]

NSEC = 1_000_000_000
ONE = 1 << 32                      # probability 1 as a threshold
DEFAULT_QUEUE_MS = 50
MIN_DEFAULT_QUEUE_BYTES = 64 * 1024
DEFAULT_OVERHEAD = 24              # preamble 7 + SFD 1 + FCS 4 + inter-frame gap 12
U64_MAX = (1 << 64) - 1


def probability_threshold(p: float, field: str = "probability") -> int:
    """P -> threshold over 2^32: the datapath drops when a uniform u32 is below it."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
        raise ValueError(f"{field}: not a number: {p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{field}: {p} outside 0..1")
    return round(p * ONE)


def _int(value: Any, field: str, lo: int = 0, hi: int = U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: integer required, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value} outside {lo}..{hi}")
    return value


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state burst loss, stepped once per packet (p: good->bad, r: bad->good)."""
    p: float
    r: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def mean_loss(self) -> float:
        """Stationary loss rate: share of time in bad is p / (p + r)."""
        if self.p + self.r == 0:
            return self.loss_good
        bad = self.p / (self.p + self.r)
        return (1 - bad) * self.loss_good + bad * self.loss_bad


@dataclass(frozen=True)
class LinkEmulation:
    """One direction of one link endpoint, as one classifier stage enforces it."""
    latency_ns: int = 0
    jitter_ns: int = 0
    loss: float = 0.0
    capacity_bps: int = 0          # 0 = unlimited (no timeline, no queue)
    queue_bytes: int | None = None  # None = default (module doc), 0 = no limit
    overhead: int = DEFAULT_OVERHEAD
    reorder: bool = False
    gilbert_elliott: GilbertElliott | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _int(self.latency_ns, "latency_ns")
        _int(self.jitter_ns, "jitter_ns")
        _int(self.capacity_bps, "capacity_bps")
        _int(self.overhead, "overhead", 0, 0xFFFF)
        probability_threshold(self.loss, "loss")
        if self.queue_bytes is not None:
            _int(self.queue_bytes, "queue_bytes", 0, 1 << 40)
        if not isinstance(self.reorder, bool):
            raise ValueError(f"reorder: bool required, got {self.reorder!r}")
        ge = self.gilbert_elliott
        if ge is not None:
            if not isinstance(ge, GilbertElliott):
                raise ValueError(f"gilbert_elliott: GilbertElliott required, got {ge!r}")
            for name in ("p", "r", "loss_good", "loss_bad"):
                probability_threshold(getattr(ge, name), f"gilbert_elliott.{name}")
            if self.loss:
                raise ValueError("loss and gilbert_elliott: choose one loss model")

    @property
    def effective_queue_bytes(self) -> int:
        """The queue this stage enforces, in bytes (0 = no limit, also without a rate)."""
        if not self.capacity_bps:
            return 0
        if self.queue_bytes is not None:
            return self.queue_bytes
        return max(MIN_DEFAULT_QUEUE_BYTES, self.capacity_bps * DEFAULT_QUEUE_MS // 8000)

    @property
    def queue_ns(self) -> int:
        """Queue as time at the rate, rounded to the nearest ns, at least 1 ns if limited."""
        q = self.effective_queue_bytes
        if not q:
            return 0
        return max(1, (q * 8 * NSEC + self.capacity_bps // 2) // self.capacity_bps)

    def is_idle(self) -> bool:
        return not (self.latency_ns or self.jitter_ns or self.loss or self.capacity_bps
                    or self.gilbert_elliott)

    def to_params(self, abi: "_abi | None" = None) -> Any:
        """Fill a `struct moa_stage_params` (datapath.libbpf.abi.StageParams)."""
        if abi is None:
            from datapath.libbpf import abi
        p = abi.StageParams()
        p.rate_bps = self.capacity_bps
        p.queue_ns = self.queue_ns
        p.latency_ns = self.latency_ns
        p.jitter_ns = self.jitter_ns
        p.overhead = self.overhead
        p.flags = abi.StageFlags.REORDER if self.reorder else 0
        ge = self.gilbert_elliott
        if ge is not None:
            p.loss_model = abi.LossModel.GILBERT_ELLIOTT
            p.ge.p_good_to_bad = probability_threshold(ge.p)
            p.ge.p_bad_to_good = probability_threshold(ge.r)
            p.ge.loss_good = probability_threshold(ge.loss_good)
            p.ge.loss_bad = probability_threshold(ge.loss_bad)
        elif self.loss:
            p.loss_model = abi.LossModel.BERNOULLI
            p.loss_threshold = probability_threshold(self.loss)
        else:
            p.loss_model = abi.LossModel.NONE
        return p
