"""netem's reorder through BPF_PROG_TEST_RUN (datapath/bpf/early.h; docs/semantics.md,
"Reordering (netem's reorder)"): the gap exact on a deterministic sequence (P = 1), the share
early within 4 sigma over 100,000 packets with and without a gap, the lag-1 autocorrelation of
the decisions as configured (within 0.02) with the share kept, an early packet charged its
serialisation and overtaking the delayed one before it, and the refusals of the schema.

A packet's fate is read from the program's output context: without a capacity an early packet
leaves now (no departure written, tstamp 0), a delayed one at now + latency."""
from __future__ import annotations

import math

import msgspec
import pytest

from datapath.classifier import Classifier
from schemas import Emulation, InvalidMessage, ReorderEarly, decode
from schemas.messages import Materialize
from tests.fixtures.classifier import RATE, SER, VNI, clf, mono, send  # noqa: F401

MS = 1_000_000


def _early(c: Classifier, n: int) -> list[int]:
    """1 for each of n packets sent one by one that went early (no departure), else 0."""
    return [1 if send(c).ctx.tstamp == 0 else 0 for _ in range(n)]


def _lag1(x: list[int]) -> float:
    """The sample lag-1 autocorrelation of a 0/1 sequence: the Pearson correlation of the
    pairs (x[i], x[i + 1]) - for the two-state chain of chain.h it is rho."""
    a, b = x[:-1], x[1:]
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((u - ma) * (v - mb) for u, v in zip(a, b)) / n
    va, vb = ma * (1 - ma), mb * (1 - mb)
    return cov / math.sqrt(va * vb)


@pytest.mark.parametrize("gap", [1, 2, 5, 13])
def test_with_probability_one_exactly_every_gap_th_packet_goes_early(clf: Classifier,
                                                                    gap: int) -> None:
    clf.set_link(VNI, egress=Emulation(latency=10 * MS,
                                       reorder_early=ReorderEarly(probability=1.0, gap=gap)))
    got = _early(clf, 10 * gap)
    assert got == ([0] * (gap - 1) + [1]) * 10
    st = clf.stage_state(VNI, 0)
    assert st.early_count == 0 and st.early_prev == 1


def test_without_reorder_early_no_packet_goes_early(clf: Classifier) -> None:
    clf.set_link(VNI, egress=Emulation(latency=10 * MS))
    assert _early(clf, 200) == [0] * 200


@pytest.mark.parametrize("p, gap", [(0.25, 1), (0.02, 1), (0.5, 3)])
def test_the_share_early_is_netems(clf: Classifier, p: float, gap: int) -> None:
    """netem's rule: after gap - 1 delayed packets every packet is a candidate until one goes
    early, so the share early is p / (1 + (gap - 1) p) (p itself with gap 1). 100,000
    packets, within 4 sigma (of a binomial: the renewal cycles make it a little smaller)."""
    n = 100_000
    clf.set_link(VNI, egress=Emulation(latency=10 * MS,
                                       reorder_early=ReorderEarly(probability=p, gap=gap)))
    got = sum(_early(clf, n))
    share = p / (1 + (gap - 1) * p)
    sigma = math.sqrt(n * share * (1 - share))
    assert abs(got - n * share) <= 4 * sigma, (got, n * share, sigma)


@pytest.mark.parametrize("p, rho", [(0.25, 0.5), (0.1, 0.8), (0.4, 0.2)])
def test_correlation_is_the_lag1_autocorrelation_and_keeps_the_share(clf: Classifier, p: float,
                                                                    rho: float) -> None:
    """The decisions' lag-1 autocorrelation (the Pearson correlation of successive decisions)
    within 0.02 of rho over 100,000 packets; the share early still p, within 4 sigma of a
    chain whose mean has variance p (1 - p) / n * (1 + rho) / (1 - rho). netem's correlation
    would have moved the share."""
    n = 100_000
    clf.set_link(VNI, egress=Emulation(
        latency=10 * MS, reorder_early=ReorderEarly(probability=p, correlation=rho)))
    x = _early(clf, n)
    assert abs(_lag1(x) - rho) <= 0.02, _lag1(x)
    sigma = math.sqrt(n * p * (1 - p) * (1 + rho) / (1 - rho))
    assert abs(sum(x) - n * p) <= 4 * sigma, (sum(x), n * p, sigma)


def test_an_early_packet_is_charged_and_overtakes_the_delayed_one(clf: Classifier) -> None:
    """With a capacity the early packet takes its serialisation on the timeline after the one
    before it (the link's rate holds) and no delay, so it leaves before that delayed one."""
    clf.set_link(VNI, egress=Emulation(latency=50 * MS, capacity=RATE, queue=None,
                                       reorder_early=ReorderEarly(probability=1.0, gap=2)))
    t0 = mono()
    first = send(clf).ctx.tstamp
    second = send(clf).ctx.tstamp
    t1 = mono()
    assert t0 + SER + 50 * MS <= first <= t1 + SER + 50 * MS + 1
    # The second starts when the first's serialisation ends and gets no latency.
    assert t0 + 2 * SER <= second <= t1 + 2 * SER and second < first
    st = clf.stage_state(VNI, 0)
    assert st.t_last == second and st.t_depart == first
    # A third, delayed again, leaves after the first (not behind the early one).
    third = send(clf).ctx.tstamp
    assert third > first


def test_a_dropped_packet_moves_neither_the_gap_nor_the_chain(clf: Classifier) -> None:
    clf.set_link(VNI, egress=Emulation(latency=10 * MS, loss=1.0,
                                       reorder_early=ReorderEarly(probability=1.0, gap=3)))
    for _ in range(5):
        send(clf)
    st = clf.stage_state(VNI, 0)
    assert st.early_count == 0 and st.early_prev == 0
    assert clf.link_counters(VNI)["egress"].drops["loss"] == 5


def test_moas_own_reorder_still_lets_jitter_reorder(clf: Classifier) -> None:
    """Emulation.reorder (jitter may reorder) is another thing and keeps working beside it."""
    clf.set_link(VNI, egress=Emulation(latency=10 * MS, jitter=10 * MS, reorder=True))
    t = [send(clf).ctx.tstamp for _ in range(200)]
    assert any(b < a for a, b in zip(t, t[1:]))
    assert 0 not in t


def _link(emulation: dict) -> str:
    return msgspec.json.encode({"id": "m", "links": [{
        "id": "a-b", "emulation": emulation,
        "endpoints": [{"vni": 100, "remote": "10.0.0.1"},
                      {"vni": 101, "remote": "10.0.0.2"}]}]}).decode()


@pytest.mark.parametrize("emulation, field", [
    ({"reorder_early": {"probability": 0.1}}, "links[0].emulation.reorder_early"),
    ({"latency": "10ms", "reorder_early": {"probability": 1.5}},
     "links[0].emulation.reorder_early.probability"),
    ({"latency": "10ms", "reorder_early": {"probability": 0.1, "correlation": 1.0}},
     "links[0].emulation.reorder_early.correlation"),
    ({"latency": "10ms", "reorder_early": {"probability": 0.1, "gap": 0}},
     "links[0].emulation.reorder_early.gap"),
    ({"latency": "10ms", "reorder_early": {"probability": 0.1, "gap": 2**31 + 1}},
     "links[0].emulation.reorder_early.gap"),
])
def test_refusals_name_the_field(emulation: dict, field: str) -> None:
    with pytest.raises(InvalidMessage) as e:
        decode(Materialize, _link(emulation))
    assert e.value.field == field and e.value.code == "invalid"


def test_a_valid_reorder_early_decodes() -> None:
    m = decode(Materialize, _link({"latency": "10ms", "reorder_early": {
        "probability": 0.25, "correlation": 0.5, "gap": 5}}))
    assert m.links[0].emulation.reorder_early == ReorderEarly(probability=0.25, correlation=0.5,
                                                              gap=5)
