"""Issue 13's impairments in the VM, next to tc-netem where netem has the feature: the jitter's
distributions (normal, pareto) seen in ping round trips, and a link taken down and up under load.

Distributions. moa's links `jn` and `jp` (20 ms, 4 ms jitter, normal / pareto, reorder on) act on
both directions, so a round trip carries two independent delays. netem is put on the box's plain
bridge `lan0` with the same delay and distribution for both directions (one netem, a filter per
hypervisor), so its round trips carry two as well. Each side's added delay is its RTT minus the
median RTT of its own unshaped path (moa's `base` link, `lan0` without netem) in the same step;
the two samples are compared by their two-sample Kolmogorov-Smirnov distance. The bound is the
0.1% critical value of that distance plus the distance between the two unshaped paths (the
bridge and the redirect pair under TCG differ a little: for independent parts the distance of
the sums is at most the sum of the parts' distances).

Link state. UDP at a constant rate over `dn` and, at the same time, over `base` (the control);
`moa set dn state down`, two seconds, `moa set dn state up`. Only `dn` loses datagrams, and it
carries traffic again after `up` (the receiver's last intervals).

Each direction. The access link `acc` is 20 Mbit/s towards hv1 (the link's capacity) and
2 Mbit/s towards hv2 (hv2's endpoint's own, docs/semantics.md "Each direction"). One TCP flow
hv2 -> hv1 (down), then one hv1 -> hv2 (up), each alone (a flow's ACKs cross the other
direction: the up flow's share the 20 Mbit/s, the down flow's take some 0.6 Mbit/s of the 2);
each one's goodput against the payload theory of its own direction's rate (1448/1538 of it, as
the capacity scenario). Then both at once, recorded (the down flow's ACKs take part of the
up direction, so the up flow's figure is not judged against its rate alone), and the status,
whose `directions` must show hv2's 2 Mbit/s.

Queue management (issue 14). `bb` and `cd` are the same link, 20 ms each way, 20 Mbit/s, a 1 MB
queue (400 ms at that rate); `cd` manages it with CoDel (default target 5 ms, interval 100 ms).
On each: pings alone (the idle RTT), then one bulk TCP flow hv1 -> hv2 with pings beside it
from its third second (the RTT under load, the queue toward hv2 included). With the FIFO the
flow fills the queue and the RTT grows by hundreds of ms; CoDel keeps the queue near its
target. Also recorded: each flow's goodput and the link's drop counters (aqm drops on `cd`).
The kernel's own CoDel in the same boot (`kcodel`): the plain bridge lan0 behind netem (20 ms,
every frame leaving the bond) whose child is an HTB with one class per hypervisor, each at the
link's rate and with a codel leaf (the kernel's defaults: target 5 ms, interval 100 ms, no ECN,
as `cd`). HTB charges the outer frame, 50 bytes of VXLAN more than the inner frame moa charges
(+ 24 B), so its classes run at 20 x 1564/1538 Mbit/s: the same rate for full-size frames.
"""
from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass

from . import measure, shaping, traffic
from .batch import Batch, StepResult
from .measure import in_ns
from .moa_stack import MoaStack, link
from .scripted_testbed import Testbed
from .shaper_scenarios import INNER_TCP_FRAME, L1_OVERHEAD, MSS

DISTRIBUTIONS = {"normal": "jn", "pareto": "jp"}   # netem's name -> moa's link (moa_stack.LINKS)


@dataclass(frozen=True)
class ImpairmentConfig:
    latency_ms: int = 20       # moa_stack.LINKS's jn and jp have these
    jitter_ms: int = 4
    pings: int = 600           # per sample: the 0.1% critical KS distance is 0.113
    ping_interval_s: float = 0.02
    udp_bps: int = 4_000_000
    udp_length: int = 1000
    udp_seconds: int = 60      # a `moa set` under TCG takes 4-17 s: ~15 s are left after `up`
    down_s: int = 2
    port2: int = 5202
    access_down_bps: int = 20_000_000  # moa_stack.LINKS's acc has these
    access_up_bps: int = 2_000_000
    access_seconds: int = 10           # TCP, each direction; the first second omitted
    aqm_seconds: int = 15              # the bulk flow; pings beside it from its third second
    aqm_pings: int = 100               # at aqm_ping_interval_s: 10 s under load
    aqm_ping_interval_s: float = 0.1


def netem_towards(tb: Testbed, vnis: tuple[int, ...], opts: str) -> list[str]:
    """One netem on the box's uplink for the frames toward the hypervisors of `vnis` (both of
    a link's for both directions, one for one direction)."""
    box, dev = tb.ns("box"), tb.uplink_dev
    return shaping.clear(tb) + [
        f"tc -n {box} qdisc add dev {dev} root handle 1: prio bands 2 "
        "priomap 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
        f"tc -n {box} qdisc add dev {dev} parent 1:1 handle 10: netem limit 100000 {opts}",
        f"tc -n {box} qdisc add dev {dev} parent 1:2 handle 20: pfifo limit 10000",
        *[f"tc -n {box} filter add dev {dev} parent 1: protocol ip prio 1 u32 "
          f"match ip dst {tb.owner_of(v).underlay}/32 flowid 1:1" for v in vnis],
    ]


KCODEL_RATE_BPS = 20_000_000 * (INNER_TCP_FRAME + 50) // (INNER_TCP_FRAME + L1_OVERHEAD)


def kernel_codel(tb: Testbed, vnis: tuple[int, int], latency_ms: int) -> list[str]:
    """netem (the delay, every frame) -> HTB, a class per hypervisor of vnis at
    KCODEL_RATE_BPS with a codel leaf; the rest unlimited."""
    box, dev = tb.ns("box"), tb.uplink_dev
    cmds = shaping.clear(tb) + [
        f"tc -n {box} qdisc add dev {dev} root handle 1: netem limit 100000 delay {latency_ms}ms",
        f"tc -n {box} qdisc add dev {dev} parent 1:1 handle 2: htb default 99",
        f"tc -n {box} class add dev {dev} parent 2: classid 2:99 htb rate 10gbit",
    ]
    for i, v in enumerate(vnis, start=1):
        cmds += [
            f"tc -n {box} class add dev {dev} parent 2: classid 2:{i} htb "
            f"rate {KCODEL_RATE_BPS}bit burst 3028 cburst 3028",
            f"tc -n {box} qdisc add dev {dev} parent 2:{i} handle {10 + i}: codel",
            f"tc -n {box} filter add dev {dev} parent 2: protocol ip prio 1 u32 "
            f"match ip dst {tb.owner_of(v).underlay}/32 flowid 2:{i}",
        ]
    return cmds


def ks_two_sample(a: list[float], b: list[float]) -> float:
    xs, ys = sorted(a), sorted(b)
    d = 0.0
    for v in xs + ys:
        d = max(d, abs(bisect.bisect_right(xs, v) / len(xs) - bisect.bisect_right(ys, v) / len(ys)))
    return d


def status_link(step: StepResult, link_id: str) -> dict | None:
    """The link `link_id` in the status a step saved ("$STEP.status.json"), None without it."""
    status = step.file(".status.json")
    if not status.exists() or not status.read_text().strip():
        return None
    for m in json.loads(status.read_text()).get("materializations", []):
        for lk in m.get("links", []):
            if lk.get("id") == link_id:
                return lk
    return None


def _codel_drops(step: StepResult) -> int | None:
    """Drops counted by the codel qdiscs in a step's saved `tc -s -j qdisc show`."""
    f = step.file(".qdisc.json")
    if not f.exists() or not f.read_text().strip():
        return None
    return sum(q.get("drops", 0) for q in json.loads(f.read_text()) if q.get("kind") == "codel")


def ks_critical(n: int, m: int) -> float:
    """The two-sample distance a test rejects at the 0.1% level."""
    return 1.95 * math.sqrt((n + m) / (n * m))


@dataclass
class ImpairmentScenarios:
    tb: Testbed
    stack: MoaStack
    netem_vnis: tuple[int, int]     # the plain bridge lan0's VNIs (hv1, hv2)
    netem_dst: str                  # hv2's address on lan0
    cfg: ImpairmentConfig = ImpairmentConfig()

    def ns(self, hv: str) -> str:
        return self.tb.ns(hv)

    def distributions(self, batch: Batch) -> None:
        c, hv1 = self.cfg, self.ns("hv1")

        def pings(dst: str, out: str) -> list[str]:
            return [in_ns(hv1, f"ping -n -q -c 10 -i {c.ping_interval_s} {dst} >/dev/null || true"),
                    in_ns(hv1, f'ping -n -c {c.pings} -i {c.ping_interval_s} -W 2 {dst} >"{out}"')]
        for dist, lk in DISTRIBUTIONS.items():
            batch.add(f"dist-{dist}", shaping.clear(self.tb) + [
                *pings(link("base").address("hv2"), "$STEP.moa_base"),
                *pings(link(lk).address("hv2"), "$STEP.moa"),
                *pings(self.netem_dst, "$STEP.netem_base"),
                *netem_towards(self.tb, self.netem_vnis,
                                 f"delay {c.latency_ms}ms {c.jitter_ms}ms distribution {dist}"),
                *pings(self.netem_dst, "$STEP.netem"),
                *shaping.clear(self.tb),
            ])

    def link_state(self, batch: Batch) -> None:
        c, s = self.cfg, self.stack
        hv1, hv2 = self.ns("hv1"), self.ns("hv2")

        def since(label: str) -> str:
            """When the `moa set` just done was acked (epoch s; the analysis puts it on the
            receiver's time line)."""
            return f'echo "{label} $(date +%s.%N)" >>"$STEP.times"'

        def client(dst: str, port: int, out: str) -> str:
            return in_ns(hv1, f"iperf3 -c {dst} -p {port} -u -b {c.udp_bps} -l {c.udp_length} "
                              f"-w 4M -t {c.udp_seconds} -J --get-server-output >\"{out}\" &")
        batch.add("link-state", shaping.clear(self.tb) + [
            "_srv=''", traffic.KILL_JOBS,
            *traffic.iperf_server(hv2, 5201, "$STEP.dn.server.json"),
            *traffic.iperf_server(hv2, c.port2, "$STEP.ctl.server.json"),
            client(link("dn").address("hv2"), 5201, "$STEP.dn.json"), "_c1=$!",
            client(link("base").address("hv2"), c.port2, "$STEP.ctl.json"), "_c2=$!",
            "sleep 4",
            *s.set_link("dn", "down", check=False, state="down"), since("down"),
            f"sleep {c.down_s}",
            *s.set_link("dn", "up", check=False, state="up"), since("up"),
            "wait $_c1", "wait $_c2", "wait $_srv",
            *s.status('$STEP.status.json'),
        ])

    def access(self, batch: Batch) -> None:
        """TCP over the access link acc, down (hv2 -> hv1, 20 Mbit/s) and up (hv1 -> hv2,
        2 Mbit/s), each alone, then both at once; the status with each direction."""
        c, acc = self.cfg, link("acc")
        hv1, hv2 = self.ns("hv1"), self.ns("hv2")
        for name, server, client, dst in (("down", hv1, hv2, acc.address("hv1")),
                                          ("up", hv2, hv1, acc.address("hv2"))):
            batch.add(f"access-{name}", shaping.clear(self.tb) + measure.iperf3(
                server, client, dst, seconds=c.access_seconds, omit_s=1))

        def flow(server: str, client: str, dst: str, port: int, out: str) -> list[str]:
            return [*traffic.iperf_server(server, port, f"{out}.server"),
                    in_ns(client, f"iperf3 -c {dst} -p {port} -t {c.access_seconds} -O 1 -J "
                                  f"--get-server-output >\"{out}\" &"), "_c=\"$_c $!\""]
        batch.add("access-both", shaping.clear(self.tb) + [
            "_srv=''", "_c=''", traffic.KILL_JOBS,
            *flow(hv1, hv2, acc.address("hv1"), 5201, "$STEP.down.json"),
            *flow(hv2, hv1, acc.address("hv2"), c.port2, "$STEP.up.json"),
            "wait $_c", "wait $_srv",
            *self.stack.status("$STEP.status.json"),
        ])

    def aqm(self, batch: Batch) -> None:
        """A bulk TCP flow hv1 -> hv2 over the FIFO `bb`, then over `cd` (CoDel); pings idle
        and under load; the status with the drop counters after both."""
        c = self.cfg
        hv1, hv2 = self.ns("hv1"), self.ns("hv2")
        for lk in ("bb", "cd", "kcodel"):
            if lk == "kcodel":
                dst = self.netem_dst
                shaper = kernel_codel(self.tb, self.netem_vnis, c.latency_ms)
                after = [f'tc -n {self.tb.ns("box")} -s -j qdisc show dev {self.tb.uplink_dev} '
                         '>"$STEP.qdisc.json"', *shaping.clear(self.tb)]
            else:
                dst, shaper = link(lk).address("hv2"), shaping.clear(self.tb)
                after = self.stack.status("$STEP.status.json")
            batch.add(f"aqm-{lk}", shaper + [
                "_srv=''", "_pings=''", traffic.KILL_JOBS,
                in_ns(hv1, f"ping -n -q -c 10 -i {c.aqm_ping_interval_s} {dst} >/dev/null || true"),
                in_ns(hv1, f'ping -n -c 30 -i {c.aqm_ping_interval_s} -W 2 {dst} >"$STEP.idle"'),
                *traffic.iperf_server(hv2, 5201, "$STEP.server.json"),
                in_ns(hv1, f"iperf3 -c {dst} -p 5201 -t {c.aqm_seconds} -O 2 -w 4M -J "
                           f'--get-server-output >"$STEP.tcp.json" &'), "_c=$!",
                "sleep 3",
                *traffic.ping_bg(hv1, dst, c.aqm_pings, c.aqm_ping_interval_s, "$STEP.loaded"),
                "wait $_c", "wait $_pings || true", "wait $_srv",
                *after,
            ])

    # -- results ----------------------------------------------------------------------------
    def analyse(self, ok: dict[str, StepResult]) -> dict:
        out: dict = {"distributions": self._distributions(ok), "link_state": self._link_state(ok),
                     "access": self._access(ok), "aqm": self._aqm(ok)}
        return out

    def _aqm(self, ok: dict[str, StepResult]) -> dict:
        out: dict = {"method": "20 ms each way, 20 Mbit/s, 1 MB queue; ping RTT alone and beside "
                               "one bulk TCP flow hv1 -> hv2 (from its 3rd second); bb: FIFO, "
                               "cd: CoDel (target 5 ms, interval 100 ms); kcodel: the kernel's "
                               "codel behind netem + HTB on lan0, same boot"}
        for lk in ("bb", "cd", "kcodel"):
            s = ok.get(f"aqm-{lk}")
            if s is None:
                continue
            r: dict = {}
            try:
                idle = measure.parse_ping(s.file(".idle").read_text())
                loaded = measure.parse_ping(s.file(".loaded").read_text())
                r.update(idle_rtt_ms=measure.median(idle), loaded_rtt_ms=measure.median(loaded),
                         loaded_rtt_p90_ms=measure.percentile(loaded, 90),
                         loaded_pings=len(loaded))
                tcp = measure.parse_iperf3_tcp(s.file(".tcp.json").read_text())
                r.update(goodput_mbps=tcp.goodput_bps / 1e6, retransmits=tcp.retransmits)
            except (OSError, ValueError, KeyError, TypeError) as e:
                r["error"] = str(e)
            if lk == "kcodel":
                r["drops"] = {"aqm": _codel_drops(s)}
            x = status_link(s, lk) if lk != "kcodel" else None
            if x is not None:
                r["drops"] = {k: sum(c["drops"].get(k, 0) for c in x["counters"])
                              for k in ("queue", "aqm")}
                r["marks"] = sum(c.get("marks", 0) for c in x["counters"])
            out[lk] = r
        return out

    def _access(self, ok: dict[str, StepResult]) -> dict:
        c = self.cfg
        out: dict = {"down_bps": c.access_down_bps, "up_bps": c.access_up_bps,
                     "method": "one TCP flow per direction, alone, goodput / (rate x 1448/1538); "
                               "then both at once (recorded)"}
        theory = {"down": c.access_down_bps * MSS / (INNER_TCP_FRAME + L1_OVERHEAD),
                  "up": c.access_up_bps * MSS / (INNER_TCP_FRAME + L1_OVERHEAD)}
        for name in ("down", "up"):
            s = ok.get(f"access-{name}")
            if s is None:
                continue
            try:
                r = measure.parse_iperf3_tcp(s.out)
            except (ValueError, KeyError, TypeError) as e:
                out[f"{name}_error"] = str(e)
                continue
            out[f"{name}_goodput_mbps"] = r.goodput_bps / 1e6
            out[f"{name}_goodput_ratio"] = r.goodput_bps / theory[name]
            out[f"{name}_retransmits"] = r.retransmits
        s = ok.get("access-both")
        if s is not None:
            for name in ("down", "up"):
                try:
                    r = measure.parse_iperf3_tcp(s.file(f".{name}.json").read_text())
                except (OSError, ValueError, KeyError, TypeError) as e:
                    out[f"both_{name}_error"] = str(e)
                    continue
                out[f"both_{name}_goodput_ratio"] = r.goodput_bps / theory[name]
            lk = status_link(s, "acc")
            if lk is not None:
                out["status_capacity"] = lk["emulation"]["capacity"]
                out["status_directions"] = {str(d["vni"]): d["emulation"]["capacity"]
                                            for d in lk.get("directions", [])}
        return out

    def _distributions(self, ok: dict[str, StepResult]) -> dict:
        c = self.cfg
        out: dict = {"latency_ms": c.latency_ms, "jitter_ms": c.jitter_ms,
                     "method": "added RTT (RTT - median RTT of the same path unshaped), both "
                               "directions shaped; two-sample Kolmogorov-Smirnov distance"}
        for dist in DISTRIBUTIONS:
            s = ok.get(f"dist-{dist}")
            if s is None:
                continue
            added, bases = {}, {}
            for side in ("moa", "netem"):
                raw = measure.parse_ping(s.file(f".{side}_base").read_text())
                base = measure.median(raw)
                bases[side] = [x - base for x in raw]
                added[side] = [x - base for x in measure.parse_ping(s.file(f".{side}").read_text())]
            n, m = len(added["moa"]), len(added["netem"])
            out[dist] = {"moa_count": n, "netem_count": m,
                         "moa_median_ms": measure.median(added["moa"]),
                         "netem_median_ms": measure.median(added["netem"]),
                         "moa_p90_ms": measure.percentile(added["moa"], 90),
                         "netem_p90_ms": measure.percentile(added["netem"], 90),
                         "ks": ks_two_sample(added["moa"], added["netem"]),
                         # how far apart the two paths are unshaped (each about its median):
                         # a sum's KS distance is at most its parts' summed, so the same
                         # shaping on both leaves them at most this far apart, plus sampling
                         "base_ks": ks_two_sample(bases["moa"], bases["netem"]),
                         "ks_critical": ks_critical(n, m) if n and m else None}
        return out

    def _link_state(self, ok: dict[str, StepResult]) -> dict:
        s = ok.get("link-state")
        if s is None:
            return {}
        out: dict = {"down_s": self.cfg.down_s}
        for name in ("dn", "ctl"):
            r = measure.parse_iperf3_udp(s.file(f".{name}.json").read_text())
            out[f"{name}_packets"] = r.packets
            out[f"{name}_lost"] = r.lost_packets
            out[f"{name}_intervals_mbps"] = [x / 1e6 for x in r.intervals_bps]
        # When each `moa set` was acked, in s since the receiver's start (its intervals' zero).
        start = json.loads(s.file(".dn.json").read_text())["server_output_json"]["start"][
            "timestamp"]["timesecs"]
        times = s.file(".times")
        out["acked_s"] = {line.split()[0]: float(line.split()[1]) - start
                          for line in times.read_text().splitlines()} if times.exists() else {}
        cli = s.file(".cli")
        out["cli"] = {line.split()[0]: int(line.split()[2])
                      for line in cli.read_text().splitlines()} if cli.exists() else {}
        lk = status_link(s, "dn")
        if lk is not None:
            out["dn_link_down_drops"] = sum(x["drops"].get("link_down", 0) for x in lk["counters"])
            out["dn_state"] = lk["emulation"].get("state", "up")
        return out
