"""Issue 16: every point-to-point scenario of the fidelity batch in flow mode, with the same
tolerances as in VTEP mode: a second boot (conftest.flow_run: `moa serve --p2p-mode flow`,
e2e.P2P_SCENARIOS) judged by the very test functions that judge the first boot. The LAN
scenarios, the P2P-against-LAN comparison and the held member's rollback have no
point-to-point link of their own and are not run there. Throughput at scale runs there too
(moa_bus/lab/vm/scale_scenarios.py): `tput` is a flow-mode link, and the fillers fill moa_flow,
the hash map the uplink's ingress looks every frame up in, as well as moa_links; judged as in
VTEP mode (tests/vm/test_vm_scale.py: the rounds' mean + 2 SE >= 0.95).
"""
from __future__ import annotations

import functools
import json

import pytest

from moa_bus.lab.vm import moa_stack
from moa_bus.lab.vm.measure import mean_plus_2se
from tests.vm import test_vm_impairments as imp
from tests.vm import test_vm_moa as moa

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

SAME_TESTS = {
    "service_and_uplink": moa.test_service_put_fq_on_the_slaves_and_its_classifiers_on_the_bond,
    "latency_20ms": moa.test_latency_20ms,
    "capacity_tcp_50mbit": moa.test_capacity_tcp_50mbit,
    "udp_2x_overload": moa.test_udp_2x_overload,
    "loss_1": functools.partial(moa.test_loss_within_4_sigma, tag="1"),
    "loss_10": functools.partial(moa.test_loss_within_4_sigma, tag="10"),
    "isolation": moa.test_isolation,
    "update_without_drops": moa.test_runtime_update_applies_without_drops,
    "update_without_reordering": moa.test_runtime_update_does_not_reorder,
    "bond_both_slaves": moa.test_bond_both_slaves_shaping_holds,
    "latency_10s": moa.test_a_10s_latency_with_a_queue_carries_traffic,
    "jitter_normal": functools.partial(imp.test_jitter_distribution_is_netems, dist="normal"),
    "jitter_pareto": functools.partial(imp.test_jitter_distribution_is_netems, dist="pareto"),
    "link_down_up": imp.test_a_link_down_loses_only_its_own_frames_and_comes_back,
    "access_link": imp.test_an_access_link_carries_tcp_at_each_direction_s_own_rate,
    "codel_vs_fifo": imp.test_codel_keeps_the_queue_short_where_a_fifo_fills_it,
    "codel_vs_kernel": imp.test_codel_is_the_kernels_codel,
}


def test_the_box_ran_in_flow_mode_with_no_vtep_for_a_p2p_link(flow_run) -> None:
    """The boot is what it claims: moa serve --p2p-mode flow, and moa's only VXLAN devices on
    the box are the LANs' members' (a VTEP mode box has one per endpoint of every link)."""
    r = flow_run.results
    assert r["p2p_mode"] == "flow", r.get("p2p_mode")
    devices = r["box_vxlan_devices"]
    assert devices is not None, (r["vm"], flow_run.folder)
    # moa names a VTEP mv<VNI>; the harness's comparison bridges have vx<VNI> of their own
    lan_vteps = sorted(f"mv{vni}" for lk in moa_stack.LINKS if len(lk.members) > 2
                       for _, vni in lk.members)
    assert sorted(d for d in devices if d.startswith("mv")) == lan_vteps, devices


@pytest.mark.parametrize("name", list(SAME_TESTS))
def test_as_in_vtep_mode(flow_run, name: str) -> None:
    SAME_TESTS[name](flow_run)


def test_a_full_flow_map_costs_moa_no_throughput(flow_run) -> None:
    """One TCP flow over the flow-mode link `tput` with moa_links and moa_flow as materialized
    and with both filled to 65,534 entries (moa_bus/lab/vm/fill_map.py --flow), in balanced rounds
    of (1, 65,534, 65,534, 1) back to back: the rounds' ratios' mean + 2 SE must reach 0.95."""
    sc = flow_run.results.get("scale", {})
    vm = flow_run.results["vm"]
    assert not sc.get("errors"), (sc, vm, flow_run.folder)
    assert sc.get("p2p_mode") == "flow", sc
    fills = sc.get("moa_fill_by_round") or []
    assert len(fills) == sc["runs"] >= 5, (sc, vm)
    for fill in fills:  # both maps were full in every round
        assert fill and fill["count"] == fill["flow_count"] == sc["links"] == 65_534, (sc, vm)
    assert json.loads(sc["moa_fill"]) == fills[0]
    ratios = sc["flow_tput_ratio_65534_by_round"]
    assert len(ratios) == sc["runs"], (sc, vm)
    assert mean_plus_2se(ratios) >= 0.95, (sc, vm)
    assert sc["moa_1_cpu_s_per_gb"] and sc["moa_65534_cpu_s_per_gb"], (sc, vm)
