"""Unit tests of the VM tier's tooling on the host: batch scripts, parsers, statistics, names."""
from __future__ import annotations

import json
import subprocess

import pytest

from moa_bus.lab.vm import batch, measure, scripted_testbed


def _run(b: batch.Batch, out) -> subprocess.CompletedProcess:
    script = out / "cmd.sh"
    script.write_text(b.script())
    return subprocess.run(["bash", str(script)],
                          env={"MOA_VM_OUT": str(out), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)


def test_batch_records_each_step_and_goes_on_after_a_failure(tmp_path) -> None:
    b = batch.Batch()
    b.add("one", ["echo hello", 'echo extra > "$STEP.x"'])
    b.add("two", ["false", "echo never"])  # set -e: stops at false
    b.add("three", "echo after")
    b.finally_commands.append('echo cleaned > "$OUT/cleanup"')
    proc = _run(b, tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = batch.results(tmp_path)
    assert set(res) == {"one", "two", "three"}
    assert res["one"].rc == 0 and res["one"].out == "hello\n"
    assert res["one"].file(".x").read_text() == "extra\n"
    assert res["two"].rc == 1 and "never" not in res["two"].out
    assert res["three"].out == "after\n"
    assert (tmp_path / "cleanup").read_text() == "cleaned\n"


def test_failed_critical_step_ends_the_batch(tmp_path) -> None:
    b = batch.Batch()
    b.add("setup", "exit 4", critical=True)
    b.add("later", "echo no")
    b.finally_commands.append('echo cleaned > "$OUT/cleanup"')
    proc = _run(b, tmp_path)
    assert proc.returncode == 1
    assert set(batch.results(tmp_path)) == {"setup"}
    assert batch.results(tmp_path)["setup"].rc == 4
    assert (tmp_path / "cleanup").exists()


@pytest.mark.parametrize("name", ["", "a.b", "A", "x y", "-x"])
def test_bad_step_names(name: str) -> None:
    with pytest.raises(ValueError):
        batch.Batch().add(name, "true")


def test_parse_ping() -> None:
    text = """PING 192.168.77.2 (192.168.77.2) 56(84) bytes of data.
64 bytes from 192.168.77.2: icmp_seq=1 ttl=64 time=20.8 ms
64 bytes from 192.168.77.2: icmp_seq=3 ttl=64 time=21.15 ms

--- 192.168.77.2 ping statistics ---
3 packets transmitted, 2 received, 33% packet loss, time 40ms
rtt min/avg/max/mdev = 20.800/20.975/21.150/0.175 ms
"""
    assert measure.parse_ping(text) == [20.8, 21.15]


def test_percentiles_match_numpy_linear() -> None:
    v = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert measure.median(v) == 3.0
    assert measure.percentile(v, 90) == pytest.approx(4.6)
    assert measure.percentile(v, 0) == 1.0 and measure.percentile(v, 100) == 5.0
    assert measure.mean(v) == 3.0


def test_parse_iperf3() -> None:
    tcp = {"intervals": [{"sum": {"bits_per_second": 4.7e7, "seconds": 1.0}},
                         {"sum": {"bits_per_second": 9e6, "seconds": 0.1}}],  # tail: dropped
           "end": {"sum_sent": {"bytes": 1448 * 1000, "retransmits": 5},
                   "sum_received": {"bits_per_second": 4.6e7}}}
    r = measure.parse_iperf3_tcp(json.dumps(tcp))
    assert r.goodput_bps == 4.6e7 and r.retransmits == 5 and r.intervals_bps == [4.7e7]
    assert r.retransmit_ratio(1448) == pytest.approx(0.005)
    udp = {"end": {"sum_sent": {"bits_per_second": 3e7},
                   "sum_received": {"bits_per_second": 9.5e6, "lost_percent": 68.0}}}
    u = measure.parse_iperf3_udp(json.dumps(udp))
    assert (u.offered_bps, u.received_bps, u.lost_percent) == (3e7, 9.5e6, 68.0)
    with pytest.raises(ValueError):
        measure.parse_iperf3_tcp(json.dumps({"error": "unable to connect"}))


def test_topology_names_fit_linux_limits() -> None:
    tb = scripted_testbed.two_hypervisors("mv1234")
    cmds = tb.setup() + tb.box_bridge("lan0", [100, 101]) + tb.teardown()
    assert all(len(ns) <= 15 for ns in tb.namespaces)
    assert len(set(tb.namespaces)) == 4
    assert any("type bond mode balance-xor xmit_hash_policy layer3+4" in c for c in cmds)
    assert sum("root fq" in c for c in cmds) == 2  # one fq per slave, none on the bond
    assert tb.owner_of(101).name == "hv2" and tb.vtep(100).ip == "192.168.77.1"
    with pytest.raises(ValueError):
        scripted_testbed.two_hypervisors("toolong7")


def test_veth_uplink_has_no_bond() -> None:
    tb = scripted_testbed.two_hypervisors("mv1", uplink="veth", with_fq=False)
    cmds = tb.setup()
    assert not any("bond" in c or " fq " in c for c in cmds)
    assert tb.uplink_devices == ("uplink",)


def test_daemon_and_wait_until(tmp_path) -> None:
    b = batch.Batch()
    b.add("start", measure.start_daemon(None, "sleep 30", "sleeper")
          + [measure.wait_until('test -s "$OUT/sleeper.pid"', timeout_s=5)])
    b.add("alive", 'kill -0 "$(cat "$OUT/sleeper.pid")"')
    # gone or a zombie: an orphan's reaper (PID 1 here and in the VM) may not reap at once
    b.add("stop", [measure.stop_daemon("sleeper"), "sleep 0.2",
                   'st=$(awk \'{print $3}\' "/proc/$(cat "$OUT/sleeper.pid")/stat" '
                   '2>/dev/null || true)',
                   '[ -z "$st" ] || [ "$st" = Z ]'])
    b.add("timeout", measure.wait_until("false", timeout_s=0.3))
    b.add("py", measure.python_startup("python3", "json"))
    proc = _run(b, tmp_path)
    res = batch.results(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [res[n].rc for n in ("start", "alive", "stop")] == [0, 0, 0], res
    assert res["timeout"].rc != 0 and "timed out" in res["timeout"].err
    assert 0 < float(res["py"].out) < 30


# moa's stack in the VM (moa_stack, stack_scenarios): what can be checked without booting -------
def test_materialize_doc_is_valid_and_links_do_not_collide(tmp_path) -> None:
    import schemas
    from moa_bus.lab.vm import moa_stack

    m = schemas.decode(schemas.Materialize, moa_stack.write_doc(tmp_path).read_bytes())
    assert [lk.id for lk in m.links] == [lk.id for lk in moa_stack.LINKS]
    assert {lk.kind for lk in m.links} == {"p2p", "lan"}
    assert m.links[1].emulation.latency == 20_000_000  # "20ms" parsed by the service's rules
    vnis = [v for lk in moa_stack.LINKS for _, v in lk.members]
    vnis += [v for _, members in moa_stack.COMPARISON_BRIDGES for _, v, _ in members]
    assert len(vnis) == len(set(vnis))
    subnets = [lk.subnet for lk in moa_stack.LINKS] + ["192.168.77", "192.168.41"]
    assert len(subnets) == len(set(subnets))
    for ep in (ep for lk in m.links for ep in lk.endpoints):
        assert ep.remote in moa_stack.HV_UNDERLAY.values()


def test_moa_testbed_leaves_fq_to_the_service() -> None:
    from moa_bus.lab.vm import moa_stack

    tb = moa_stack.testbed("mve")
    cmds = tb.setup()
    assert not any(" fq " in c for c in cmds)  # EnsureUplink's job, checked in the VM
    assert any("type bond" in c for c in cmds)
    assert tb.vtep(402).ip == "192.168.40.3" and tb.owner_of(402).name == "hv3"
    assert all(len(v.dev) <= 15 for h in tb.hypervisors for v in h.vteps)
    serve = " ".join(moa_stack.MoaStack(tb).serve())
    assert "nsenter --net=/run/netns/mvebox" in serve and "--uplink uplink" in serve
    assert "--netns" not in serve  # the service runs inside the box namespace itself


def test_batch_has_every_scenario_and_parses(tmp_path) -> None:
    from moa_bus.lab.vm import e2e, shaper_scenarios, stack_scenarios

    sc, ms = e2e._scenarios(tmp_path, shaper_scenarios.E2eConfig(),
                            stack_scenarios.MoaConfig())
    b = e2e.full_batch(sc, ms)
    names = [s.name for s in b.steps]
    assert names.index("moa-serve") < names.index("latency-edt_ref-r0")  # fq before edt_ref
    for n in ("latency-moa-r4", "capacity-moa", "bond-moa", "udp-moa", "loss-moa-1",
              "loss-moa-10", "lan-moa-2", "lan-netem-2", "update-moa", "iso-moa", "pvl-tcp-pp"):
        assert n in names
    script = tmp_path / "cmd.sh"
    script.write_text(b.script())
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # a flood that outlives its step would spoil every later one: pktgen stops on exit
    lan = next(s for s in b.steps if s.name == "lan-moa-0")
    assert any(c.startswith("trap ") and "_pgstop" in c for c in lan.commands)


def test_pktgen_writes_expand_step_variables(tmp_path) -> None:
    from moa_bus.lab.vm import traffic

    cmd = traffic.pktgen_write("nsx", "vx400", "dst_mac $_mac")
    out = subprocess.run(["bash", "-c", f"_mac=aa:bb; echo {cmd.split(' sh -c ', 1)[1]}"],
                         capture_output=True, text=True).stdout
    assert "dst_mac aa:bb" in out


def test_parse_iperf3_udp_counts() -> None:
    d = {"end": {"sum": {"packets": 1000}, "sum_sent": {"bits_per_second": 8e6},
                 "sum_received": {"bits_per_second": 7.9e6, "lost_packets": 10,
                                  "lost_percent": 1.0}},
         "server_output_json": {"end": {"streams": [{"udp": {"out_of_order": 2}}]},
                                "intervals": [{"sum": {"bits_per_second": 7.9e6,
                                                       "seconds": 1.0}}]}}
    r = measure.parse_iperf3_udp(json.dumps(d))
    assert (r.packets, r.lost_packets, r.out_of_order) == (1000, 10, 2)
    assert r.loss_ratio == pytest.approx(0.01) and r.intervals_bps == (7.9e6,)


def test_step_trap_keeps_status_and_stops_background_jobs(tmp_path) -> None:
    from moa_bus.lab.vm.traffic import KILL_JOBS

    b = batch.Batch()
    b.add("good", [KILL_JOBS, 'sleep 30 & echo $! >"$STEP.pid"', "true"])
    b.add("nojobs", [KILL_JOBS, "true"])  # `kill` without a job must not fail the step
    b.add("bad", [KILL_JOBS, 'sleep 30 & echo $! >"$STEP.pid"', "false", "echo never"])
    b.add("gone", ['for p in $(cat "$STEPS/good.pid" "$STEPS/bad.pid"); do '
                   'st=$(awk \'{print $3}\' /proc/$p/stat 2>/dev/null || true); '
                   '[ -z "$st" ] || [ "$st" = Z ] || { echo "alive $p"; exit 1; }; done'])
    proc = _run(b, tmp_path)
    res = batch.results(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert res["good"].rc == 0 and res["nojobs"].rc == 0 and res["bad"].rc == 1, res
    assert res["gone"].rc == 0, res["gone"].out


def test_batch_of_only_some_scenarios(tmp_path) -> None:
    """`moa bench e2e --only lan,update`: the set-up and the service, those scenarios, the final
    status; an unknown name is refused before anything boots."""
    from moa_bus.lab.vm import e2e, shaper_scenarios, stack_scenarios

    sc, ms = e2e._scenarios(tmp_path, shaper_scenarios.E2eConfig(),
                            stack_scenarios.MoaConfig())
    names = [s.name for s in e2e.full_batch(sc, ms, only=["lan", "update"]).steps]
    assert {"setup", "moa-serve", "moa-materialize", "lan-moa-0", "update-moa",
            "update-moa-control", "moa-final"} <= set(names)
    assert not any(n.startswith(("latency-", "capacity-", "iso-", "pvl-", "loss-"))
                   for n in names)
    with pytest.raises(ValueError, match="unknown scenarios"):
        e2e.full_batch(sc, ms, only=["lann"])


def test_schedule_judge_allows_a_late_report_and_nothing_else() -> None:
    """schedule_scenario.judge: a step's write happened between its due time and its reported
    time; a datagram whose window at the classifier (from its send to its arrival, or to 2 ms
    after its send if lost) meets that span may go either way. Any other datagram's fate is
    judged: one lost while the link was up, or one that arrived although it was sent and
    arrived while the link was down, is wrong."""
    from moa_bus.lab.vm.schedule_scenario import judge

    ms = 1_000_000
    sends = [i * ms for i in range(100)]                       # one a ms
    reports = [{"step": 0, "due_ns": 30 * ms, "applied_ns": 40 * ms, "late_ns": 10 * ms},
               {"step": 1, "due_ns": 60 * ms, "applied_ns": 61 * ms, "late_ns": 1 * ms}]
    down_from = 35                                             # really written at 35 ms
    arrivals = {i: i * ms + ms // 4 for i in range(100) if not down_from <= i < 60}
    r = judge(sends, arrivals, reports)
    # around the down write (30-40 ms): sent at 30-40 (received until 34, lost from 35);
    # around the up write (60-61 ms): lost at 58, 59 (within the guard), received at 60, 61
    assert (r["wrong"], r["ambiguous"]) == (0, 11 + 4), r
    r = judge(sends, {i: t for i, t in arrivals.items() if i != 10}, reports)  # lost while up
    assert r["wrong_first"] == [10], r
    r = judge(sends, arrivals | {50: 50 * ms + ms // 4}, reports)    # arrived while down
    assert r["wrong_first"] == [50], r
    # a sender stalled after its clock read: sent at 55 ms by its clock, arrived at 62 ms, after
    # the up write: counted, not judged; arrived at 59 ms, before the up write could be: wrong
    r = judge(sends, arrivals | {55: 62 * ms}, reports)
    assert (r["wrong"], r["ambiguous"]) == (0, 16), r
    r = judge(sends, arrivals | {55: 59 * ms}, reports)
    assert r["wrong_first"] == [55], r
    # a lost datagram whose sendto returned late (at 61.5 ms) may have met the link up: counted
    returned = list(sends)
    returned[45] = 61 * ms + ms // 2
    r = judge(sends, arrivals, reports, returned)
    assert (r["wrong"], r["ambiguous"]) == (0, 16), r
    r = judge(sends, {i: t for i, t in arrivals.items() if i != 70}, reports, returned)
    assert r["wrong_first"] == [70], r


def test_scale_rounds_are_balanced_and_a_round_needs_both_runs(tmp_path) -> None:
    """Throughput at scale (moa_bus/lab/vm/scale_scenarios.py): each round runs 1 link, many,
    many, 1 link; a side's round figure is the mean of its two runs, a round missing one of
    them has none (one run alone would unbalance it); CPU per GB is split by kind; the report
    plots the rounds."""
    from moa_bus.lab.vm import e2e, report, shaper_scenarios, stack_scenarios
    from moa_bus.lab.vm.batch import StepResult

    sc, ms = e2e._scenarios(tmp_path, shaper_scenarios.E2eConfig(),
                            stack_scenarios.MoaConfig(p2p_mode="flow"))
    scale = e2e.scale(sc, ms)
    b = batch.Batch()
    scale.scale(b)
    names = [s.name for s in b.steps]
    n = scale.cfg.links
    assert names[1:7] == ["scale-moa-1-r0", "scale-moa-fill-r0", f"scale-moa-{n}-r0",
                          f"scale-moa-{n}-r0-again", "scale-moa-unfill-r0",
                          "scale-moa-1-r0-again"]
    assert not any(x.startswith("scale-netem") for x in names)  # a flow-mode boot
    steps = tmp_path / "steps"
    steps.mkdir()
    ok = {}
    gbps = {"moa-1": (0.9, 1.0), f"moa-{n}": (0.95, 0.85)}  # (first run, again) per round
    for name, (first, again) in gbps.items():
        for r in range(scale.cfg.runs):
            for suffix, g in (("", first), ("-again", again)):
                step = f"scale-{name}-r{r}{suffix}"
                if r == 1 and suffix == "-again" and name == "moa-1":
                    continue  # this round's second 1-link run never ran
                (steps / f"{step}.cpu0").write_text("cpu 100 0 200 1000 0 0 50 0 0 0\n")
                # 4.5 s busy over the run: user 0.5, system 3, softirq 1 (USER_HZ 100)
                (steps / f"{step}.cpu1").write_text("cpu 150 0 500 1200 0 0 150 0 0 0\n")
                run = {"end": {"sum_sent": {"bytes": 1}, "sum_received": {
                    "bits_per_second": g * 1e9}}}
                ok[step] = StepResult(step, 0, 5.0, json.dumps(run), "", steps)
    out = scale.analyse(ok)
    ratios = out["flow_tput_ratio_65534_by_round"]
    assert len(ratios) == scale.cfg.runs - 1 and out["moa_1_gbps_by_round"][1] is None, out
    assert all(r == pytest.approx(0.9 / 0.95) for r in ratios), ratios
    # 1 s of softirq over runs of 0.9 and 1.0 Gbit/s for 5 s: per GB between 1/0.625 and 1/0.5625
    assert 1 / (1.0 * 5 / 8) <= out["moa_1_softirq_s_per_gb"] <= 1 / (0.9 * 5 / 8), out
    assert out[f"moa_{n}_cpu_s_per_gb"] == pytest.approx(4.5 * out[f"moa_{n}_softirq_s_per_gb"])
    sides = report.scale_sides(out)
    assert list(sides) == [f"moa, flow mode, {n:,} links"] and sides[list(sides)[0]][0] == ratios
    png = report.plot_scale(sides, 0.95, tmp_path / "scale.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
