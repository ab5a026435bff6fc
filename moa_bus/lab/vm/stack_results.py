"""The results of moa's scenarios in the VM (stack_scenarios.py: the steps), read from the
steps' output into flat `<shaper>_<metric>` figures beside the comparison's, and what moa's
service made of the box (its uplink's qdiscs and filters, the LAN VTEPs' hold, the CLI's times).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import measure, moa_stack
from .batch import StepResult
from .moa_stack import link
from .shaper_scenarios import L1_OVERHEAD, MSS, UDP_FRAME_OVERHEAD, E2eConfig, added_delay_stats
from .stack_scenarios import MoaConfig, StackScenarios, pct_tag


class StackResults:
    """moa's figures, from the steps of `scenarios` (one boot's output folder)."""

    def __init__(self, scenarios: StackScenarios) -> None:
        self.sc = scenarios.sc
        self.tb = scenarios.tb
        self.cfg: E2eConfig = scenarios.cfg
        self.mcfg: MoaConfig = scenarios.mcfg

    def analyse(self, outdir: Path, steps: dict[str, StepResult], out: dict) -> None:
        """Adds moa's figures (and the new netem comparisons) into `out`
        (ShaperScenarios.analyse's)."""
        c, m = self.cfg, self.mcfg
        ok = {n: s for n, s in steps.items() if s.rc == 0}
        errors: dict[str, str] = {}  # step -> why its output could not be read
        out["moa"] = self._service(outdir, steps)

        # 1. latency: added = RTT - round's baseline median (one direction shaped, as netem's)
        lat = out["latency"]
        rounds, base_all = [], []
        for r in range(c.latency_rounds):
            s = ok.get(f"latency-moa-r{r}")
            if s is None:
                continue
            base = measure.parse_ping(s.file(".base").read_text())
            base_all += base
            b = measure.median(base)
            rounds.append([x - b for x in measure.parse_ping(s.out)])
        lat.update(added_delay_stats("moa", rounds, c.tail_bound_ms))
        if base_all:  # RTT over moa's unshaped link `base` (redirect pair + classifier)
            lat.update(moa_baseline_median_ms=measure.median(base_all),
                       moa_baseline_p90_ms=measure.percentile(base_all, 90))
        lat["moa_method"] = ("RTT over link lat (20 ms towards hv2 only) - median RTT over link "
                             "base, same round")
        if rounds:
            out["samples"]["latency_added_ms"]["moa"] = [x for rd in rounds for x in rd]

        # 2. capacity, bond, UDP
        cap = out["capacity"]
        s = ok.get("capacity-moa")
        if s is not None and (r := _tcp(s, errors)) is not None:
            out["samples"]["goodput_mbps"]["moa"] = [x / 1e6 for x in r.intervals_bps]
            cap.update(moa_goodput_mbps=r.goodput_bps / 1e6,
                       moa_goodput_ratio=r.goodput_bps / c.tcp_theory_bps,
                       moa_retransmits=r.retransmits,
                       moa_retransmit_ratio=r.retransmit_ratio(MSS),
                       moa_fq_drops=_fq_drop_delta(s, self.tb.slaves))
        bond = out["bond"]
        s = ok.get("bond-moa")
        if s is not None and (r := _tcp(s, errors)) is not None:
            sent = [measure.tx_bytes(s.file(f".after.{d}.json"))
                    - measure.tx_bytes(s.file(f".before.{d}.json")) for d in self.tb.slaves]
            bond.update(moa_goodput_mbps=r.goodput_bps / 1e6,
                        moa_goodput_ratio=r.goodput_bps / c.tcp_theory_bps,
                        moa_retransmits=r.retransmits,
                        moa_retransmit_ratio=r.retransmit_ratio(MSS),
                        moa_slave_tx_bytes=sent,
                        moa_slave_share=[x / max(1, sum(sent)) for x in sent])
        udp = out["udp"]
        s = ok.get("udp-moa")
        if s is not None and (r := _udp(s, errors)) is not None:
            udp.update(moa_sent_mbps=r.offered_bps / 1e6, moa_received_mbps=r.received_bps / 1e6,
                       moa_received_ratio=r.received_bps / c.udp_theory_bps,
                       moa_lost_percent=r.lost_percent, moa_out_of_order=r.out_of_order)
        for name in self.sc.shapers:  # the comparison's reordering, next to moa's
            s = ok.get(f"udp-{name}")
            if s is not None and (r := _udp(s, errors)) is not None:
                udp[f"{name}_out_of_order"] = r.out_of_order

        # 3. loss
        loss: dict = {"method": "UDP datagrams hv1 -> hv2, iperf3's lost / sent; "
                                "sigma = sqrt(p (1 - p) / sent)",
                      "offered_mbps": m.loss_udp_bps / 1e6}
        for p in m.loss_rates:
            tag = pct_tag(p)
            loss[f"configured_{tag}"] = p
            for shaper in ("moa", "netem"):
                s = ok.get(f"loss-{shaper}-{tag}")
                r = _udp(s, errors) if s is not None else None
                if r is None:
                    continue
                sigma = math.sqrt(p * (1 - p) / max(1, r.packets))
                loss.update({f"{shaper}_{tag}_measured": r.loss_ratio,
                             f"{shaper}_{tag}_packets": r.packets,
                             f"{shaper}_{tag}_sigma": sigma,
                             f"{shaper}_{tag}_deviation_sigmas": (r.loss_ratio - p) / sigma})
        out["loss"] = loss

        out["lan"] = self._lan(ok, errors)
        out["isolation"] = self._isolation(ok)
        out["update"] = self._update(ok, errors)
        out["p2p_vs_lan"] = self._p2p_vs_lan(ok, errors)
        out["moa"]["rollback"] = self._rollback(steps)
        out["long_latency"] = self._long_latency(ok)
        out["moa"]["parse_errors"] = errors

    def _service(self, outdir: Path, steps: dict[str, StepResult]) -> dict:
        svc: dict = {"serve_rc": steps["moa-serve"].rc if "moa-serve" in steps else None}
        s = steps.get("moa-serve")
        if s is not None:
            for line in s.out.splitlines():
                if line.startswith("serve_ready_s "):
                    svc["serve_ready_s"] = float(line.split()[1])
        u = steps.get("moa-uplink")
        if u is not None:
            svc["uplink_rc"] = u.rc
            svc["fq_fallback"] = "fallback" in u.out
            fq = {}
            for d in self.tb.slaves:
                f = u.file(f".qdisc.{d}.json")
                q = moa_stack.parse_fq(f.read_text()) if f.exists() else None
                fq[d] = ({"limit": q.get("options", {}).get("limit"),
                          "flow_limit": q.get("options", {}).get("flow_limit")} if q else None)
            svc["fq_on_slaves"] = fq
            bond = u.file(f".qdisc.{self.tb.uplink_dev}.json")
            svc["bond_qdiscs"] = sorted({q.get("kind") for q in _json(bond)})
            filters = {}
            for w in ("egress", "ingress"):
                filters[w] = sorted({f.get("options", {}).get("bpf_name", "")
                                     for f in _json(u.file(f".filter.{w}.json"))} - {""})
            svc["uplink_filters"] = filters
        mat = steps.get("moa-materialize")
        if mat is not None:
            svc["materialize_rc"] = mat.rc
        cli: dict[str, float] = {}
        for s in steps.values():
            f = s.file(".cli")
            if f.exists():
                for line in f.read_text().split("\n"):
                    if line.strip():
                        label, secs, rc = line.split()
                        cli[label] = float(secs)
                        cli[f"{label}_rc"] = int(rc)
        svc["cli_s"] = cli
        fin = steps.get("moa-final")
        if fin is not None and fin.rc == 0:
            svc["final_fq_drops"] = {d: _fq_drops(fin.file(f".final.{d}.qdisc.json"))
                                     for d in self.tb.slaves}
            st = _json(fin.file(".status.json"))
            svc["status_ok"] = isinstance(st, dict) and bool(st.get("materializations"))
            svc["datapath"] = st.get("datapath") if isinstance(st, dict) else None
            # How the LAN's VTEPs hold frames (HoldAtPort): their root qdisc and egress filter.
            hold = {}
            for _, vni in link("lan").members:
                d = f"mv{vni}"
                roots = [q.get("kind") for q in _json(fin.file(f".vtep.{d}.json"))
                         if q.get("root")]
                names = sorted({f.get("options", {}).get("bpf_name", "")
                                for f in _json(fin.file(f".vtepf.{d}.json"))} - {""})
                hold[d] = {"root_qdisc": roots[0] if roots else None, "egress_filters": names}
            svc["lan_vtep_hold"] = hold
        return svc

    @staticmethod
    def _rollback(steps: dict[str, StepResult]) -> dict | None:
        """The held VTEP before the failed plan and after its rollback: root qdisc (kind and
        options), egress filters, master; and the failed Materialize's reply."""
        s = steps.get("moa-rollback")
        if s is None:
            return None

        def state(tag: str) -> dict:
            roots = [{"kind": q.get("kind"), "options": q.get("options")}
                     for q in _json(s.file(f".{tag}.qdisc.json")) if q.get("root")]
            names = sorted({f.get("options", {}).get("bpf_name", "")
                            for f in _json(s.file(f".{tag}.filter.json"))} - {""})
            links = _json(s.file(f".{tag}.link.json"))
            d = links[0] if isinstance(links, list) and links else {}
            return {"root": roots, "egress_filters": names, "master": d.get("master"),
                    "address": d.get("address"), "up": "UP" in d.get("flags", [])}
        rc = next((int(line.split()[1]) for line in s.out.splitlines()
                   if line.startswith("rollback_rc ")), None)
        return {"step_rc": s.rc, "reply_rc": rc, "reply": _json(s.file(".reply.json")),
                "before": state("before"), "after": state("after")}

    def _lan(self, ok: dict[str, StepResult], errors: dict) -> dict:
        m = self.mcfg
        frame = m.lan_length + UDP_FRAME_OVERHEAD + L1_OVERHEAD  # what the link charges x1
        cap = m.lan_capacity_bps
        out: dict = {"configured_mbps": cap / 1e6, "x1_offered_mbps": m.lan_x1_bps / 1e6,
                     "x0_configured_mbps": m.lan_x0_mbps,
                     "expected_share": 1 / 3,
                     "expected_x1_mbps": cap / 3 * m.lan_length / frame / 1e6,
                     "method": "x1 share = x1's received frames (charged bytes) per second "
                               "during the flood / C; median of the runs"}
        for shaper in ("moa", "netem"):
            shares, x0 = [], []
            for k in range(m.lan_runs):
                s = ok.get(f"lan-{shaper}-{k}")
                r = _udp(s, errors) if s is not None else None
                if r is None:
                    continue
                during = r.intervals_bps[2:m.lan_seconds + 1]  # within the flood
                if not during:
                    errors[s.name] = f"no receiver intervals within the flood: {r.intervals_bps}"
                    continue
                shares.append(measure.mean(list(during)) * frame / m.lan_length / cap)
                x0.append(_x0_mbps(s))
            if not shares:
                continue
            out[f"{shaper}_x1_shares"] = shares
            out[f"{shaper}_x0_sent_mbps"] = x0
            out[f"{shaper}_x1_mbps"] = measure.median(shares) * cap * m.lan_length / frame / 1e6
            key = "x1_share" if shaper == "moa" else "netem_x1_share"
            out[key] = measure.median(shares)
        x0s = out.get("moa_x0_sent_mbps") or out.get("netem_x0_sent_mbps")
        if x0s:
            # One shared tail-drop queue: x1 keeps what it offers in proportion to the total.
            f = measure.median(x0s) * 1e6
            out["single_queue_share"] = m.lan_x1_bps / (f + m.lan_x1_bps)
        return out

    def _isolation(self, ok: dict[str, StepResult]) -> dict:
        out: dict = {"configured_ms": self.cfg.latency_ms, "configured_mbps": 10.0,
                     "method": "pings at once to the shaped link and to an unshaped baseline "
                               "while hv3 -> hv1 TCP runs as fast as it goes; both shape the "
                               "frames towards hv2 only"}
        for shaper in ("moa", "netem"):
            s = ok.get(f"iso-{shaper}")
            if s is None:
                continue
            base = measure.parse_ping(s.file(".base").read_text())
            shaped = measure.parse_ping(s.file(".shaped").read_text())
            b = measure.median(base)
            added = [x - b for x in shaped]
            st = added_delay_stats(shaper, [added])
            out.update({k: v for k, v in st.items() if "round" not in k})
            out[f"{shaper}_loaded_baseline_ms"] = b
            flood = _json(s.file(".flood.json"))
            try:
                out[f"{shaper}_neighbour_mbps"] = (
                    flood["end"]["sum_received"]["bits_per_second"] / 1e6)
            except (KeyError, TypeError):
                out[f"{shaper}_neighbour_mbps"] = None
        return out

    def _update(self, ok: dict[str, StepResult], errors: dict) -> dict:
        m = self.mcfg
        out: dict = {"before": {"latency_ms": 20, "capacity_mbps": 10},
                     "changes": [{"latency_ms": 5, "capacity_mbps": 8},
                                 {"latency_ms": 30, "capacity_mbps": 20}],
                     "offered_mbps": m.upd_udp_bps / 1e6}
        for shaper in ("moa", "moa_control", "netem"):
            s = ok.get(f"update-{shaper.replace('_', '-')}")
            r = _udp(s, errors, s.file(".client.json").read_text()) if s is not None else None
            if r is None:
                continue
            out.update({f"{shaper}_packets": r.packets, f"{shaper}_lost": r.lost_packets,
                        f"{shaper}_out_of_order": r.out_of_order,
                        f"{shaper}_received_mbps": r.received_bps / 1e6})
            times = {}
            for line in s.file(".times").read_text().splitlines():
                name, what, t = line.split()
                times[f"{name}_{what}_s"] = float(t)
            out[f"{shaper}_change_times"] = times
            out[f"{shaper}_changes_within_run"] = all(
                t < m.upd_seconds for t in times.values()) and len(times) == 4
            rtts = measure.parse_ping(s.out)
            out[f"{shaper}_after_rtt_median_ms"] = measure.median(rtts)
        return out

    def _long_latency(self, ok: dict[str, StepResult]) -> dict:
        s = ok.get("long-latency")
        if s is None:
            return {}
        return _long_latency_of(s, self.tb.slaves, self.mcfg.long_pings)

    def _p2p_vs_lan(self, ok: dict[str, StepResult], errors: dict) -> dict:
        c = self.cfg
        out: dict = {"configured_ms": c.latency_ms, "configured_mbps": c.capacity_bps / 1e6,
                     "theory_goodput_mbps": c.tcp_theory_bps / 1e6}
        s = ok.get("pvl-latency")
        if s is not None:
            b = measure.median(measure.parse_ping(s.file(".base").read_text()))
            for lk in ("pp", "plan"):
                added = [(x - b) / 2 for x in measure.parse_ping(s.file(f".{lk}").read_text())]
                out[f"{lk}_added_median_ms"] = measure.median(added)
                out[f"{lk}_added_p90_ms"] = measure.percentile(added, 90)
                out[f"{lk}_count"] = len(added)
        for lk in ("pp", "plan"):
            s = ok.get(f"pvl-tcp-{lk}")
            if s is not None and (r := _tcp(s, errors)) is not None:
                out[f"{lk}_goodput_mbps"] = r.goodput_bps / 1e6
                out[f"{lk}_goodput_ratio"] = r.goodput_bps / c.tcp_theory_bps
                out[f"{lk}_retransmit_ratio"] = r.retransmit_ratio(MSS)
        return out


def _long_latency_of(s: StepResult, slaves: tuple[str, ...], pings: int) -> dict:
    """RTTs over the 10 s link and the slaves' sch_fq as they were then (options, drops)."""
    rtts = measure.parse_ping(s.file(".ping").read_text()) if s.file(".ping").exists() else []
    fq = {}
    for d in slaves:
        q = moa_stack.parse_fq(s.file(f".{d}.qdisc.json").read_text()) if s.file(
            f".{d}.qdisc.json").exists() else None
        fq[d] = ({"options": q.get("options", {}), "drops": q.get("drops")} if q else None)
    return {"sent": pings, "rtts_ms": rtts, "fq": fq}


def _udp(s: StepResult, errors: dict, text: str | None = None) -> measure.UdpRun | None:
    try:
        return measure.parse_iperf3_udp(s.out if text is None else text)
    except (ValueError, KeyError, TypeError) as e:
        errors[s.name] = str(e)
        return None


def _tcp(s: StepResult, errors: dict) -> measure.TcpRun | None:
    try:
        return measure.parse_iperf3_tcp(s.out)
    except (ValueError, KeyError, TypeError) as e:
        errors[s.name] = str(e)
        return None


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def _fq_drops(path: Path) -> int | None:
    """Packets fq dropped on its own (flow limit, horizon, queue full) since it was made."""
    for q in _json(path):
        if q.get("kind") == "fq":
            return int(q.get("drops", 0))
    return None


def _fq_drop_delta(s: StepResult, devs: tuple[str, ...]) -> int | None:
    try:
        return sum(_fq_drops(s.file(f".after.{d}.qdisc.json"))
                   - _fq_drops(s.file(f".before.{d}.qdisc.json")) for d in devs)
    except TypeError:
        return None


def _x0_mbps(s: StepResult) -> float | None:
    """x0's underlay transmit rate while x1 ran (its hypervisor's eth0 counters, outer frames)."""
    try:
        b0 = measure.tx_bytes(s.file(".x0before.json"))
        b1 = measure.tx_bytes(s.file(".x0after.json"))
        seconds = float(s.file(".t1").read_text()) - float(s.file(".t0").read_text())
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return (b1 - b0) * 8 / seconds / 1e6
