"""Custom delay distributions (distribution "custom", netem's .dist tables; docs/semantics.md,
"Delay distributions") through BPF_PROG_TEST_RUN, with test_classifier_delay.py's method and
bounds: each table's draws against the table's own empirical distribution (Kolmogorov-Smirnov
distance under 1.95 / sqrt(n), the 0.1% critical value, n = 200,000), mean and standard
deviation within 1%, correlation at its configured lag-1 value with the marginal kept; and the
userspace side: the .dist reader, the table's lifecycle in moa_dist_custom, the limits."""
from __future__ import annotations

import bisect
import math
import random
import statistics

import pytest

from datapath import distributions as dist
from datapath import limits
from datapath.classifier import Classifier, ClassifierConfig
from schemas import Emulation
from tests.fixtures.bpf import pin_root  # noqa: F401
from tests.fixtures.classifier import mono, put_t_last
from tests.fixtures.packets import inner_tcp, vxlan
from tests.test_classifier_delay import (  # noqa: F401 (clf is a fixture)
    IPROUTE2_TABLES, JITTER, LATENCY, RATE, SER, VNI, clf, draws, ks_distance, lag1,
)


def experimental() -> tuple[int, ...]:
    """iproute2's experimental.dist, the one table it ships beside the built-in ones."""
    return tuple(dist.read_dist_file((IPROUTE2_TABLES / "experimental.dist").read_text()))


def bimodal() -> tuple[int, ...]:
    """1000 values (not a multiple of 4096): two bumps at -1 and +2 jitters."""
    rng = random.Random(13)
    return tuple(max(-32768, min(32767, round(rng.gauss(-8192 if i % 3 else 16384, 1500))))
                 for i in range(1000))


def exponential_16k() -> tuple[int, ...]:
    """16384 values as iproute2's maketable writes them (more than moa holds: thinned)."""
    return tuple(min(32767, round(-math.log(1 - (k + 0.5) / 16384) * 8192) - 8192)
                 for k in range(16384))


TABLES = {"experimental": experimental, "bimodal": bimodal, "exponential16k": exponential_16k}


def custom(values: tuple[int, ...], rho: float = 0.0) -> Emulation:
    return Emulation(latency=LATENCY, jitter=JITTER, distribution="custom",
                     distribution_table=values, delay_correlation=rho, capacity=RATE, queue=0,
                     reorder=True)


def held_cdf(values: tuple[int, ...]):
    """The CDF of what moa holds: DIST_SIZE evenly ranked values of the table."""
    t = sorted(dist.custom_table(values))
    return lambda x, left=False: (bisect.bisect_left(t, x) if left
                                  else bisect.bisect_right(t, x)) / len(t)


def values_cdf(values: tuple[int, ...]):
    """The table's own empirical CDF (what netem draws from)."""
    t = sorted(values)
    return lambda x, left=False: (bisect.bisect_left(t, x) if left
                                  else bisect.bisect_right(t, x)) / len(t)


@pytest.mark.parametrize("name", TABLES)
def test_a_custom_table_draws_its_distribution(clf: Classifier, name: str) -> None:
    values = TABLES[name]()
    n = 200_000
    xs = draws(clf, custom(values), n)
    bound = 1.95 / math.sqrt(n)
    assert ks_distance(xs, held_cdf(values)) <= bound, name
    # Against the values as given (netem's draw): holding 4096 ranks adds at most 1/4096.
    assert ks_distance(xs, values_cdf(values)) <= bound + 1 / dist.DIST_SIZE, name
    mean, sd = statistics.fmean(values), statistics.pstdev(values)
    assert abs(statistics.fmean(xs) - mean) <= 0.01 * sd, (name, statistics.fmean(xs), mean)
    assert abs(statistics.pstdev(xs) - sd) <= 0.01 * sd, (name, statistics.pstdev(xs), sd)
    assert abs(lag1(xs)) <= 4 / math.sqrt(n)


@pytest.mark.parametrize("name, rho", [("experimental", 0.5), ("bimodal", 0.3)])
def test_a_custom_table_keeps_its_distribution_under_correlation(clf: Classifier, name: str,
                                                                 rho: float) -> None:
    values = TABLES[name]()
    n = 100_000
    xs = draws(clf, custom(values, rho), n)
    assert abs(lag1(xs) - rho) <= 0.02, (name, rho, lag1(xs))
    n_eff = n * (1 - rho) / (1 + rho)
    assert ks_distance(xs, held_cdf(values)) <= 1.95 / math.sqrt(n_eff), name


def test_the_held_table_is_the_tables_ranks() -> None:
    """4096 values are held as they are (sorted); 16384 thinned to every fourth rank, which a
    second thinning keeps (the CLI sends the thinned table: the same one is held)."""
    e = experimental()
    assert len(e) == dist.DIST_SIZE and dist.custom_table(e) == tuple(sorted(e))
    x = exponential_16k()
    held = dist.custom_table(x)
    assert held == tuple(sorted(x)[4 * k + 2] for k in range(dist.DIST_SIZE))
    assert dist.custom_table(held) == held
    assert dist.table_key(held) == dist.table_key(x) != 0


def test_the_dist_file_reader_is_iproute2s() -> None:
    assert dist.read_dist_file("# a comment\n1 2 -3\n  4\n# 9 9\n") == [1, 2, -3, 4]
    normal = dist.read_dist_file((IPROUTE2_TABLES / "normal.dist").read_text())
    assert len(normal) == dist.DIST_SIZE
    for text, words in (("1 x 2", "'x' is not an integer"), ("1 40000", "16-bit"),
                        ("7", "at least 2"), ("1 " * 16385, "more than 16384")):
        with pytest.raises(ValueError, match=words):
            dist.read_dist_file(text)


def test_tables_are_written_before_their_links_and_removed_when_unused(
        clf: Classifier) -> None:
    """One entry per distinct table, shared by the links that use it; an entry no link refers to
    is removed when room is needed (not before: a rollback may put such a link back)."""
    a, b = bimodal(), experimental()
    for vni in (VNI, VNI + 1, VNI + 2):
        clf.delete_link(vni)
    clf.set_link(VNI, egress=custom(a))
    clf.set_link(VNI + 1, egress=custom(a))
    clf.set_link(VNI + 2, egress=custom(b), ingress=custom(a))
    keys = {int.from_bytes(bytes(k), "little") for k in clf.dist_custom_map.keys()}
    assert {dist.table_key(a), dist.table_key(b)} <= keys
    raw = clf.dist_custom_map.lookup(dist.table_key(b), clf.abi.DistTable)
    assert tuple(raw.v) == tuple(sorted(b))
    # Fill the map with tables of links that then go: the next new table makes room.
    room = clf.abi.DIST_CUSTOM_MAX - len(keys)
    for i in range(room):
        clf.set_link(VNI + 3, egress=custom((i, i + 1)))
    clf.delete_link(VNI + 3)
    assert len(list(clf.dist_custom_map.keys())) == clf.abi.DIST_CUSTOM_MAX
    clf.set_link(VNI + 3, egress=custom((-5, 5)))
    kept = {int.from_bytes(bytes(k), "little") for k in clf.dist_custom_map.keys()}
    assert kept == {dist.table_key(a), dist.table_key(b), dist.table_key((-5, 5))}
    # A rollback to a link whose table was removed meanwhile writes it again from what was
    # encoded.
    before = clf.raw_links([VNI + 3])[VNI + 3]
    clf.set_link(VNI + 3, egress=custom((0, 1)))

    def present() -> set[int]:
        return {int.from_bytes(bytes(k), "little") for k in clf.dist_custom_map.keys()}

    i = 0
    while dist.table_key((-5, 5)) in present():
        clf.set_link(VNI + 4, egress=custom((100 + i, 200 + i)))
        i += 1
    assert i == clf.abi.DIST_CUSTOM_MAX - 3  # (a, b, (0, 1)) stayed in use
    clf.restore_link(VNI + 3, before)
    assert dist.table_key((-5, 5)) in present()
    # and the restored link draws from it: every delay is latency -5 or +5 table units
    clf.delete_link(VNI + 4)
    frame = vxlan(VNI + 3, inner_tcp(payload=1000))
    t0 = mono() + 20_000_000_000
    put_t_last(clf, VNI + 3, 0, t0)
    got = {clf.egress_program.test_run(frame, ctx=clf.abi.SkBuff()).ctx.tstamp
           - (t0 + (k + 1) * SER) - LATENCY for k in range(200)}
    assert got == {-5000, 5000}
    for vni in (VNI, VNI + 1, VNI + 2, VNI + 3):
        clf.delete_link(vni)


def test_the_hold_counts_a_custom_tables_largest_value() -> None:
    """A table reaching 3 jitters holds latency + 3 jitters; one below 1 jitter, latency +
    jitter (as uniform)."""
    wide = Emulation(latency=10, jitter=1000, distribution="custom",
                     distribution_table=(-8192, 0, 3 * 8192))
    assert limits.max_delay_ns(wide) == 10 + 3000
    narrow = Emulation(latency=10, jitter=1000, distribution="custom",
                       distribution_table=(-100, 100))
    assert limits.max_delay_ns(narrow) == 10 + 1000


def test_a_restarted_classifier_finds_its_tables(pin_root: str) -> None:  # noqa: F811
    """Pinned: the tables outlive the process, and the next one knows their content (a rollback
    after a restart may need to write one back)."""
    table = bimodal()
    with Classifier.load(ClassifierConfig(max_links=8, horizon_ns=60 * 10**9),
                         pin_root=pin_root) as c:
        c.set_link(VNI, egress=custom(table))
        before = c.raw_links([VNI])[VNI]
    with Classifier.load(ClassifierConfig(max_links=8, horizon_ns=60 * 10**9),
                         pin_root=pin_root) as c:
        key = dist.table_key(table)
        assert [int.from_bytes(bytes(k), "little") for k in c.dist_custom_map.keys()] == [key]
        assert c._tables[key] == dist.custom_table(table)
        c.restore_link(VNI, before)
        xs = draws(c, custom(table), 20_000)
        assert ks_distance(xs, held_cdf(table)) <= 1.95 / math.sqrt(20_000)
