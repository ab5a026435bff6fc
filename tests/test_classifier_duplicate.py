"""netem's duplicate (datapath/bpf/duplicate.h; docs/semantics.md, "Duplication").

Through BPF_PROG_TEST_RUN: the share duplicated within 4 sigma over 100,000 packets, the lag-1
autocorrelation of the decisions as configured (within 0.02) with the share kept, both copies
charged to the timeline, a copy that does not fit the queue dropped alone, a frame carrying the
copy's mark passed untouched. The test run's skb is on the loopback device of a namespace of
the test's own (its ctx.ifindex), so the clones go there and nowhere else.

In namespaces on the host kernel: the classifier on the tc egress of one end of a veth pair, a
packet socket on the other end counts what arrives: the original and its copy, the copy not
classified a second time (the stage counts one packet per original and one duplicated)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from datapath.classifier import Classifier, ClassifierConfig
from datapath.netlink.worker import _enter_netns
from moa_bus.lab.host_testbed import nsenter, sh, unique_tag
import schemas
from schemas import Emulation
from tests.fixtures.classifier import RATE, SER, VNI, mono
from tests.fixtures.packets import TC_ACT_OK, inner_tcp, vxlan

FRAME = vxlan(VNI, inner_tcp(payload=1000))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own, deleted afterwards (with whatever is in it)."""
    name = unique_tag("dup")
    sh("ip", "netns", "add", name)
    try:
        sh(*nsenter(name), "ip", "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name)
    assert name not in sh("ip", "netns", "list").stdout


@pytest.fixture
def clf_ns(netns: str) -> Iterator[Classifier]:
    """A classifier for test runs made in `netns` (_in_netns: BPF_PROG_TEST_RUN resolves the
    skb's ifindex in the caller's namespace, so the clones go to that namespace's loopback)."""
    with Classifier.load(ClassifierConfig(max_links=8)) as c:
        yield c


def _in_netns(netns: str, work):
    """work() on a thread that entered netns (setns is per thread), its result returned."""
    out: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _enter_netns(f"/var/run/netns/{netns}")
            out.append(work())
        except BaseException as e:   # re-raised in the test's thread
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert not errors, errors
    return out[0]


def _send(c: Classifier, repeat: int = 1, mark: int = 0):
    ctx = c.abi.SkBuff()
    ctx.mark = mark
    ctx.ifindex = 1          # the namespace's loopback
    return c.egress_program.test_run(FRAME, ctx=ctx, repeat=repeat)


def _dup(c: Classifier) -> int:
    return c.link_counters(VNI)["egress"].duplicated


@pytest.mark.parametrize("p", [0.1, 0.003])
def test_the_share_duplicated_is_the_configured_one(clf_ns: Classifier, netns: str,
                                                    p: float) -> None:
    n = 100_000
    clf_ns.set_link(VNI, egress=Emulation(duplicate=p))
    assert _in_netns(netns, lambda: _send(clf_ns, repeat=n)).retval == TC_ACT_OK
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(_dup(clf_ns) - n * p) <= 4 * sigma, (_dup(clf_ns), n * p, sigma)
    # One classification per original: the copies are not among the packets.
    assert clf_ns.link_counters(VNI)["egress"].packets == n


def _lag1(x: list[int]) -> float:
    a, b = x[:-1], x[1:]
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((u - ma) * (v - mb) for u, v in zip(a, b)) / n
    return cov / math.sqrt(ma * (1 - ma) * mb * (1 - mb))


@pytest.mark.parametrize("p, rho", [(0.25, 0.5), (0.05, 0.3)])
def test_correlation_is_the_lag1_autocorrelation_and_keeps_the_share(clf_ns: Classifier,
                                                                    netns: str, p: float,
                                                                    rho: float) -> None:
    """Each packet's decision read from the count (one run at a time); the decisions' Pearson
    correlation at lag 1 within 0.02 of rho, the share within 4 sigma of a chain."""
    n = 100_000
    clf_ns.set_link(VNI, egress=Emulation(duplicate=p, duplicate_correlation=rho))
    idx = clf_ns._require_slot(VNI) * 2

    def work() -> list[int]:
        x, last = [], 0
        for _ in range(n):
            _send(clf_ns)
            now = clf_ns.state_map.lookup(idx, clf_ns.abi.StageState).duplicated
            x.append(now - last)
            last = now
        return x

    x = _in_netns(netns, work)
    assert set(x) <= {0, 1}
    assert abs(_lag1(x) - rho) <= 0.02, _lag1(x)
    sigma = math.sqrt(n * p * (1 - p) * (1 + rho) / (1 - rho))
    assert abs(sum(x) - n * p) <= 4 * sigma, (sum(x), n * p, sigma)


def test_both_copies_are_charged_to_the_link(clf_ns: Classifier, netns: str) -> None:
    """The timeline advances twice per duplicated packet: two serialisations back to back."""
    clf_ns.set_link(VNI, egress=Emulation(duplicate=1.0, capacity=RATE, queue=None,
                                          latency=1_000_000))
    t0 = mono()
    run = _in_netns(netns, lambda: [_send(clf_ns) for _ in range(3)])
    t1 = mono()
    st = clf_ns.stage_state(VNI, 0)
    assert t0 + 6 * SER <= st.t_last <= t1 + 6 * SER
    # The original leaves after its serialisation and delay; its copy one serialisation later.
    assert t0 + 5 * SER + 1_000_000 <= run[-1].ctx.tstamp <= t1 + 5 * SER + 1_000_000
    assert st.t_depart >= run[-1].ctx.tstamp + SER
    assert _dup(clf_ns) == 3 and clf_ns.link_counters(VNI)["egress"].packets == 3


def test_a_copy_that_does_not_fit_the_queue_is_dropped_alone(clf_ns: Classifier,
                                                             netns: str) -> None:
    """A queue of one and a half frames: the original finds it empty and passes, its copy
    would make two frames of backlog and is a queue drop, not charged to the timeline."""
    wire = SER * RATE // 8 // 10**9
    clf_ns.set_link(VNI, egress=Emulation(duplicate=1.0, capacity=RATE, queue=wire * 3 // 2))
    t0 = mono()
    _in_netns(netns, lambda: _send(clf_ns))
    t1 = mono()
    c = clf_ns.link_counters(VNI)["egress"]
    assert c.packets == 1 and c.duplicated == 0 and c.drops["queue"] == 1
    assert t0 + SER <= clf_ns.stage_state(VNI, 0).t_last <= t1 + SER


def test_a_dropped_packet_is_not_duplicated(clf_ns: Classifier, netns: str) -> None:
    clf_ns.set_link(VNI, egress=Emulation(duplicate=1.0, loss=1.0))
    _in_netns(netns, lambda: _send(clf_ns, repeat=100))
    c = clf_ns.link_counters(VNI)["egress"]
    assert c.duplicated == 0 and c.drops["loss"] == 100


def test_a_frame_with_the_copy_mark_is_passed_untouched(clf_ns: Classifier, netns: str) -> None:
    """The copy's way back through the classifier: its mark bit cleared, nothing counted, the
    frame not dropped even on a link that drops everything."""
    clf_ns.set_link(VNI, egress=Emulation(loss=1.0))
    mark = ClassifierConfig().dup_mark | 0x5
    r = _in_netns(netns, lambda: _send(clf_ns, mark=mark))
    assert r.retval == TC_ACT_OK and r.ctx.mark == 0x5 and r.data == FRAME
    c = clf_ns.link_counters(VNI)["egress"]
    assert c.packets == 0 and c.drops["loss"] == 0


@pytest.mark.parametrize("bad", [0x3, 0x10000, 0x18000])  # two bits; in mark_mask; both
def test_the_copy_mark_is_one_bit_outside_the_handover(bad: int) -> None:
    with pytest.raises(ValueError, match="dup_mark"):
        ClassifierConfig(dup_mark=bad)


VETH_RUN = r"""
import ctypes, json, socket, struct, sys, time
sys.path.insert(0, %(repo)r)
from pyroute2 import IPRoute
from datapath.bpf import object_path
from datapath.classifier import Classifier, ClassifierConfig
from datapath.libbpf import BpfObject
from datapath.netlink.devices import Netlink
from schemas import Emulation
from tests.fixtures.packets import inner_tcp, vxlan

n = %(n)d
frame = vxlan(%(vni)d, inner_tcp(payload=200))
nl = Netlink(IPRoute(), None)
with Classifier.load(ClassifierConfig(max_links=8)) as c, \
        BpfObject.open(object_path("selftest")) as probe:
    nl.attach_bpf("dupa", "egress", c.egress_program.fd, "moa_egress")
    nl.attach_bpf("dupb", "ingress", probe.program("st_tstamp_prog").fd, "moa_st_tstamp")
    c.set_link(%(vni)d, egress=Emulation(duplicate=1.0, latency=%(lat)d, capacity=%(rate)d,
                                          queue=None))
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    rx.bind(("dupb", 0))
    rx.settimeout(0.5)
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind(("dupa", 0))
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    for _ in range(n):
        tx.send(frame)
    t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    got = 0
    try:
        while True:
            if rx.recv(4096) == frame:
                got += 1
    except socket.timeout:
        pass
    k = c.link_counters(%(vni)d)["egress"]
    seen = probe.map("st_tstamps")
    arrived = []
    for i in range(min(64, 2 * n)):
        raw = seen.lookup(i)
        ts, typ, length = struct.unpack("=QII", bytes(raw))
        if length == len(frame):
            arrived.append([ts, typ])
    print(json.dumps({"received": got, "packets": k.packets, "duplicated": k.duplicated,
                      "t0": t0, "t1": t1, "arrived": arrived}))
"""


def test_on_a_veth_pair_the_original_and_its_copy_arrive_with_their_departures(
        netns: str) -> None:
    """The real path on this kernel: bpf_clone_redirect from the tc egress of dupa to dupa's
    egress again; both frames reach dupb, and the stage classified each original once. A tc
    ingress program on dupb (selftest.bpf.c) reads each frame's departure: both frames of a
    pair carry a monotonic delivery time, the copy's one serialisation after its original's
    (docs/kernel-facts.md, "Duplication": what the VM tier checks on 6.1)."""
    for cmd in (("ip", "link", "add", "dupa", "type", "veth", "peer", "name", "dupb"),
                ("ip", "link", "set", "dupa", "up"), ("ip", "link", "set", "dupb", "up")):
        sh(*nsenter(netns), *cmd)
    n, lat = 20, 10**9
    out = subprocess.run([*nsenter(netns), sys.executable, "-c", VETH_RUN % {
        "repo": REPO, "n": n, "vni": VNI, "lat": lat, "rate": RATE}],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["received"], got["packets"], got["duplicated"]) == (2 * n, n, n)
    arrived = got["arrived"]
    assert len(arrived) == 2 * n
    assert {typ for _, typ in arrived} == {1}     # BPF_SKB_TSTAMP_DELIVERY_MONO
    ser = (len(vxlan(VNI, inner_tcp(payload=200))) - 50 + 24) * 8 * 10**9 // RATE
    departures = sorted(ts for ts, _ in arrived)
    originals, copies = departures[0::2], departures[1::2]
    assert all(c - o == ser for o, c in zip(originals, copies)), (ser, departures[:4])
    assert got["t0"] + ser + lat <= departures[0] <= got["t1"] + ser + lat


def _doc(emulation: dict) -> str:
    return json.dumps({"id": "m", "links": [{
        "id": "a-b", "emulation": emulation,
        "endpoints": [{"vni": 100, "remote": "10.0.0.1"}, {"vni": 101, "remote": "10.0.0.2"}]}]})


@pytest.mark.parametrize("emulation, field", [
    ({"duplicate": 1.5}, "links[0].emulation.duplicate"),
    ({"duplicate": -0.1}, "links[0].emulation.duplicate"),
    ({"duplicate": 0.1, "duplicate_correlation": 1.0}, "links[0].emulation.duplicate_correlation"),
    ({"duplicate_correlation": 0.5}, "links[0].emulation.duplicate_correlation"),
])
def test_refusals_name_the_field(emulation: dict, field: str) -> None:
    with pytest.raises(schemas.InvalidMessage) as e:
        schemas.decode(schemas.Materialize, _doc(emulation))
    assert e.value.field == field and e.value.code == "invalid"


def test_a_direction_takes_duplicate_of_its_own() -> None:
    """duplicate is per direction like every field: the endpoint's own value reaches its VNI."""
    doc = json.loads(_doc({"latency": "1ms"}))
    doc["links"][0]["endpoints"][1]["emulation"] = {"duplicate": 0.25}
    m = schemas.decode(schemas.Materialize, json.dumps(doc))
    link = m.links[0]
    assert schemas.direction(link.emulation, link.endpoints[0].emulation).duplicate == 0.0
    assert schemas.direction(link.emulation, link.endpoints[1].emulation).duplicate == 0.25


def test_status_reports_the_duplicated_count(clf_ns: Classifier, netns: str) -> None:
    """The count lives in the stage's shared state (abi.h); status and telemetry carry it."""
    from moa_bus.service.status import _stats

    clf_ns.set_link(VNI, egress=Emulation(duplicate=1.0))
    _in_netns(netns, lambda: _send(clf_ns, repeat=7))
    stats = _stats("m", "l", [VNI], clf_ns.counters_of([VNI]))
    assert {s.stage: (s.packets, s.duplicated) for s in stats} == {"egress": (7, 7),
                                                                  "ingress": (0, 0)}


def test_an_early_packet_is_duplicated_early(clf_ns: Classifier, netns: str) -> None:
    """reorder_early and duplicate together: the copy has its original's delay, none when the
    original goes early; both are charged."""
    clf_ns.set_link(VNI, egress=Emulation(
        latency=50_000_000, capacity=RATE, queue=None, duplicate=1.0,
        reorder_early=schemas.ReorderEarly(probability=1.0, gap=2)))
    t0 = mono()
    first, second = _in_netns(netns, lambda: [_send(clf_ns).ctx.tstamp for _ in range(2)])
    t1 = mono()
    assert t0 + SER + 50_000_000 <= first <= t1 + SER + 50_000_000   # delayed, copy after it
    assert t0 + 3 * SER <= second <= t1 + 3 * SER                     # early, after 2 frames
    st = clf_ns.stage_state(VNI, 0)
    assert t0 + 4 * SER <= st.t_last <= t1 + 4 * SER and _dup(clf_ns) == 2
    assert st.t_depart == first + SER   # the delayed packet's copy is the last departure
