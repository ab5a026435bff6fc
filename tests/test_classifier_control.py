"""Classifier link management (slots, pinning across a restart), an emulation's conversion into
struct moa_stage_params, and ClassifierConfig validation."""
from __future__ import annotations

import os
import time

import pytest

import schemas
from datapath.classifier import Classifier, ClassifierConfig
from datapath.emulation import queue_bytes, queue_ns, stage_params
from schemas import Emulation, GilbertElliott
from tests.fixtures.bpf import pin_root  # noqa: F401
from tests.fixtures.packets import inner_udp, vxlan

ONE = 1 << 32


def mono() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def send(c: Classifier, vni: int, repeat: int = 1):
    return c.egress_program.test_run(vxlan(vni, inner_udp(100)), ctx=c.abi.SkBuff(), repeat=repeat)


def test_slots_are_allocated_reused_and_zeroed() -> None:
    with Classifier.load(ClassifierConfig(max_links=4)) as c:
        assert [c.set_link(v, Emulation(latency=1)) for v in (10, 11, 12)] == [0, 1, 2]
        send(c, 11, repeat=5)
        assert c.link_counters(11)["egress"].packets == 5
        assert c.delete_link(11) is True
        assert c.delete_link(11) is False
        assert c.link(11) is None
        assert send(c, 11).ctx.tstamp == 0                  # unknown now
        assert c.set_link(13, Emulation(latency=1)) == 1   # lowest free slot, zeroed
        assert c.link_counters(13)["egress"].packets == 0
        assert c.set_link(14) == 3
        with pytest.raises(RuntimeError, match="no free link slot"):
            c.set_link(15)
        assert c.vnis() == [10, 12, 13, 14]


def test_many_new_links_in_one_batch_get_distinct_zeroed_slots() -> None:
    """update_links creates new links in three batch writes (state, per-CPU counters, params):
    each VNI its own slot, the lowest free first, a reused slot's state and counters zeroed;
    more links than free slots is refused before anything is written."""
    with Classifier.load(ClassifierConfig(max_links=64)) as c:
        c.set_link(1, Emulation(capacity=8_000_000))
        send(c, 1, repeat=7)
        assert c.stage_state(1, 0).t_last > 0
        c.delete_link(1)
        new = {100 + i: c.encode_stages(Emulation(latency=1_000 + i), None) for i in range(60)}
        assert c.update_links(new) == 60
        slots = {v: c.slot(v) for v in new}
        assert sorted(slots.values()) == list(range(60))
        assert c.link_counters(100)["egress"].packets == 0 and slots[100] == 0
        assert c.stage_state(100, 0).t_last == 0
        assert all(c.link(v).stage[0].latency_ns == 1_000 + v - 100 for v in new)
        send(c, 130, repeat=3)
        assert c.link_counters(130)["egress"].packets == 3
        with pytest.raises(RuntimeError, match="no free link slot"):
            c.update_links({200 + i: new[100] for i in range(5)})
        assert c.link_count() == 60 and c.link(200) is None


def test_update_keeps_the_timeline_and_counters() -> None:
    with Classifier.load(ClassifierConfig(max_links=4)) as c:
        c.set_link(20, Emulation(capacity=8_000_000, queue=0))
        send(c, 20, repeat=3)
        t_last = c.stage_state(20, 0).t_last
        assert c.set_link(20, Emulation(capacity=8_000_000, latency=5, queue=0)) == 0
        assert c.stage_state(20, 0).t_last == t_last
        assert c.link_counters(20)["egress"].packets == 3
        assert c.link(20).stage[0].latency_ns == 5


def test_pinned_maps_survive_a_restart_with_their_slots(pin_root: str) -> None:
    with Classifier.load(ClassifierConfig(max_links=8), pin_root=pin_root) as c:
        for vni in (30, 31, 32):
            c.set_link(vni, Emulation(capacity=8_000_000, queue=0))
        c.delete_link(31)
        send(c, 32, repeat=4)
        t_last = c.stage_state(32, 0).t_last
    assert sorted(os.listdir(pin_root)) == ["moa_box", "moa_counters", "moa_dist", "moa_dist_cdf",
                                            "moa_dist_custom", "moa_events", "moa_flow",
                                            "moa_flow_owner", "moa_flow_stats", "moa_global",
                                            "moa_links", "moa_saved_qdiscs",
                                            "moa_state", "moa_trace", "moa_vxlan_ports"]
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
            c.set_link(vni, Emulation(capacity=8_000_000, queue=0))
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


def test_stage_params_from_an_emulation() -> None:
    from datapath.libbpf import abi
    e = Emulation(latency=10_000_000, jitter=1_000, loss=0.25, capacity=100_000_000,
                  queue=125_000, reorder=True)
    p = stage_params(e, abi.load())
    assert (p.rate_bps, p.queue_ns, p.latency_ns, p.jitter_ns) == (10**8, 10_000_000, 10**7, 1000)
    assert (p.loss_model, p.loss_threshold) == (abi.LossModel.BERNOULLI, ONE // 4)
    assert (p.overhead, p.flags) == (24, abi.StageFlags.REORDER)
    ge = stage_params(Emulation(burst=GilbertElliott(p=0.5, r=0.25, loss_good=0.0,
                                                     loss_bad=1.0)), abi.load())
    assert ge.loss_model == abi.LossModel.GILBERT_ELLIOTT
    assert (ge.ge.p_good_to_bad, ge.ge.p_bad_to_good, ge.ge.loss_good, ge.ge.loss_bad) == (
        ONE // 2, ONE // 4, 0, ONE)
    assert stage_params(Emulation(), abi.load()).loss_model == abi.LossModel.NONE
    assert stage_params(Emulation(loss=1.0), abi.load()).loss_threshold == ONE
    assert bytes(stage_params(None, abi.load())) == bytes(abi.StageParams())  # does nothing


def test_default_queue() -> None:
    assert queue_bytes(Emulation(capacity=10**9)) == 6_250_000   # 50 ms
    assert queue_bytes(Emulation(capacity=10**6)) == 64 * 1024   # floor
    assert queue_ns(Emulation(capacity=10**6, queue=0)) == 0     # no limit
    assert queue_ns(Emulation(queue=1000)) == 0                  # no rate
    assert queue_ns(Emulation(capacity=10**12, queue=1)) == 1    # never 0


@pytest.mark.parametrize("kwargs", [
    {"latency": -1}, {"latency": 1.5}, {"jitter": -5}, {"loss": 1.01}, {"loss": -0.1},
    {"loss": float("nan")}, {"capacity": -1}, {"capacity": 1 << 64}, {"queue": -1},
    {"reorder": 1}, {"loss": 0.1, "burst": GilbertElliott(p=0.1, r=0.1)},
    {"burst": GilbertElliott(p=1.5, r=0.1)},
])
def test_what_the_datapath_trusts_is_refused_at_the_edge(kwargs) -> None:
    """The datapath checks no emulation (datapath/emulation.py): schemas refuse these first."""
    with pytest.raises(schemas.InvalidMessage):
        schemas.validate(Emulation(**kwargs))


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
    assert {"moa_stage", "moa_drop_reason", "moa_loss_model", "moa_stage_flags", "moa_aqm",
            "moa_abi_consts"} <= enums
    assert btf.enum("moa_abi_consts")["MOA_ABI_DROP_EVENT_VERSION"] == 2
    assert abi.StageFlags.REORDER == 1 and abi.NR_STAGES == 2 and abi.NR_DROP_REASONS == 5


def test_delete_links_in_one_batch_frees_their_slots_and_counts_those_held() -> None:
    """delete_links (a plan's DeleteLinkParams in bulk): a VNI the map lacks stops the batch
    delete, the rest go one by one; every slot freed is handed out again, lowest first."""
    with Classifier.load(ClassifierConfig(max_links=16)) as c:
        enc = c.encode_stages(Emulation(loss=0.1), None)
        assert c.update_links({100 + i: enc for i in range(6)}) == 6
        assert c.delete_links([100, 101, 999, 104]) == 3
        assert sorted(c.vnis()) == [102, 103, 105] and c.delete_links([100]) == 0
        assert [c.set_link(v, Emulation(loss=0.1)) for v in (200, 201, 202, 203)] == [0, 1, 4, 6]


def test_runs_cover_the_slots_with_gaps_of_at_most_eight() -> None:
    """counter_table.runs: the windows a status page's slots are read in (one batch read each)."""
    from datapath.counter_table import runs

    assert runs([]) == []
    assert runs([5]) == [(5, 6)]
    assert runs([3, 1, 2, 2]) == [(1, 4)]
    assert runs([0, 9, 18, 28]) == [(0, 19), (28, 29)]  # 8 unasked slots between: one window
    assert runs([40, 0, 63, 100, 101, 103]) == [(0, 1), (40, 41), (63, 64), (100, 104)]


def test_counters_of_links_in_any_order_are_those_of_the_whole_read() -> None:
    """Slots asked out of order, in runs with gaps (as a status page's links in id order hold
    them): each VNI gets its own row, the same as in the read of every link."""
    with Classifier.load(ClassifierConfig(max_links=64)) as c:
        assert c.update_links({100 + i: c.encode_stages(Emulation(capacity=8_000_000), None)
                               for i in range(64)}) == 64
        for i in range(64):
            if i % 3:
                send(c, 100 + i, repeat=i)
        c.set_stage_state(117, 0, c.abi.StageState(t_last=mono() + 10 * 10**9))
        every = c.counters_of(range(100, 164))
        asked = [163, 101, 117, 102, 150, 151, 100, 130, 140, 120, 162]
        got = c.counters_of(asked)
        assert list(got) == asked
        for vni in asked:
            assert got[vni]["egress"].packets == every[vni]["egress"].packets == (
                0 if (vni - 100) % 3 == 0 else vni - 100)
            assert got[vni]["ingress"] == every[vni]["ingress"]
        assert got[117]["egress"].backlog_ns > 0 and got[117]["egress"].backlog_bytes > 0
        assert got[101]["egress"].backlog_ns == 0


def test_counters_of_a_few_links_of_many_are_those_of_the_whole_read() -> None:
    """counters_of reads only the asked VNIs' rows (by runs of near slots; their parameters one
    lookup each when they are few, as a status page's are): the counters and backlogs of links
    in the middle of the slots, near together or far apart, are the same as when every link is
    read at once."""
    with Classifier.load(ClassifierConfig(max_links=64)) as c:
        assert c.update_links({100 + i: c.encode_stages(Emulation(capacity=8_000_000), None)
                               for i in range(64)}) == 64
        for vni, n in ((140, 7), (150, 3), (163, 1)):
            send(c, vni, repeat=n)
        for vni in (140, 150):  # a queue of 10 s ahead on each
            c.set_stage_state(vni, 0, c.abi.StageState(t_last=mono() + 10 * 10**9))
        few = c.counters_of([150, 140])
        every = c.counters_of(range(100, 164))
        assert set(few) == {140, 150} and len(every) == 64
        for vni, n in ((140, 7), (150, 3)):
            assert few[vni]["egress"].packets == every[vni]["egress"].packets == n
            assert few[vni]["egress"].backlog_ns > 0 and every[vni]["egress"].backlog_ns > 0
            assert few[vni]["ingress"] == every[vni]["ingress"]
        far = c.counters_of([163, 140, 100])  # slots 63, 40, 0: one read each, not the window
        assert list(far) == [163, 140, 100]
        assert far[163]["egress"].packets == 1 and far[100]["egress"].packets == 0
        assert far[140]["egress"].packets == 7 and far[140]["egress"].backlog_ns > 0
        assert far[140]["ingress"] == every[140]["ingress"]
        assert every[141]["egress"].packets == 0 and every[141]["egress"].backlog_ns == 0


def test_telemetry_rows_from_counter_rows_are_the_status_rows_of_counters_of() -> None:
    """telemetry.links encodes its LinkStats from counter_rows' arrays (status._encoded_stats);
    a status page makes them from counters_of's objects (status._stats): byte for byte the same
    for counters of every kind - drops, marks, histograms short and long, counts kept in the
    state, backlogs - and without a row for a VNI the classifier does not hold."""
    import numpy as np

    from moa_bus.service.status import _encoded_stats, _stats, trim

    with Classifier.load(ClassifierConfig(max_links=64)) as c:
        assert c.update_links({100 + i: c.encode_stages(Emulation(capacity=8_000_000), None)
                               for i in range(64)}) == 64
        m = c.counters_map
        words = np.random.default_rng(7).integers(0, 1 << 40, size=(128, m.ncpu, m._slot // 8),
                                                  dtype=np.uint64)
        words[::3] = 0  # a stage that saw nothing
        words[1::3, :, 2:] = 0  # one that only passed frames: its histogram is bucket 0
        m.update_batch(np.arange(128, dtype=np.uint32).tobytes(), words.tobytes())
        c.set_stage_state(107, 0, c.abi.StageState(t_last=mono() + 10 * 10**9, corrupted=3))
        c.set_stage_state(108, 1, c.abi.StageState(duplicated=5))
        links = [schemas.Link(id=f"l{i}", endpoints=[
            schemas.Endpoint(vni=100 + 2 * i, remote="192.0.2.1"),
            schemas.Endpoint(vni=100 + 2 * i + 1 if i != 5 else 999, remote="192.0.2.2")])
            for i in range(32)]
        part = [("m", link) for link in links]
        vnis = [ep.vni for link in links for ep in link.endpoints]
        got = c.counter_rows(vnis)
        c.counter_rows = lambda _: got  # type: ignore[method-assign]  # one read for both
        counters = c.counters_of(vnis)
        want = [schemas.encode(x) for mid, link in part
                for x in _stats(mid, link.id, [ep.vni for ep in link.endpoints], counters)]
        assert _encoded_stats(part, got) == want
        assert len(want) == 4 * 32 - 2
        lengths = {len(trim(s.sojourn)) for v in counters.values() for s in v.values()}
        assert {0, 1} < lengths and max(lengths) > 1
        assert counters[107]["egress"].backlog_ns > 0 and counters[107]["egress"].corrupted == 3


def test_telemetry_parts_cut_where_the_next_row_would_not_fit() -> None:
    """link_parts puts rows in order into as few parts as fit room(max_payload) each (a row
    larger than that alone in its part), cutting only where the next row would not fit."""
    from moa_bus.service.status import link_parts, room

    row = schemas.encode(schemas.LinkStats(materialization="m", link="l", vni=1, stage="egress",
                                           packets=1, bytes=2, drops={}))
    sizes = [0, 3, 40, 400, 5000, 0, 0, 900, 1, 7000, 2] * 9
    rows = [row[:-1] + b" " * n + b"}" for n in sizes]
    for max_payload in (1100, 1500, 3000, 8000, 1 << 20):
        parts = [schemas.decode(schemas.LinkStatsBatch, p) for p in
                 link_parts("h", 5, rows, max_payload)]
        raw = list(link_parts("h", 5, rows, max_payload))
        assert [p.part for p in parts] == list(range(1, len(parts) + 1))
        assert {p.parts for p in parts} == {len(parts)}
        assert sum(len(p.links) for p in parts) == len(rows)
        at = 0
        for p, data in zip(parts, raw):
            n = len(p.links)
            assert n >= 1 and (len(data) <= room(max_payload) or n == 1)
            at += n
            if at < len(rows):  # the next row did not fit
                assert len(data) + len(rows[at]) + 1 > room(max_payload)
    assert [schemas.decode(schemas.LinkStatsBatch, p).links for p in
            link_parts("h", 5, [], 1 << 20)] == [[]]
