"""Classifier link management (slots, pinning across a restart) and LinkEmulation/ClassifierConfig
conversion and validation."""
from __future__ import annotations

import os
import shutil
import time
import uuid

import pytest

from datapath.classifier import Classifier, ClassifierConfig
from datapath.emulation import GilbertElliott, LinkEmulation
from tests.fixtures.packets import inner_udp, vxlan

ONE = 1 << 32


def mono() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


@pytest.fixture
def pin_root():
    path = f"/sys/fs/bpf/moa-test-classifier-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def send(c: Classifier, vni: int, repeat: int = 1):
    return c.egress_program.test_run(vxlan(vni, inner_udp(100)), ctx=c.abi.SkBuff(), repeat=repeat)


def test_slots_are_allocated_reused_and_zeroed() -> None:
    with Classifier.load(ClassifierConfig(max_links=4)) as c:
        assert [c.set_link(v, LinkEmulation(latency_ns=1)) for v in (10, 11, 12)] == [0, 1, 2]
        send(c, 11, repeat=5)
        assert c.link_counters(11)["egress"].packets == 5
        assert c.delete_link(11) is True
        assert c.delete_link(11) is False
        assert c.link(11) is None
        assert send(c, 11).ctx.tstamp == 0                  # unknown now
        assert c.set_link(13, LinkEmulation(latency_ns=1)) == 1   # lowest free slot, zeroed
        assert c.link_counters(13)["egress"].packets == 0
        assert c.set_link(14) == 3
        with pytest.raises(RuntimeError, match="no free link slot"):
            c.set_link(15)
        assert c.vnis() == [10, 12, 13, 14]


def test_update_keeps_the_timeline_and_counters() -> None:
    with Classifier.load(ClassifierConfig(max_links=4)) as c:
        c.set_link(20, LinkEmulation(capacity_bps=8_000_000, queue_bytes=0))
        send(c, 20, repeat=3)
        t_last = c.stage_state(20, 0).t_last
        assert c.set_link(20, LinkEmulation(capacity_bps=8_000_000, latency_ns=5, queue_bytes=0)) == 0
        assert c.stage_state(20, 0).t_last == t_last
        assert c.link_counters(20)["egress"].packets == 3
        assert c.link(20).stage[0].latency_ns == 5


def test_pinned_maps_survive_a_restart_with_their_slots(pin_root: str) -> None:
    with Classifier.load(ClassifierConfig(max_links=8), pin_root=pin_root) as c:
        for vni in (30, 31, 32):
            c.set_link(vni, LinkEmulation(capacity_bps=8_000_000, queue_bytes=0))
        c.delete_link(31)
        send(c, 32, repeat=4)
        t_last = c.stage_state(32, 0).t_last
    assert sorted(os.listdir(pin_root)) == ["moa_box", "moa_counters", "moa_events",
                                            "moa_global", "moa_links", "moa_state"]
    with Classifier.load(ClassifierConfig(max_links=8), pin_root=pin_root) as c:
        assert (c.slot(30), c.slot(32)) == (0, 2)
        assert c.link_counters(32)["egress"].packets == 4
        assert c.stage_state(32, 0).t_last == t_last
        assert c.set_link(33) == 1                         # the slot 31 had
        assert c.set_link(34) == 3


def test_restore_link_puts_back_the_entry_in_its_slot_with_its_counters() -> None:
    """A rollback's undo of a deletion: the raw entry read before goes back into the slot it
    had (its counters and timeline were never zeroed); taken meanwhile, a fresh slot."""
    with Classifier.load(ClassifierConfig(max_links=8)) as c:
        for vni in (40, 41, 42):
            c.set_link(vni, LinkEmulation(capacity_bps=8_000_000, queue_bytes=0))
        send(c, 41, repeat=3)
        raw = c.raw_links([41])[41]
        assert c.delete_link(41)
        assert c.restore_link(41, raw) == 1
        assert c.raw_links([41])[41] == raw
        assert c.link_counters(41)["egress"].packets == 3
        raw42 = c.raw_links([42])[42]
        c.delete_link(42)
        c.set_link(43)  # takes slot 2, which 42 had
        assert c.restore_link(42, raw42) == 3
        assert c.stages_of(c.raw_links([42])[42]) == c.stages_of(raw42)
        assert c.link_counters(42)["egress"].packets == 0  # a fresh slot starts at zero


def test_the_box_generation_is_kept_in_the_kernel(pin_root: str) -> None:
    with Classifier.load(ClassifierConfig(max_links=8), pin_root=pin_root) as c:
        assert c.box_generation() == 0
        c.set_box_generation(41)
    with Classifier.load(ClassifierConfig(max_links=8), pin_root=pin_root) as c:
        assert c.box_generation() == 41


def test_set_link_validates_the_vni() -> None:
    with Classifier.load(ClassifierConfig(max_links=2)) as c:
        for bad in (-1, 1 << 24, "5", True):
            with pytest.raises(ValueError):
                c.set_link(bad)


def test_stage_params_from_link_emulation() -> None:
    from datapath.libbpf import abi
    e = LinkEmulation(latency_ns=10_000_000, jitter_ns=1_000, loss=0.25,
                      capacity_bps=100_000_000, queue_bytes=125_000, reorder=True)
    p = e.to_params()
    assert (p.rate_bps, p.queue_ns, p.latency_ns, p.jitter_ns) == (10**8, 10_000_000, 10**7, 1000)
    assert (p.loss_model, p.loss_threshold) == (abi.LossModel.BERNOULLI, ONE // 4)
    assert (p.overhead, p.flags) == (24, abi.StageFlags.REORDER)
    ge = LinkEmulation(gilbert_elliott=GilbertElliott(0.5, 0.25, 0.0, 1.0)).to_params()
    assert ge.loss_model == abi.LossModel.GILBERT_ELLIOTT
    assert (ge.ge.p_good_to_bad, ge.ge.p_bad_to_good, ge.ge.loss_good, ge.ge.loss_bad) == (
        ONE // 2, ONE // 4, 0, ONE)
    assert LinkEmulation().to_params().loss_model == abi.LossModel.NONE
    assert LinkEmulation(loss=1.0).to_params().loss_threshold == ONE


def test_default_queue() -> None:
    assert LinkEmulation(capacity_bps=10**9).effective_queue_bytes == 6_250_000   # 50 ms
    assert LinkEmulation(capacity_bps=10**6).effective_queue_bytes == 64 * 1024   # floor
    assert LinkEmulation(capacity_bps=10**6, queue_bytes=0).queue_ns == 0        # no limit
    assert LinkEmulation(queue_bytes=1000).queue_ns == 0                         # no rate
    assert LinkEmulation(capacity_bps=10**12, queue_bytes=1).queue_ns == 1       # never 0


@pytest.mark.parametrize("kwargs", [
    {"latency_ns": -1}, {"latency_ns": 1.5}, {"jitter_ns": -5}, {"loss": 1.01}, {"loss": -0.1},
    {"loss": float("nan")}, {"capacity_bps": -1}, {"capacity_bps": 1 << 64}, {"overhead": 70000},
    {"queue_bytes": -1}, {"reorder": 1}, {"loss": 0.1, "gilbert_elliott": GilbertElliott(0.1, 0.1)},
    {"gilbert_elliott": GilbertElliott(1.5, 0.1)},
])
def test_link_emulation_validation(kwargs) -> None:
    with pytest.raises(ValueError):
        LinkEmulation(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"vxlan_port": 0}, {"max_links": 0}, {"ringbuf_bytes": 5000}, {"mark_mask": 0xF0F00000},
    {"horizon_ns": 0}, {"event_budget": -1},
])
def test_classifier_config_validation(kwargs) -> None:
    with pytest.raises(ValueError):
        ClassifierConfig(**kwargs)


def test_every_abi_type_is_in_the_classifier_btf() -> None:
    """datapath/libbpf/abi.py mirrors abi.h from this object's BTF: all of it must be there."""
    from datapath.bpf import object_path
    from datapath.libbpf import abi, read_btf
    from datapath.libbpf.btf import Kind
    btf = read_btf(object_path("tc_classifier"))
    structs = set(btf.names(Kind.STRUCT))
    for name in ("moa_gilbert_elliott", "moa_stage_params", "moa_link", "moa_stage_state",
                 "moa_link_counters", "moa_global_counters", "moa_drop_event"):
        assert name in structs, name
    enums = set(btf.names(Kind.ENUM))
    assert {"moa_stage", "moa_drop_reason", "moa_loss_model", "moa_stage_flags",
            "moa_abi_consts"} <= enums
    assert btf.enum("moa_abi_consts")["MOA_ABI_DROP_EVENT_VERSION"] == 1
    assert abi.StageFlags.REORDER == 1 and abi.NR_STAGES == 2 and abi.NR_DROP_REASONS == 3
