"""Trace-driven capacity (datapath/bpf/trace.h) through BPF_PROG_TEST_RUN, against
tests/mahimahi_model.py (mm-link's accounting): identical departures over the first 10,000
opportunities of the four cellular traces of tests/fixtures/traces/, what a saturated link
delivers per 100 ms window, the trace repeating at its end, opportunities wasted while idle,
the byte queue, a GSO packet spanning opportunities, and the refusals.

A controlled clock without a clock of our own: the stage's trace position is absolute
(trace_origin, monotonic ns), so before each packet the test moves the origin by as much as the
wall clock moved past the virtual time it wants the packet to arrive at (a virtual ms plus
0.1 ms). Everything the link does is relative to the origin, so the kernel sees exactly that
virtual arrival, give or take the microseconds between reading the clock and the send; a send
the scheduler delayed by more than 0.9 ms (its arrival could fall in the next ms) is undone -
the stage's state put back - and sent again. reorder: true keeps departures at their
opportunity's time (without it, packets of one opportunity leave 1 ns apart: a test below).
"""
from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

import schemas
from datapath.classifier import Classifier
from datapath.traces import OPP_BYTES, read_mahimahi, trace_key
from schemas import Emulation, InvalidMessage, Trace
from tests.fixtures.bpf import pin_root  # noqa: F401
from tests.fixtures.classifier import EGRESS, VNI, clf, mono, send  # noqa: F401
from tests.fixtures.packets import TC_ACT_OK, TC_ACT_SHOT, inner_tcp, inner_udp, outer_len, vxlan
from tests.mahimahi_model import MmLink

TRACES = Path(__file__).parent / "fixtures" / "traces"
NAMES = ["TMobile-LTE-short.down", "TMobile-LTE-short.up", "Verizon-LTE-short.down",
         "Verizon-LTE-short.up"]
MS = 1_000_000
SUB = 100_000            # arrivals at a virtual ms + 0.1 ms
SLACK = MS - SUB         # a send slower than this is undone and redone
N_OPP = 10_000

_frames: dict[int, bytes] = {}


def frame(ip_bytes: int) -> bytes:
    """A VXLAN frame whose inner IP packet is ip_bytes long (46 .. 1500): what the trace is
    charged (trace.h: the inner frame less its 14-byte Ethernet header)."""
    if ip_bytes not in _frames:
        f = vxlan(VNI, inner_udp(payload=ip_bytes - 28))
        assert len(f) - outer_len(f) - 14 == ip_bytes
        _frames[ip_bytes] = f
    return _frames[ip_bytes]


def schedule_of(name: str) -> list[int]:
    return list(read_mahimahi(gzip.decompress((TRACES / f"{name}.head.gz").read_bytes())
                              .decode()).opportunities_ms)


class Driver:
    """Sends packets at virtual times on a trace link (see the module docstring)."""

    def __init__(self, c: Classifier, schedule: list[int], queue: int | None = 1 << 30,
                 reorder: bool = True, **more) -> None:
        self.c = c
        c.set_link(VNI, egress=Emulation(trace=Trace(opportunities_ms=tuple(schedule)),
                                         queue=queue, reorder=reorder, **more))
        st = c.stage_state(VNI, EGRESS)
        self.d = mono()                  # real = virtual + d
        st.trace_key, st.trace_origin, st.trace_idx, st.trace_left = (
            trace_key(tuple(schedule)), self.d, 0, OPP_BYTES)
        c.set_stage_state(VNI, EGRESS, st)
        self.redone = self.redone_drops = 0

    def send(self, v: int, data: bytes, **kw) -> tuple[int, int | None]:
        """(verdict, virtual departure in ns or None) of a packet arriving at virtual ns v."""
        while True:
            st = self.c.stage_state(VNI, EGRESS)
            saved = type(st).from_buffer_copy(st)
            m = mono()
            shift = (m - v) - self.d
            st.trace_origin += shift
            st.t_last = max(0, st.t_last + shift)
            st.t_depart = max(0, st.t_depart + shift)
            self.c.set_stage_state(VNI, EGRESS, st)
            self.d += shift
            r = send(self.c, data, **kw)
            if mono() - m < SLACK:
                break
            # undone: the state as it was, in the clock frame it was in (t_last and t_depart
            # too: restoring only trace_origin in the new frame left them one shift behind)
            self.c.set_stage_state(VNI, EGRESS, saved)
            self.d -= shift
            self.redone += 1
            self.redone_drops += r.retval == TC_ACT_SHOT     # counted, then sent again
        if r.retval != TC_ACT_OK:
            return r.retval, None
        return r.retval, r.ctx.tstamp - self.d


def arrivals(seed: int, until_ms: int) -> list[tuple[int, int]]:
    """(ms, IP bytes): bursts above the trace's rate, idle gaps, trickles of small packets."""
    rnd = random.Random(seed)
    out, t = [], 0
    sizes = [46, 64, 100, 300, 576, 1000, 1400, 1499, 1500, 1500, 1500]
    while t < until_ms:
        phase = rnd.random()
        if phase < 0.45:                               # a burst, several per ms
            for _ in range(rnd.randint(5, 60)):
                out.append((t, rnd.choice(sizes)))
                t += rnd.choice([0, 0, 0, 1])
        elif phase < 0.7:                              # idle: opportunities wasted
            t += rnd.randint(5, 400)
        else:                                          # a trickle of small packets
            for _ in range(rnd.randint(10, 80)):
                out.append((t, rnd.randint(46, 400)))
                t += rnd.randint(0, 4)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_departures_match_mahimahi(clf: Classifier, name: str) -> None:  # noqa: F811
    """Every packet's departure is the model's, to the ns, over the first 10,000 opportunities
    (small packets sharing an opportunity, packets spanning two, idle gaps wasting them)."""
    sched = schedule_of(name)
    model = MmLink(sched)
    drv = Driver(clf, sched)
    got: dict[int, int] = {}
    pid = 0
    for ms, size in arrivals(14, sched[N_OPP]):
        model.arrive(ms, pid, size)
        verdict, dep = drv.send(ms * MS + SUB, frame(size))
        assert verdict == TC_ACT_OK and dep is not None, (pid, ms)
        got[pid] = dep
        pid += 1
    model.rationalize(sched[N_OPP])      # the arrivals spanned the first 10,000 opportunities
    model.drain()
    want = {p: t * MS for p, t in model.departures.items()}
    assert model.opportunities >= N_OPP and len(got) > 1_500
    shared = sum(1 for p in range(1, pid) if want[p] == want[p - 1])
    assert shared > 100                  # several packets in one opportunity, many times
    assert got == want


@pytest.mark.parametrize("name", ["TMobile-LTE-short.down", "Verizon-LTE-short.up"])
def test_saturated_delivers_the_trace(clf: Classifier, name: str) -> None:  # noqa: F811
    """A link that always has bytes waiting delivers, per 100 ms window, what the trace's
    opportunities carry in it, within one packet."""
    sched = schedule_of(name)
    end = sched[N_OPP]
    drv = Driver(clf, sched)
    delivered: dict[int, int] = {}
    last = 0
    for ms in range(end):
        while last < (ms + 30) * MS:    # keep 30 ms queued: never idle, far below the horizon
            verdict, last = drv.send(ms * MS + SUB, frame(1500))
            assert verdict == TC_ACT_OK
            delivered[last // (100 * MS)] = delivered.get(last // (100 * MS), 0) + 1500
    opp: dict[int, int] = {}
    for t in sched[:N_OPP]:
        opp[t // 100] = opp.get(t // 100, 0) + OPP_BYTES
    windows = range(1, end // 100 - 1)    # the first holds opportunities before the first
                                          # packet (several at 0 ms), the last is cut
    for w in windows:
        assert abs(delivered.get(w, 0) - opp.get(w, 0)) <= 1500, (w, delivered.get(w), opp.get(w))


def test_trace_repeats(clf: Classifier) -> None:  # noqa: F811
    """After its last opportunity the trace starts again, a period later (the last time),
    over many periods; opportunities at 0 ms share their instant with the period's last."""
    sched = [0, 2, 2, 3, 7]
    model = MmLink(sched)
    drv = Driver(clf, sched)
    got, pid = {}, 0
    for ms, size in arrivals(3, 40 * sched[-1]):
        model.arrive(ms, pid, size)
        _, got[pid] = drv.send(ms * MS + SUB, frame(size))
        pid += 1
    model.drain()
    assert model.base >= 20 * sched[-1]
    assert got == {p: t * MS for p, t in model.departures.items()}


def test_idle_wastes_opportunities(clf: Classifier) -> None:  # noqa: F811
    """A packet fills part of an opportunity; the rest is wasted once its time passes with
    nothing waiting, but shared by a packet that arrives before it. Without reorder, packets
    of one opportunity leave 1 ns apart (departures strictly increase)."""
    drv = Driver(clf, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], reorder=False)
    assert drv.send(0 * MS + SUB, frame(100))[1] == 1 * MS           # opportunity 1 ms
    assert drv.send(0 * MS + 500_000, frame(100))[1] == 1 * MS + 1   # shares it
    assert drv.send(1 * MS + SUB, frame(100))[1] == 2 * MS           # 1 ms left 1,300: wasted
    assert drv.send(1 * MS + SUB, frame(1400))[1] == 2 * MS + 1      # 1,400 of 2 ms's
    assert drv.send(1 * MS + SUB, frame(1000))[1] == 3 * MS          # spans 2 and 3 ms
    assert drv.send(6 * MS + SUB, frame(100))[1] == 7 * MS           # 3-6 ms wasted
    st = clf.stage_state(VNI, EGRESS)
    assert (st.trace_idx, st.trace_left) == (6, 1400)


def test_gso_spans_opportunities(clf: Classifier) -> None:  # noqa: F811
    """A GSO packet is charged every segment's IP packet and crosses opportunities (and trace
    periods) in one step: 1,500 segments on a one-line trace (1,500 bytes per ms)."""
    f = vxlan(VNI, inner_tcp(payload=1400))
    segs, inner = 1500, len(f) - outer_len(f)
    # the inner headers repeat, each frame at least 60 bytes (charge.h), less their Ethernet
    ip = max(inner + (segs - 1) * 54, segs * 60) - segs * 14
    drv = Driver(clf, [1])
    _, dep = drv.send(0 * MS + SUB, f, gso_segs=segs, gso_size=1400)
    assert ip > 40 * OPP_BYTES and dep == -(-ip // OPP_BYTES) * MS
    st = clf.stage_state(VNI, EGRESS)
    assert (st.trace_idx, st.trace_left) == (0, -(-ip // OPP_BYTES) * OPP_BYTES - ip)


def test_byte_queue(clf: Classifier) -> None:  # noqa: F811
    """The queue is the bytes accepted and not yet delivered (the packet in transit's rest
    included), as the model's limit: the same packets are dropped, the others leave at the
    model's times; a drop counts as a queue drop."""
    sched = schedule_of("Verizon-LTE-short.down")[:3000]
    limit = 20_000
    model = MmLink(sched, limit=limit)
    drv = Driver(clf, sched, queue=limit)
    got, kept, dropped = {}, set(), 0
    for pid, (ms, size) in enumerate(arrivals(5, sched[-1] - 500)):
        ok = model.arrive(ms, pid, size)
        verdict, dep = drv.send(ms * MS + SUB, frame(size))
        assert verdict == (TC_ACT_OK if ok else TC_ACT_SHOT), (pid, ms, model.backlog())
        if ok:
            got[pid] = dep
            kept.add(pid)
        else:
            dropped += 1
    model.drain()
    assert dropped > 50
    assert got == {p: t * MS for p, t in model.departures.items() if p in kept}
    assert clf.link_counters(VNI)["egress"].drops["queue"] == dropped + drv.redone_drops


def test_trace_held_once_per_content(clf: Classifier) -> None:  # noqa: F811
    """Two links with one trace hold one copy in moa_trace; the stage's rate is its mean."""
    t = Trace(opportunities_ms=(0, 1, 1, 4))
    clf.set_link(VNI, egress=Emulation(trace=t))
    clf.set_link(VNI + 1, egress=Emulation(trace=t, latency=5 * MS))
    assert len(list(clf.traces.map.keys())) == 1
    link = clf.abi.Link.from_buffer_copy(clf.raw_links([VNI])[VNI])
    assert link.stage[EGRESS].rate_bps == 4 * 1500 * 8 * 1000 // 4
    assert link.stage[EGRESS].flags & int(clf.abi.StageFlags.TRACE)
    assert (link.stage[EGRESS].queue_ns == 0
            and link.stage[EGRESS].trace_queue == 75_000)  # 50 ms at 12 Mbit/s


@pytest.mark.parametrize("body, field, words", [
    ({"capacity": "10mbps", "trace": {"opportunities_ms": [1]}}, "trace", "exclude"),
    ({"trace": {"opportunities_ms": [3, 2]}}, "trace.opportunities_ms[1]", "decrease"),
    ({"trace": {"opportunities_ms": [0, 0]}}, "trace.opportunities_ms[1]", "more than 0 ms"),
    ({"trace": {"opportunities_ms": []}}, "trace.opportunities_ms", "length"),
    ({"trace": {"opportunities_ms": [-1, 2]}}, "trace.opportunities_ms[0]", ">= 0"),
    ({"trace": {"opportunities_ms": [1] * (schemas.messages.TRACE_MAX + 1)}},
     "trace.opportunities_ms", "length"),
    ({"trace": {"opportunities": [1]}}, "trace.opportunities", "unknown"),
    ({"trace": {"opportunities_ms": [1]}, "cell_size": 48}, "cell_size", "do not apply"),
    ({"trace": {"opportunities_ms": [1]}, "overhead": 0}, "overhead", "does not apply"),
    ({"trace": {"opportunities_ms": [1]}, "queue": "8GiB"}, "queue", "at most 4294967295"),
    # The trace's locked path has no slot, reorder or duplicate code (edt.h): refused together.
    ({"trace": {"opportunities_ms": [1]}, "slot": {"min": "10ms"}}, "trace",
     "trace and slot exclude each other"),
    ({"trace": {"opportunities_ms": [1]}, "latency": "10ms",
      "reorder_early": {"probability": 0.25}}, "trace", "trace and reorder_early exclude"),
    ({"trace": {"opportunities_ms": [1]}, "duplicate": 0.01}, "trace",
     "trace and duplicate exclude each other"),
])
def test_refused(body: dict, field: str, words: str) -> None:
    import msgspec
    with pytest.raises(InvalidMessage) as e:
        schemas.decode(Emulation, msgspec.json.encode(body))
    assert e.value.field == field and e.value.code == "invalid" and words in e.value.message


def test_refused_in_a_materialize_and_per_direction() -> None:
    """The path names the link and the endpoint; an endpoint's own trace over a link with a
    capacity is refused unless it clears the capacity, and then it holds for that direction."""
    import msgspec
    ep = [{"vni": 501, "remote": "192.0.2.10"}, {"vni": 502, "remote": "192.0.2.11"}]
    doc = {"id": "m1", "links": [{"id": "l1", "endpoints": ep,
                                  "emulation": {"capacity": "10mbps"}}]}
    ep[1]["emulation"] = {"trace": {"opportunities_ms": [2, 1]}}
    with pytest.raises(InvalidMessage) as e:
        schemas.decode(schemas.Materialize, msgspec.json.encode(doc))
    assert e.value.field == "links[0].endpoints[1].emulation.trace.opportunities_ms[1]"
    ep[1]["emulation"] = {"trace": {"opportunities_ms": [1, 2]}}
    with pytest.raises(InvalidMessage) as e:
        schemas.decode(schemas.Materialize, msgspec.json.encode(doc))
    assert e.value.field.endswith("trace") and "exclude" in e.value.message
    ep[1]["emulation"] = {"trace": {"opportunities_ms": [1, 2]}, "capacity": 0}
    m = schemas.decode(schemas.Materialize, msgspec.json.encode(doc))
    link = m.links[0]
    towards = schemas.direction(link.emulation, link.endpoints[1].emulation)
    assert towards.trace == Trace(opportunities_ms=(1, 2)) and towards.capacity == 0
    assert schemas.direction(link.emulation, link.endpoints[0].emulation).trace is None


def test_a_patch_cannot_bring_a_trace_beside_slots_reorder_or_duplicate() -> None:
    """The rule holds on the merged emulation: a patch setting a trace on a link that
    duplicates (or the other way round) is refused naming both; clearing one of them passes."""
    from schemas.messages import EmulationPatch
    trace = Trace(opportunities_ms=(1, 2))
    dup = Emulation(duplicate=0.01)
    with pytest.raises(InvalidMessage) as e:
        EmulationPatch(trace=trace).apply(dup)
    assert e.value.field == "emulation.trace" and "trace and duplicate" in e.value.message
    traced = EmulationPatch(trace=trace, capacity=0).apply(Emulation())
    slot = schemas.Slot(min=10_000_000)
    with pytest.raises(InvalidMessage) as e:
        EmulationPatch(slot=slot).apply(traced)
    assert "trace and slot" in e.value.message
    assert EmulationPatch(trace=None, slot=slot).apply(traced).slot == slot
    assert EmulationPatch(trace=trace, duplicate=0.0).apply(dup).trace == trace


def test_a_schedule_cannot_bring_a_trace_beside_duplicate() -> None:
    """A schedule's step is checked on the state it makes (schemas/schedule.py): a trace set on
    a duplicating link is refused at the step's field."""
    import msgspec
    from schemas.schedule import expand
    ep = [{"vni": 1, "remote": "10.0.0.1"}, {"vni": 2, "remote": "10.0.0.2"}]
    doc = {"id": "m", "links": [{"id": "a", "emulation": {"duplicate": 0.01}, "endpoints": ep}],
           "schedule": {"steps": [{"at": "1s", "link": "a",
                                   "set": {"trace": {"opportunities_ms": [1, 2]}}}]}}
    m = schemas.decode(schemas.Materialize, msgspec.json.encode(doc))
    with pytest.raises(InvalidMessage) as e:
        expand(m, m.schedule)
    assert e.value.field == "schedule.steps[0].set.trace"
    assert "trace and duplicate exclude each other" in e.value.message


def test_restart_keeps_traces(pin_root: str) -> None:  # noqa: F811
    """A restarted classifier finds the traces its links use in the pinned moa_trace (and can
    write them again after they were removed)."""
    t = Trace(opportunities_ms=(0, 3, 3, 9))
    with Classifier.load(pin_root=pin_root) as c:
        c.set_link(VNI, egress=Emulation(trace=t))
    with Classifier.load(pin_root=pin_root) as c:
        key = trace_key(t.opportunities_ms)
        assert c.traces._known[key] == t.opportunities_ms and key in c.traces._present
        c.traces.map.delete(key)
        c.traces._present.discard(key)
        c.set_link(VNI + 1, egress=Emulation(trace=t, latency=MS))
        raw = bytes(c.traces.map.lookup(key))
        assert raw[:24] == b"".join(x.to_bytes(4, "little") for x in (4, 9, 0, 3, 3, 9))


def test_longest_trace_loads(clf: Classifier) -> None:  # noqa: F811
    """A trace of MOA_TRACE_MAX opportunities is held and searched to its end."""
    n = clf.abi.TRACE_MAX
    assert n == schemas.messages.TRACE_MAX
    sched = [i // 2 for i in range(1, n + 1)]       # two per ms, the last at n / 2 ms
    drv = Driver(clf, sched)
    _, dep = drv.send((n // 2 - 2) * MS + SUB, frame(1500))
    assert dep == (n // 2 - 1) * MS


def test_read_mahimahi() -> None:
    assert read_mahimahi("1\n1\n3\n").opportunities_ms == (1, 1, 3)
    for text, words in (("1\n\n2\n", "line 2: empty"), ("1\nx\n", "line 2"), ("", "empty")):
        with pytest.raises(ValueError, match=words):
            read_mahimahi(text)


def test_moa_set_reads_a_trace_file(tmp_path: Path) -> None:
    """`moa set LINK trace FILE`: the file's opportunities, capacity 0 unless given; `none`
    removes the trace; a bad line is refused naming the file and the line."""
    from moa_bus.cli.set import UsageError, parse_params
    f = tmp_path / "link.down"
    f.write_text("0\n3\n3\n8\n")
    assert parse_params(["trace", str(f)]) == {"trace": {"opportunities_ms": [0, 3, 3, 8]},
                                               "capacity": 0}
    assert parse_params(["trace", "none", "capacity", "5mbps"]) == {"trace": None,
                                                                   "capacity": "5mbps"}
    f.write_text("0\nfast\n")
    with pytest.raises(UsageError, match="link.down: line 2"):
        parse_params(["trace", str(f)])


def test_loss_only_box_refuses_a_trace() -> None:
    """A trace needs sch_fq to hold packets: a loss-only box refuses it, naming the field."""
    import msgspec

    from datapath.limits import refuse_shaping
    doc = {"id": "m1", "links": [{"id": "l1", "endpoints": [
        {"vni": 501, "remote": "192.0.2.10"},
        {"vni": 502, "remote": "192.0.2.11", "emulation": {"trace": {"opportunities_ms": [1]}}}]}]}
    m = schemas.decode(schemas.Materialize, msgspec.json.encode(doc))
    with pytest.raises(InvalidMessage) as e:
        refuse_shaping(m, loss_only=True)
    assert e.value.field == "links[0].endpoints[1].emulation.trace"
    assert e.value.code == "unsupported"
    refuse_shaping(m, loss_only=False)


def test_moa_show_names_a_trace() -> None:
    """`moa show`'s capacity column: a trace link shows its mean rate, not "unlimited"."""
    from moa_bus.cli.show import _emulation
    e = Emulation(trace=Trace(opportunities_ms=(0, 1, 1, 1, 4)))     # 5 x 1,500 B in 4 ms
    assert _emulation(schemas.status_emulation(e))[3].startswith("trace ~15mbps")


def test_aqm_on_a_trace(clf: Classifier) -> None:  # noqa: F811
    """CoDel judges a trace link's packets on their sojourn (the first byte's opportunity minus
    the arrival): a standing queue far above target is dropped from, counted as `aqm`, and
    the sojourn histogram sees the waits."""
    sched = list(range(1, 2001))                     # one opportunity per ms: 12 Mbit/s
    drv = Driver(clf, sched, aqm=schemas.Aqm(kind="codel", target=MS, interval=5 * MS))
    verdicts = [drv.send(ms * MS + SUB, frame(1500))[0] for ms in range(400) for _ in range(2)]
    c = clf.link_counters(VNI)["egress"]
    assert verdicts.count(TC_ACT_SHOT) == c.drops["aqm"] - drv.redone_drops > 20
    assert c.drops["queue"] == 0 and sum(c.sojourn[10:]) > 100     # waits of 1 ms and more


def test_switching_between_capacity_and_trace(clf: Classifier) -> None:  # noqa: F811
    """A capacity link switched to a trace starts the trace with its next packet (after the
    last departure all the same); switched back, the capacity goes on from the last
    opportunity used."""
    clf.set_link(VNI, egress=Emulation(capacity=8_000_000, queue=0))
    first = send(clf).ctx.tstamp                       # 1,078 us of serialisation
    t = Trace(opportunities_ms=(1, 2, 3))
    clf.set_link(VNI, egress=Emulation(trace=t))
    before = mono()
    second = send(clf).ctx.tstamp
    st = clf.stage_state(VNI, EGRESS)
    assert st.trace_key == trace_key(t.opportunities_ms) and before <= st.trace_origin
    assert second == max(st.trace_origin + MS, first + 1) and st.t_last == st.trace_origin + MS
    clf.set_link(VNI, egress=Emulation(capacity=8_000_000, queue=0))
    third = send(clf).ctx.tstamp
    if mono() < st.t_last:                             # the trace's tail was still ahead
        assert third == st.t_last + 1_078_000
    else:                                              # (a send delayed past it: from now)
        assert third > st.t_last + 1_078_000


def test_trace_map_full(clf: Classifier) -> None:  # noqa: F811
    """16 distinct traces at once: a 17th is refused `unsupported` naming the field while every
    one is in use; once a link is gone, its trace makes room for the new one."""
    most = clf.abi.TRACE_KEYS_MAX
    traces = [Trace(opportunities_ms=(k + 1,)) for k in range(most + 1)]
    for k in range(most):
        clf.set_link(VNI + k, egress=Emulation(trace=traces[k]))
    with pytest.raises(InvalidMessage) as e:
        clf.set_link(VNI + most, egress=Emulation(trace=traces[most]))
    assert (e.value.field, e.value.code) == ("trace", "unsupported")
    clf.delete_link(VNI + 3)
    clf.set_link(VNI + most, egress=Emulation(trace=traces[most]))
    held = {int.from_bytes(bytes(k), "little") for k in clf.traces.map.keys()}
    want = {trace_key(t.opportunities_ms) for i, t in enumerate(traces) if i != 3}
    assert held == want
