"""Random loss through BPF_PROG_TEST_RUN (repeat=N, then the counters): Bernoulli within 4
sigma of the configured probability; Gilbert-Elliott's mean against its stationary value."""
from __future__ import annotations

import math

import pytest

from datapath.classifier import Classifier, ClassifierConfig
from schemas import Emulation, GilbertElliott
from tests.fixtures.packets import inner_udp, vxlan

VNI = 400
FRAME = vxlan(VNI, inner_udp(64))
N = 200_000


@pytest.fixture(scope="module")
def clf():
    # A tiny event budget keeps the ring buffer out of the way: losses are counted, not reported.
    with Classifier.load(ClassifierConfig(max_links=16, event_budget=1)) as c:
        yield c


def lose(c: Classifier, emu: Emulation, n: int = N) -> tuple[int, int]:
    c.delete_link(VNI)
    c.set_link(VNI, egress=emu)
    c.egress_program.test_run(FRAME, ctx=c.abi.SkBuff(), repeat=n)
    counts = c.link_counters(VNI)["egress"]
    assert counts.packets + counts.drops["loss"] == n
    assert counts.drops["queue"] == counts.drops["horizon"] == 0
    return counts.drops["loss"], counts.packets


@pytest.mark.parametrize("p", [0.0, 1.0, 0.01, 0.37])
def test_bernoulli_loss_rate_within_4_sigma(clf: Classifier, p: float) -> None:
    lost, passed = lose(clf, Emulation(loss=p))
    sigma = math.sqrt(N * p * (1 - p))
    assert abs(lost - N * p) <= 4 * sigma, (lost, N * p, sigma)
    if p == 0.0:
        assert lost == 0
    if p == 1.0:
        assert passed == 0


def test_tiny_probability_is_not_rounded_to_zero(clf: Classifier) -> None:
    """1e-4 is not an integer percent: about 20 of 200,000 are lost."""
    p = 1e-4
    lost, _ = lose(clf, Emulation(loss=p))
    assert abs(lost - N * p) <= 4 * math.sqrt(N * p * (1 - p))
    assert lost > 0


def test_gilbert_elliott_mean_matches_stationary_value(clf: Classifier) -> None:
    ge = GilbertElliott(p=0.01, r=0.1, loss_good=0.001, loss_bad=0.5)
    n = 1_000_000
    lost, _ = lose(clf, Emulation(burst=ge), n)
    bad = ge.p / (ge.p + ge.r)  # the stationary share of time in bad
    m = (1 - bad) * ge.loss_good + bad * ge.loss_bad
    # Losses are correlated through the state (eigenvalue 1 - p - r): the variance of the mean
    # is about (1 + l) / (1 - l) times Bernoulli's. Allow 4 sigma of that.
    lam = 1 - ge.p - ge.r
    sigma = math.sqrt(n * m * (1 - m) * (1 + lam) / (1 - lam))
    assert abs(lost - n * m) <= 4 * sigma, (lost, n * m, sigma)


def test_gilbert_elliott_is_bursty(clf: Classifier) -> None:
    """Same mean as a Bernoulli link, but losses come in runs: the bad state is visible in the
    stage state after a run that ends in it. Deterministic corner cases first."""
    # Never leaves good, good never loses.
    lost, _ = lose(clf, Emulation(burst=GilbertElliott(p=0.0, r=1.0)), 10_000)
    assert lost == 0
    # First packet (good, kept) moves to bad for good; every later one is lost.
    lost, passed = lose(clf, Emulation(burst=GilbertElliott(p=1.0, r=0.0)), 10_000)
    assert (lost, passed) == (9_999, 1)
    assert clf.stage_state(VNI, 0).ge_bad == 1


def test_loss_only_stage_leaves_the_timeline_alone(clf: Classifier) -> None:
    lose(clf, Emulation(loss=0.5), 10_000)
    state = clf.stage_state(VNI, 0)
    assert state.t_last == 0 and state.t_depart == 0


# --- correlated Bernoulli loss (netem's `loss P CORR`, issue 13) ------------------------------

def fates(c: Classifier, emu: Emulation, n: int) -> list[int]:
    """1 for each lost packet, 0 for each kept one, in order: one test run per packet."""
    c.delete_link(VNI)
    c.set_link(VNI, egress=emu)
    ctx = c.abi.SkBuff()
    return [int(c.egress_program.test_run(FRAME, ctx=ctx).retval == 2) for _ in range(n)]


def lag1(xs: list[int]) -> float:
    n = len(xs)
    m = sum(xs) / n
    var = sum((x - m) ** 2 for x in xs) / n
    cov = sum((xs[i] - m) * (xs[i + 1] - m) for i in range(n - 1)) / (n - 1)
    return cov / var


@pytest.mark.parametrize("p, rho", [(0.05, 0.25), (0.2, 0.5), (0.3, 0.0)])
def test_correlated_loss_keeps_its_rate_and_has_its_correlation(
        clf: Classifier, p: float, rho: float) -> None:
    """The marginal stays P (netem's mixing of draws does not keep it) and the lag-1
    autocorrelation of the loss sequence is rho within 0.02, over 100,000 packets."""
    n = 100_000
    xs = fates(clf, Emulation(loss=p, loss_correlation=rho), n)
    lost = sum(xs)
    # The variance of the mean of a two-state chain with lag-1 correlation rho is about
    # (1 + rho) / (1 - rho) times Bernoulli's: 4 sigma of that.
    sigma = math.sqrt(n * p * (1 - p) * (1 + rho) / (1 - rho))
    assert abs(lost - n * p) <= 4 * sigma, (lost, n * p, sigma)
    assert abs(lag1(xs) - rho) <= 0.02, lag1(xs)
    counts = clf.link_counters(VNI)["egress"]
    assert counts.drops["loss"] == lost and counts.packets == n - lost


# --- link state (issue 13) ---------------------------------------------------------------------

def test_a_link_down_drops_every_frame_with_its_reason_and_up_restores(clf: Classifier) -> None:
    clf.delete_link(VNI)
    up = Emulation(latency=1_000_000, capacity=10_000_000)
    clf.set_link(VNI, egress=up)
    ctx = clf.abi.SkBuff()
    clf.egress_program.test_run(FRAME, ctx=ctx, repeat=10)
    before = clf.stage_state(VNI, 0)
    clf.set_link(VNI, egress=Emulation(latency=1_000_000, capacity=10_000_000, state="down"))
    assert clf.egress_program.test_run(FRAME, ctx=ctx, repeat=1000).retval == 2
    counts = clf.link_counters(VNI)["egress"]
    assert counts.drops["link_down"] == 1000
    assert counts.packets == 10 and counts.drops["loss"] == counts.drops["queue"] == 0
    # Down touches no timeline: the link comes back where it was.
    assert clf.stage_state(VNI, 0).t_last == before.t_last
    clf.set_link(VNI, egress=up)
    assert clf.egress_program.test_run(FRAME, ctx=ctx, repeat=10).retval == 0
    assert clf.link_counters(VNI)["egress"].packets == 20
