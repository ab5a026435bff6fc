"""Every accepted setting is applied, or refused (issue 11), without a kernel: the horizon and
what refuses a delay beyond it (code and field), the default queue that fits, sch_fq sized from
the links and re-sized as they come and go, the fq memory bound with both figures, the VXLAN
port set a plan keeps, aliases that fit the kernel's limit for every valid id, and the
`moa serve` settings of all that. The kernel half is in tests/test_box_limits_kernel.py."""
from __future__ import annotations

import argparse
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from datapath import limits
from datapath.emulation import queue_bytes, queue_ns
from datapath.netlink.model import (
    ALIAS_MAX, FqSizing, MoaDevice, fq_sizing_for, make_alias, owner_key, parse_alias,
)
from datapath.plan.planner import Current, PlanConfig, link_stages, plan
from datapath.plan.ports import SetVxlanPorts, port_changes
from moa_bus.service.settings import (
    ServeSettings, SettingsError, check_ranges, fq_memory_max_bytes, horizon_ns, size_argument,
)
from schemas import Emulation

S = limits.NSEC
MS = S // 1000
FRAME = limits.frame_bytes(1450)  # a VTEP MTU of 1450: 1450 + 14 + 24 = 1488 B
H = 30 * S  # the default horizon


def refusal(e: Emulation, horizon: int = H, port: Emulation | None = None):
    return limits.horizon_refusal(e, "links[0].emulation", horizon, FRAME, port)


# ------------------------------------------------------------------------------ the horizon

def test_hold_is_latency_jitter_and_the_longer_of_queue_and_one_frame() -> None:
    e = Emulation(latency=10 * S, jitter=2 * S, capacity=100_000_000, queue=1 << 20)
    assert limits.hold_ns(e, FRAME) == 12 * S + queue_ns(e)
    slow = Emulation(capacity=10_000, queue=1000)  # the queue is shorter than one frame
    assert limits.hold_ns(slow, FRAME) == limits.frame_ns(10_000, FRAME) == 1_190_400_000
    assert limits.hold_ns(Emulation(latency=5 * MS), FRAME) == 5 * MS
    assert limits.hold_ns(None, FRAME) == 0


@pytest.mark.parametrize("e, field, words", [
    (Emulation(latency=31 * S), "latency", "latency 31s"),
    (Emulation(latency=20 * S, jitter=11 * S), "jitter", "latency + jitter = 31s"),
    (Emulation(latency=29 * S, capacity=100_000_000, queue=100_000_000), "queue",
     "latency + jitter + queue"),
    (Emulation(latency=29 * S + 600 * MS, capacity=1_000_000), "queue", "default queue"),
], ids=["latency", "jitter", "queue", "default queue"])
def test_a_delay_beyond_the_horizon_is_refused_unsupported_naming_the_field(
        e, field, words) -> None:
    r = refusal(e)
    assert r is not None and r.code == "unsupported"
    assert r.field == f"links[0].emulation.{field}"
    assert words in r.message and "horizon 30s" in r.message and "--horizon" in r.message


def test_a_capacity_whose_one_frame_exceeds_the_horizon_is_refused_on_capacity() -> None:
    # 1 kbit/s: one 1488-byte frame takes 11.9 s.
    assert limits.frame_ns(1000, FRAME) == 11_904_000_000
    r = refusal(Emulation(capacity=1000), horizon=10 * S)
    assert r is not None and (r.code, r.field) == ("unsupported", "links[0].emulation.capacity")
    assert "one full frame (1488 B) at 1kbps takes 11.904s" in r.message
    # The same link under the default horizon is held (default queue: two frames, 24.6 s).
    assert refusal(Emulation(capacity=1000)) is None
    assert refusal(Emulation(capacity=1000, latency=6 * S)) is not None


def test_the_edge_cases_are_accepted_exactly_up_to_the_horizon() -> None:
    ten = Emulation(latency=10 * S, capacity=100_000_000, queue=1 << 20)  # 10 s with a queue
    assert refusal(ten) is None
    assert limits.hold_ns(ten, FRAME) == 10 * S + 83_886_080
    exact = Emulation(latency=H - queue_ns(Emulation(capacity=10**9, queue=1 << 20)),
                      capacity=10**9, queue=1 << 20)
    assert limits.hold_ns(exact, FRAME) == H and refusal(exact) is None
    over = Emulation(latency=exact.latency + 1, capacity=10**9, queue=1 << 20)
    assert refusal(over) is not None
    assert refusal(Emulation(latency=H)) is None and refusal(Emulation(latency=H + 1)) is not None


def test_a_lan_port_holds_no_longer_than_its_shared_queue() -> None:
    """The port stage's queue is at most the link's (planner.port_stage), so checking the
    egress stage covers it; horizon_refusal checks both all the same."""
    link = schemas.Link(id="lan", endpoints=[schemas.Endpoint(vni=v, remote="10.0.0.1")
                                             for v in (1, 2, 3)],
                        emulation=Emulation(capacity=3000, queue=30_000))
    held = PlanConfig(uplink="up0", local="10.0.0.1", port_hold=FqSizing())
    (egress, port), *rest = link_stages(link, held)
    assert all(st == (egress, port) for st in rest)
    assert port is not None and 0 < limits.hold_ns(port, FRAME) <= limits.hold_ns(egress, FRAME)
    r = refusal(egress, horizon=9 * S, port=port)
    assert r is not None and r.field == "links[0].emulation.queue"


def test_the_default_queue_stays_within_a_second_of_link_time_and_two_frames() -> None:
    assert queue_bytes(Emulation(capacity=10**9)) == 6_250_000            # 50 ms
    assert queue_bytes(Emulation(capacity=10**6)) == 64 * 1024            # the 64 KiB floor
    assert queue_bytes(Emulation(capacity=100_000)) == 12_500             # 1 s, not 5.2 s
    assert queue_bytes(Emulation(capacity=10_000)) == 2 * 1538            # two full frames
    assert queue_ns(Emulation(capacity=100_000)) == S
    assert queue_bytes(Emulation(capacity=10_000, queue=1500)) == 1500    # given: as given


def test_the_horizon_is_at_least_the_longest_hold_and_fq_counts_it_in_microseconds() -> None:
    stages = [Emulation(latency=40 * S), None, Emulation(capacity=10**9, latency=S)]
    assert limits.required_horizon(stages, FRAME) == 40 * S
    assert limits.required_horizon([], FRAME) == 0
    assert limits.fq_horizon_us(10 * S) == 10_000_000
    assert limits.fq_horizon_us(10 * S + 1) == 10_000_001  # rounded up: fq never drops first
    assert limits.MAX_HORIZON_NS == 4_294_967_295_000


# ------------------------------------------------------------------------------ sch_fq sizing

def _figures(*links: tuple[Emulation, int], line: int = 10**10) -> limits.Figures:
    return limits.Figures.of(((e, None, n) for e, n in links), FRAME, line)


def test_fq_figures_are_rate_times_hold_and_an_unlimited_link_counts_at_line_rate() -> None:
    gig = Emulation(capacity=10**9, latency=50 * MS, queue=0)
    assert limits.stage_bytes(gig, FRAME, 10**10) == 6_250_000 + 1488 * 1   # one frame's time too
    unlimited = Emulation(latency=10 * MS)
    assert limits.stage_bytes(unlimited, FRAME, 10**10) == 12_500_000
    assert limits.stage_bytes(Emulation(loss=0.5), FRAME, 10**10) == 0
    f = _figures((gig, 2), (unlimited, 2))
    assert f.egress_bytes == 2 * 6_251_488 + 2 * 12_500_000 and f.largest == 12_500_000


def test_a_trace_link_holds_its_queue_in_bytes_and_what_its_delay_holds() -> None:
    """trace.h's tail drop bounds a trace link's backlog in bytes, whatever the trace's rate
    (its queue as time at the mean rate would count the line rate over that time)."""
    trace = schemas.Trace(opportunities_ms=(0, 1, 5, 20, 1000))
    e = Emulation(trace=trace, queue=1_000_000)
    assert limits.stage_bytes(e, FRAME, 10**10) == 1_000_000
    delayed = Emulation(trace=trace, queue=1_000_000, latency=10 * MS)
    assert limits.stage_bytes(delayed, FRAME, 10**10) == 1_000_000 + 12_500_000
    # the line rate times the queue as time at the trace's mean rate was ~833 times more
    assert 10**10 * limits.hold_ns(e, FRAME) // (8 * 10**9) > 800 * 1_000_000


def test_the_box_holds_at_most_line_rate_times_the_longest_hold() -> None:
    many = [_figures((Emulation(latency=100 * MS), 2)) for _ in range(50)]  # 50 x 250 MB
    box = limits.BoxFigures(tuple(many), 10**10)
    assert sum(f.egress_bytes for f in many) == 50 * 250_000_000
    assert box.uplink_bytes == box.memory == 125_000_000  # 10 Gbit/s x 100 ms
    assert limits.BoxFigures((), 10**10).memory == 0


def test_fq_limit_and_flow_limit_follow_the_links_held() -> None:
    nothing = limits.BoxFigures((), 10**10).fq_sizing(1500, H)
    assert (nothing.limit, nothing.flow_limit, nothing.horizon_ns) == (10_000, 1000, H)
    gig = _figures((Emulation(capacity=10**9, latency=200 * MS, queue=0), 2))
    sized = limits.BoxFigures((gig,), 10**10).fq_sizing(1500, H)
    # one link: 200 ms at 1 Gbit/s = 25 MB = 16,668 full packets, x2
    assert sized.flow_limit == 2 * -(-gig.largest // 1500) == 33_336
    assert sized.limit == 2 * -(-gig.egress_bytes // 1500) == 66_672
    assert sized == fq_sizing_for(gig.largest, gig.egress_bytes, 1500, horizon_ns=H)


def test_fq_is_grown_before_a_plan_and_shrunk_after_it() -> None:
    small, big = FqSizing(limit=10_000, flow_limit=1000), FqSizing(limit=50_000, flow_limit=9000)
    assert limits.fq_resize(small, small) == (None, None)
    assert limits.fq_resize(small, big) == (big, None)
    assert limits.fq_resize(big, small) == (None, small)
    mixed = FqSizing(limit=20_000, flow_limit=500)
    first, last = limits.fq_resize(FqSizing(limit=10_000, flow_limit=1000), mixed)
    assert (first.limit, first.flow_limit) == (20_000, 1000) and last == mixed


def test_a_change_past_fq_memory_max_is_refused_with_both_figures() -> None:
    budget = limits.Budget(H, FRAME, 10**10, fq_memory_max=20_000_000)
    one = Emulation(capacity=10**9, latency=100 * MS, queue=0)   # 12.5 MB per endpoint
    stages = [((one, None), 2, "links[0].emulation")]
    budget.held("a", budget.admit("a", [((one, None), 1, "links[0].emulation")]))  # 12.5 MB: taken
    with pytest.raises(schemas.InvalidMessage) as e:
        budget.admit("b", stages)                                 # + 25 MB: refused
    after = budget.box({"b": budget.figures_of([((one, None), 2)])}).memory
    assert (e.value.code, e.value.field) == ("unsupported", "links")
    assert f"({after} B)" in e.value.message and "(20000000 B)" in e.value.message
    assert "--fq-memory-max" in e.value.message and "it holds" in e.value.message
    # Lowering is always taken, even above the bound; a box without a bound takes anything.
    budget.fq_memory_max = 1
    assert budget.admit("a", [((Emulation(capacity=10**9, latency=MS, queue=0), None), 1,
                                "links[0].emulation")])
    unbounded = limits.Budget(H, FRAME, 10**10)
    assert unbounded.admit("b", stages) == budget.figures_of([((one, None), 2)])


def test_budget_refuses_the_first_link_beyond_the_horizon_by_its_index() -> None:
    budget = limits.Budget(10 * S, FRAME, 10**10)
    ok = Emulation(latency=MS)
    with pytest.raises(schemas.InvalidMessage) as e:
        budget.admit("m", [((ok, None), 2, "links[0].emulation"),
                           ((Emulation(latency=11 * S), None), 2, "links[1].emulation")])
    assert (e.value.code, e.value.field) == ("unsupported", "links[1].emulation.latency")


# ------------------------------------------------------------------------------ VXLAN ports

def test_port_changes_take_a_port_before_its_first_vtep_and_drop_it_after_its_last() -> None:
    gone, new = port_changes(frozenset(), set(), set(), {8472})
    assert gone is None and new == SetVxlanPorts(frozenset({8472}), frozenset())
    # Another materialization still uses 8472: it stays; 9000 was only ours: it goes.
    gone, new = port_changes(frozenset({8472, 9000}), {8472, 9000}, {8472}, set())
    assert gone == SetVxlanPorts(frozenset({8472}), frozenset({8472, 9000})) and new is None
    assert port_changes(frozenset({8472}), {8472}, set(), {8472}) == (None, None)
    assert SetVxlanPorts(frozenset({8472}), frozenset()).describe() == (
        "classifier: take UDP port(s) 8472 as VXLAN")


def _vtep(name: str, vni: int, mid: str, port: int) -> MoaDevice:
    return MoaDevice(name=name, index=vni, kind="vxlan", materialization=mid, link="l", up=True,
                     mtu=1450, master=None, vni=vni, local="10.0.0.1", remote="10.0.0.2",
                     port=port, underlay=1)


def test_the_plan_sets_a_port_before_the_vteps_and_clears_it_after_they_go() -> None:
    cfg = PlanConfig(uplink="up0", local="10.0.0.1")
    m = schemas.Materialize(id="m", links=[schemas.Link(id="l", endpoints=[
        schemas.Endpoint(vni=1, remote="10.0.0.2", port=8472),
        schemas.Endpoint(vni=2, remote="10.0.0.3")])])
    ops = plan(m, Current(), cfg, lambda s: repr(s).encode())
    kinds = [type(op).__name__ for op in ops]
    assert kinds.index("SetVxlanPorts") < kinds.index("CreateVtep")
    assert ops[kinds.index("SetVxlanPorts")].ports == frozenset({8472})  # 4789 is the classifier's
    have = Current(devices={"mv1": _vtep("mv1", 1, "m", 8472), "mv2": _vtep("mv2", 2, "m", 4789)},
                   vxlan_ports=frozenset({8472}))
    ops = plan(schemas.Materialize(id="m", links=[]), have, cfg, lambda s: b"")
    kinds = [type(op).__name__ for op in ops]
    assert kinds[-1] == "SetVxlanPorts" and kinds.index("DeleteVtep") < len(kinds) - 1
    assert ops[-1].ports == frozenset() and ops[-1].before == frozenset({8472})


# ------------------------------------------------------------------------------ aliases

ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:"


def test_every_valid_id_pair_fits_the_kernels_alias_limit_and_parses_back_to_its_keys() -> None:
    worst = ":" * 128  # every character becomes %3A
    alias = make_alias(worst, worst)
    assert len(alias.encode()) == 253 < ALIAS_MAX == 255  # pyroute2 refuses 255 (model.py)
    assert parse_alias(alias) == (owner_key(worst), owner_key(worst))
    for a, b in [("x" * 128, "y" * 128), ("rlz:42.exp", "a:b"), ((ID_CHARS * 2)[:128], "l" * 128),
                 ("m", ":" * 40), (":" * 41, "l")]:
        alias = make_alias(a, b)
        assert len(alias.encode()) <= 255, (a, b)
        assert parse_alias(alias) == (owner_key(a), owner_key(b))
    # Short ids are their own keys (the alias reads as before); long ones are hashed, recoverably.
    assert owner_key("rlz:42.exp") == "rlz:42.exp" and make_alias("a", "b") == "moa:a:b"
    key = owner_key(worst)
    assert key.endswith(hashlib.sha256(worst.encode()).hexdigest()[:32]) and "#" in key
    assert owner_key(key) == key and make_alias(key, "b") == make_alias(worst, "b")
    assert owner_key(worst) != owner_key(worst[:-1] + "a")


def test_the_plan_matches_devices_of_a_long_id_by_their_key() -> None:
    mid, link = "m" * 100 + ":" * 28, "l" * 127 + ":"
    cfg = PlanConfig(uplink="up0", local="10.0.0.1")
    m = schemas.Materialize(id=mid, links=[schemas.Link(id=link, endpoints=[
        schemas.Endpoint(vni=1, remote="10.0.0.2"), schemas.Endpoint(vni=2, remote="10.0.0.3")])])
    mk, lk = parse_alias(make_alias(mid, link))
    have = {n: MoaDevice(name=n, index=v, kind="vxlan", materialization=mk, link=lk, up=True,
                         mtu=1450, master=None, vni=v, local="10.0.0.1", remote=r, port=4789,
                         underlay=None)
            for n, v, r in (("mv1", 1, "10.0.0.2"), ("mv2", 2, "10.0.0.3"))}
    ops = plan(m, Current(devices=have), cfg, lambda s: b"x")
    assert [type(op).__name__ for op in ops] == ["SetLinkParams", "SetLinkParams", "CreatePair"]
    other = schemas.Materialize(id="other", links=[schemas.Link(id="l", endpoints=[
        schemas.Endpoint(vni=1, remote="10.0.0.2"), schemas.Endpoint(vni=5, remote="10.0.0.3")])])
    with pytest.raises(Exception) as e:
        plan(other, Current(devices=have), cfg, lambda s: b"x")
    assert "belongs to materialization" in str(e.value)


# ------------------------------------------------------------------------------ settings

def test_horizon_and_fq_memory_max_settings() -> None:
    s = ServeSettings()
    assert horizon_ns(s) == 30 * S
    assert fq_memory_max_bytes(s) > 0  # half of MemTotal
    s.horizon, s.fq_memory_max = 12.5, 8 << 30
    check_ranges(s)
    assert (horizon_ns(s), fq_memory_max_bytes(s)) == (12_500_000_000, 8 << 30)
    assert size_argument("8GiB") == 8 << 30 and size_argument("1048576") == 1 << 20
    with pytest.raises(argparse.ArgumentTypeError):
        size_argument("8 gigs")
    for bad in ({"horizon": 0.0}, {"horizon": 5000.0}, {"horizon": float("nan")},
                {"fq_memory_max": 0}):
        s = ServeSettings(**bad)  # type: ignore[arg-type]
        with pytest.raises(SettingsError) as e:
            check_ranges(s)
        assert ("--horizon" in str(e.value)) == ("horizon" in bad), e.value


# ------------------------------------------------------------------------------ a change of a few

EMULATIONS = [None, Emulation(), Emulation(latency=MS), Emulation(latency=50 * MS, jitter=MS),
              Emulation(capacity=10**8, latency=MS), Emulation(capacity=10**9, latency=20 * MS),
              Emulation(capacity=10**6, queue=1 << 16), Emulation(latency=2 * S)]


def _groups(links: list[tuple[int, int, int]]) -> list:
    """stage_groups' shape from (egress emulation index, port emulation index, endpoints)."""
    return [((EMULATIONS[e], EMULATIONS[p]), n, f"links[{i}].emulation")
            for i, (e, p, n) in enumerate(links)]


LINK = st.tuples(st.integers(0, len(EMULATIONS) - 1), st.integers(0, len(EMULATIONS) - 1),
                 st.integers(1, 4))


@settings(max_examples=300, deadline=None)
@given(st.lists(LINK, min_size=1, max_size=12), st.data())
def test_a_change_of_a_few_links_adjusts_the_figures_to_those_of_the_whole(links, data) -> None:
    """Budget.admit_change (an Update's path): the held figures less the changed links' stages
    before, plus their stages after, equal the figures of the whole new content admitted
    anew, whatever the change, lowering the one link that held a maximum included."""
    budget = limits.Budget(H, FRAME, 10**10)
    budget.held("m", budget.admit("m", _groups(links)))
    changed = data.draw(st.lists(st.integers(0, len(links) - 1), min_size=1, unique=True))
    after = list(links)
    for i in changed:
        e, p, _ = data.draw(LINK)
        after[i] = (e, p, links[i][2])  # an Update keeps a link's endpoints
    before_groups, after_groups = _groups(links), _groups(after)
    figures = budget.admit_change("m", [before_groups[i] for i in changed],
                                  [after_groups[i] for i in changed])
    assert figures == limits.Budget(H, FRAME, 10**10).admit("m", after_groups)
    budget.held("m", figures)  # and again from the adjusted tally: still exact
    assert budget.admit_change("m", [after_groups[i] for i in changed],
                               [before_groups[i] for i in changed]) == budget.admit(
                                   "m", before_groups)


def test_lowering_the_one_link_that_held_a_maximum_lowers_it() -> None:
    budget = limits.Budget(H, FRAME, 10**10)
    slow, fast = Emulation(latency=2 * S), Emulation(latency=MS)
    groups = [((fast, None), 2, "links[0].emulation"), ((slow, None), 2, "links[1].emulation")]
    budget.held("m", budget.admit("m", groups))
    assert budget.figures["m"].egress_hold_ns == limits.hold_ns(slow, FRAME)
    lowered = budget.admit_change("m", [groups[1]], [((fast, None), 2, "links[1].emulation")])
    assert lowered.egress_hold_ns == limits.hold_ns(fast, FRAME)
    assert lowered.egress_bytes == (budget.figures["m"].egress_bytes
                                    - 2 * limits.stage_bytes(slow, FRAME, 10**10)
                                    + 2 * limits.stage_bytes(fast, FRAME, 10**10))


def test_a_change_is_judged_on_its_own_links_and_an_envelope_is_not_adjusted() -> None:
    budget = limits.Budget(10 * S, FRAME, 10**10)
    groups = [((Emulation(latency=MS), None), 2, "links[0].emulation")]
    budget.held("m", budget.admit("m", groups))
    with pytest.raises(schemas.InvalidMessage) as e:
        budget.admit_change("m", groups, [((Emulation(latency=11 * S), None), 2,
                                           "links[0].emulation")])
    assert (e.value.code, e.value.field) == ("unsupported", "links[0].emulation.latency")
    # a schedule's envelope (figures without a tally) and a materialization not held: None
    budget.held("s", limits.Figures(egress_bytes=1))
    assert budget.admit_change("s", groups, groups) is None
    assert budget.admit_change("nobody", groups, groups) is None
