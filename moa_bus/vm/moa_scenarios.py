"""Issue 5's scenarios with moa's real stack (moa_stack), next to tc-netem in the same boot.

moa's links are materialized once (one Materialize through NATS) and each scenario uses its own
link (moa_stack.LINKS), so no scenario waits for a CLI call except the runtime update, which is
what it tests. The comparison runs tc-netem on the box's plain bridges (scenarios.Scenarios and
the steps below) on the same bond egress.

moa's emulation acts on both directions of a link; netem here on one (the destination's). So a
round trip over a moa link carries the configured latency twice: moa's one-way added delay is
half the round trip's (RTT minus the same round's baseline over moa's unshaped link `base`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import measure, moa_stack, shaping
from .batch import Batch, StepResult
from .measure import in_ns
from .moa_stack import MoaStack, link
from .scenarios import (
    L1_OVERHEAD, MSS, UDP_FRAME_OVERHEAD, E2eConfig, Scenarios,
    added_delay_stats,
)

PKTGEN = "/proc/net/pktgen"
# Background traffic of a step that fails half-way must not outlive it (the step's status kept).
# `|| true`: errexit is on in the trap too, and `kill` without a job fails.
_KILL_JOBS = "trap '_rc=$?; kill $(jobs -p) 2>/dev/null || true; exit $_rc' EXIT"


@dataclass(frozen=True)
class MoaConfig:
    loss_rates: tuple[float, ...] = (0.01, 0.1)
    loss_udp_bps: int = 8_000_000  # below every limit: only the link's loss drops
    loss_length: int = 1000
    loss_seconds: int = 6  # ~6000 datagrams: 4 sigma of 1 % is 0.5 %, of 10 % 1.5 %
    lan_capacity_bps: int = 10_000_000
    lan_x1_bps: int = 5_000_000
    lan_x0_mbps: int = 100  # pktgen's flood, 10 x C
    lan_pkt_size: int = 1400
    lan_runs: int = 3
    lan_seconds: int = 6
    lan_length: int = 1400  # x1's datagrams
    iso_pings: int = 150
    iso_seconds: int = 8
    upd_udp_bps: int = 4_000_000  # below both capacities the link has during the update
    upd_length: int = 1000
    upd_seconds: int = 20  # long enough for two `moa set` under TCG (~4-10 s each)
    pvl_pings: int = 100
    port2: int = 5202  # a second iperf3 server when two run at once


def _ping_bg(ns: str, dst: str, count: int, interval_s: float, out: str) -> list[str]:
    return [in_ns(ns, f'ping -n -c {count} -i {interval_s} -W 2 {dst} >"{out}" 2>&1 &'),
            "_pings=\"$_pings $!\""]


def _iperf_server(ns: str, port: int, out: str, timeout_s: int = 120) -> list[str]:
    # timeout: a client that never connects must not hang the batch (`wait $_srv`)
    return [in_ns(ns, f'timeout {timeout_s} iperf3 -s -1 -J -p {port} >"{out}" 2>&1 &'),
            "_srv=\"$_srv $!\"",
            f"for i in $(seq 100); do {in_ns(ns, 'ss -Hltn')} | grep -q ':{port} ' && break;"
            " sleep 0.1; done"]


def _pg(ns: str, path: str, cmd: str) -> str:
    """Write `cmd` to /proc/net/pktgen/`path` of namespace `ns` (/proc/net is the writer's
    namespace's). Double quotes outside: `cmd` may hold shell variables of the step."""
    return in_ns(ns, f"sh -c \"echo '{cmd}' > {PKTGEN}/{path}\"")


def _pktgen(ns: str, dev: str, dst_ip: str, dst_mac_cmd: str, *, mbps: int, size: int) -> list[str]:
    """Configure pktgen on `dev` in `ns` (thread 0) for an endless UDP flood at `mbps` (pktgen's
    `rate` is in Mbit/s); started with _pktgen_start, stopped with _pktgen_stop (also on the
    step's exit: a flood left running would spoil every later step). clone_skb 0: a VXLAN device
    rewrites the skb."""
    return [
        f"_pgstop() {{ {_pg(ns, 'pgctrl', 'stop')}; }}",
        # keeps the step's status: a trap's own last status would replace it
        "trap '_rc=$?; _pgstop 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; "
        "exit $_rc' EXIT",
        "modprobe pktgen",
        f"_mac=$({dst_mac_cmd})",
        _pg(ns, "kpktgend_0", "rem_device_all"),
        _pg(ns, "kpktgend_0", f"add_device {dev}"),
        *[_pg(ns, dev, c) for c in ("count 0", "clone_skb 0", f"pkt_size {size}", "delay 0",
                                    f"rate {mbps}", f"dst {dst_ip}", "dst_mac $_mac",
                                    "udp_dst_min 9", "udp_dst_max 9")],
    ]


def _pktgen_start(ns: str) -> list[str]:
    # `start` blocks until the threads stop (or this writer gets a signal, which stops them).
    return [_pg(ns, "pgctrl", "start") + " &", "_pg=$!"]


def _pktgen_stop(ns: str, dev: str) -> list[str]:
    return [_pg(ns, "pgctrl", "stop"), "wait $_pg || true",
            in_ns(ns, f'cat {PKTGEN}/{dev} >"$STEP.pktgen"'),
            _pg(ns, "kpktgend_0", "rem_device_all")]


def _mac(ns: str, dev: str) -> str:
    return f"ip -n {ns} -br link show dev {dev} | awk '{{print $3}}'"


@dataclass
class MoaScenarios:
    sc: Scenarios  # the reference scenarios (netem, edt_ref) on the same testbed
    mcfg: MoaConfig
    stack: MoaStack
    doc_path: Path

    @property
    def tb(self):
        return self.sc.tb

    @property
    def cfg(self) -> E2eConfig:
        return self.sc.cfg

    def ns(self, hv: str) -> str:
        return self.tb.ns(hv)

    def _add(self, batch: Batch, name: str, cmds: list[str]) -> None:
        """A moa step; it first removes any comparison shaper a failed step may have left."""
        batch.add(name, shaping.clear(self.tb) + cmds)

    # -- service --------------------------------------------------------------------------------
    def start(self, batch: Batch) -> None:
        """moa serve, what it made of the uplink, the Materialize, a ping through every link.
        If the service did not put fq on the slaves, put it there (recorded) so that the
        comparison shapers still run; the tests fail on it."""
        s = self.stack
        batch.add("moa-serve", s.serve())
        slaves = " ".join(self.tb.slaves)
        batch.add("moa-uplink", s.uplink_state() + [
            f"for d in {slaves}; do tc -n {s.box} qdisc show dev $d | grep -q '^qdisc fq ' || "
            f"{{ echo \"fallback: fq put on $d by the harness\"; "
            f"tc -n {s.box} qdisc replace dev $d root fq {self.tb.fq_opts}; }}; done"])
        waits = []
        for lk in moa_stack.LINKS:
            (a, _), *others = lk.members
            waits += [measure.wait_ping(self.ns(a), lk.address(b), timeout_s=30)
                      for b, _ in others]
        batch.add("moa-materialize", s.materialize(self.doc_path) + waits)

    def finish(self, batch: Batch) -> None:
        s = self.stack
        lan_vteps = [f"mv{vni}" for _, vni in link("lan").members]
        batch.add("moa-final", s.status('$STEP.status.json')
                  + measure.qdisc_stats(s.box, self.tb.slaves, "final")
                  + [f'tc -n {s.box} -j qdisc show dev {d} >"$STEP.vtep.{d}.json"'
                     for d in lan_vteps]
                  + [f'tc -n {s.box} -j filter show dev {d} egress >"$STEP.vtepf.{d}.json"'
                     for d in lan_vteps])
        batch.finally_commands.insert(0, s.stop())

    # -- 1. latency (a hook in every reference round) ----------------------------------------
    def latency_round(self, batch: Batch, r: int) -> None:
        c = self.cfg
        hv1, base, lat = self.ns("hv1"), link("base").address("hv2"), link("lat").address("hv2")
        warm = 20 if r == 0 else 5
        self._add(batch, f"latency-moa-r{r}", [
            in_ns(hv1, f"ping -n -q -c {warm} -i {c.ping_interval_s} {base} >/dev/null || true"),
            in_ns(hv1, f'ping -n -c {c.pings} -i {c.ping_interval_s} -W 2 {base} >"$STEP.base"'),
            *measure.ping(hv1, lat, count=c.pings, interval_s=c.ping_interval_s, warmup=warm),
        ])

    # -- 2. capacity, UDP, 8. bond ----------------------------------------------------------
    def _iperf(self, lk: str, **kw) -> list[str]:
        lkk = link(lk)
        return measure.iperf3(self.ns("hv2"), self.ns("hv1"), lkk.address("hv2"),
                              port=self.cfg.port, **kw)

    def capacity(self, batch: Batch) -> None:
        c, box, devs = self.cfg, self.stack.box, self.tb.slaves
        self._add(batch, "capacity-moa", measure.qdisc_stats(box, devs, "before")
                  + self._iperf("cap", seconds=c.tcp_seconds, omit_s=1)
                  + measure.qdisc_stats(box, devs, "after"))
        self._add(batch, "bond-moa", measure.link_stats(box, devs, "before")
                  + self._iperf("cap", seconds=c.tcp_seconds, omit_s=1, parallel=c.bond_flows)
                  + measure.link_stats(box, devs, "after") + measure.qdisc_stats(box, devs, "after"))

    def udp(self, batch: Batch) -> None:
        c = self.cfg
        self._add(batch, "udp-moa", self._iperf("udp", seconds=c.udp_seconds,
                                         udp_rate_bps=c.udp_offered_bps, length=c.udp_length))

    # -- 3. loss ----------------------------------------------------------------------------
    def loss(self, batch: Batch) -> None:
        m = self.mcfg
        for p in m.loss_rates:
            tag = _pct_tag(p)
            udp = dict(seconds=m.loss_seconds, udp_rate_bps=m.loss_udp_bps, length=m.loss_length,
                       attempts=5)  # P(iperf3's UDP start lost) ~ 19 % at 10 % per direction
            batch.add(f"loss-netem-{tag}", shaping.netem(self.tb, self.sc.vni, loss_pct=p * 100)
                      + measure.iperf3(self.ns("hv2"), self.ns("hv1"), self.sc.dst_ip,
                                       port=self.cfg.port, **udp)
                      + shaping.clear(self.tb))
            self._add(batch, f"loss-moa-{tag}", self._iperf(f"loss{tag}", **udp))

    # -- 4. the LAN case ---------------------------------------------------------------------
    def _lan_run(self, x0_dev: str, x1_dev: str, x2_dev: str, x2_ip: str) -> list[str]:
        """x0 (hv1) floods x2 (hv3) with pktgen while x1 (hv2) sends UDP at 0.5 C to x2.

        x1's iperf3 connects before the flood starts and ends after it stopped: with one shared
        queue (netem) nothing of x1's gets through the flood, not even its ARP or iperf3's
        handshake. x1's rate is the receiver's 1-s intervals that lie within the flood
        (intervals 2 .. lan_seconds); x1 holds a permanent neighbour entry for x2."""
        m = self.mcfg
        hv1, hv2, hv3 = self.ns("hv1"), self.ns("hv2"), self.ns("hv3")
        return [
            "_srv=''", "set -x",  # the trace (in .err) says which command failed
            *_pktgen(hv1, x0_dev, x2_ip, _mac(hv3, x2_dev), mbps=m.lan_x0_mbps,
                     size=m.lan_pkt_size),
            f"ip -n {hv2} neigh replace {x2_ip} lladdr $_mac dev {x1_dev} nud permanent",
            *_iperf_server(hv3, self.cfg.port, "$STEP.server.json"),
            in_ns(hv2, f"iperf3 -c {x2_ip} -p {self.cfg.port} -u -b {m.lan_x1_bps} "
                  f"-l {m.lan_length} -w 4M -t {m.lan_seconds + 3} -J --get-server-output "
                  '>"$STEP.client.json" &'),
            "_cl=$!",
            "sleep 1",
            *_pktgen_start(hv1),
            f'ip -n {hv1} -s -j link show dev eth0 >"$STEP.x0before.json"',
            'date +%s.%N >"$STEP.t0"',
            f"sleep {m.lan_seconds}",
            f'ip -n {hv1} -s -j link show dev eth0 >"$STEP.x0after.json"',
            'date +%s.%N >"$STEP.t1"',
            *_pktgen_stop(hv1, x0_dev),
            "wait $_cl",
            "wait $_srv || true",  # its output is read; a lossy run may end it non-zero
            'cat "$STEP.client.json"',
        ]

    def lan(self, batch: Batch) -> None:
        m = self.mcfg
        lk = link("lan")
        x2_ip_moa = lk.address("hv3")
        for k in range(m.lan_runs):
            self._add(batch, f"lan-moa-{k}", self._lan_run(
                f"vx{lk.vni('hv1')}", f"vx{lk.vni('hv2')}", f"vx{lk.vni('hv3')}", x2_ip_moa))
            batch.add(f"lan-netem-{k}",
                      shaping.netem(self.tb, 412, rate_bps=m.lan_capacity_bps, queue_ms=50)
                      + self._lan_run("vx410", "vx411", "vx412", "192.168.41.3")
                      + shaping.clear(self.tb))

    # -- 5. isolation ------------------------------------------------------------------------
    def _iso_run(self, shaped_ip: str, base_ip: str) -> list[str]:
        """hv3 -> hv1 TCP as fast as it goes over moa's unshaped link `fast`, while hv1 pings
        the shaped destination and a baseline destination at once."""
        m, c = self.mcfg, self.cfg
        hv1, hv3 = self.ns("hv1"), self.ns("hv3")
        fast = link("fast")
        return [
            "_srv='' _pings=''", _KILL_JOBS,
            *_iperf_server(hv1, m.port2, "$STEP.flood.server.json"),
            in_ns(hv3, f'iperf3 -c {fast.address("hv1")} -p {m.port2} -t {m.iso_seconds} -J '
                  f'>"$STEP.flood.json" &'),
            "_flood=$!",
            "sleep 1.5",
            *_ping_bg(hv1, base_ip, m.iso_pings, c.ping_interval_s, "$STEP.base"),
            *_ping_bg(hv1, shaped_ip, m.iso_pings, c.ping_interval_s, "$STEP.shaped"),
            "wait $_pings",
            "wait $_flood",
            "wait $_srv",
        ]

    def isolation(self, batch: Batch) -> None:
        iso, base = link("iso"), link("base")
        self._add(batch, "iso-moa", self._iso_run(iso.address("hv2"), base.address("hv2")))
        # netem shapes everything towards hv2: its baseline goes to hv3 over the plain LAN bridge
        batch.add("iso-netem", shaping.netem(self.tb, self.sc.vni, delay_ms=self.cfg.latency_ms,
                                             rate_bps=10_000_000)
                  + self._iso_run(self.sc.dst_ip, "192.168.41.3") + shaping.clear(self.tb))

    # -- 6. runtime update -------------------------------------------------------------------
    def _upd_run(self, dst_ip: str, changes: list[list[str]]) -> list[str]:
        m = self.mcfg
        hv1, hv2 = self.ns("hv1"), self.ns("hv2")
        cmds = [
            "_srv=''", _KILL_JOBS,
            self._fabric_in_order(True),
            *_iperf_server(hv2, self.cfg.port, "$STEP.server.json"),
            in_ns(hv1, f'iperf3 -c {dst_ip} -p {self.cfg.port} -u -b {m.upd_udp_bps} '
                  f'-l {m.upd_length} -w 4M -t {m.upd_seconds} -J --get-server-output '
                  f'>"$STEP.client.json" &'),
            "_cl=$!", "_tu=$(date +%s.%N)", "sleep 3",
        ]
        for i, change in enumerate(changes):
            cmds += [f'echo "change{i} start $(echo "$_tu $(date +%s.%N)" | '
                     "awk '{printf \"%.2f\", $2 - $1}')\" >>\"$STEP.times\"",
                     *change,
                     f'echo "change{i} end $(echo "$_tu $(date +%s.%N)" | '
                     "awk '{printf \"%.2f\", $2 - $1}')\" >>\"$STEP.times\"",
                     "sleep 2"]
        cmds += ["wait $_cl", "wait $_srv",
                 *measure.ping(hv1, dst_ip, count=30, interval_s=0.05, warmup=3),
                 self._fabric_in_order(False)]
        return cmds

    def _fabric_in_order(self, on: bool) -> str:
        """RPS on the fabric's ports from the box and from the hypervisors, for the update runs.

        A veth delivers into the backlog of the CPU that transmits, and fq on the box's slaves
        transmits a flow from whichever CPU dequeues (its timer's, or the one enqueueing): with
        two CPUs the fabric then processed one flow on both and 7-17 datagrams of 10,000
        arrived out of order, as many with a `moa set` on another link (the control) and with
        netem. A NIC has one ring per flow; RPS, steering each flow to one CPU, gives the
        fabric that order back (measured: 0 reordered for moa, the control and netem)."""
        devs = " ".join([f"lag{i}" for i in range(len(self.tb.slaves))]
                        + [f"p{h.name}" for h in self.tb.hypervisors])
        mask = "3" if on else "0"
        return (f"ip netns exec {self.tb.ns('fab')} sh -c 'for d in {devs}; do "
                f"echo {mask} > /sys/class/net/$d/queues/rx-0/rps_cpus; done'")

    def update(self, batch: Batch) -> None:
        s, upd = self.stack, link("upd")
        self._add(batch, "update-moa", self._upd_run(upd.address("hv2"), [
            s.set_link("upd", "set1", check=False, latency="5ms", capacity="8mbps"),
            s.set_link("upd", "set2", check=False, latency="30ms", capacity="20mbps"),
        ]))
        # Control: the same traffic and the same two `moa set` (CLI, service, map writes), but
        # on another link (loss1, done with): what the box does around a change without
        # changing this link.
        self._add(batch, "update-moa-control", self._upd_run(upd.address("hv2"), [
            s.set_link("loss1", "ctl1", check=False, latency="5ms", capacity="8mbps"),
            s.set_link("loss1", "ctl2", check=False, latency="30ms", capacity="20mbps"),
        ]))
        box, dev = s.box, self.tb.uplink_dev

        def change(delay_ms: int, rate_bps: int) -> list[str]:
            limit = max(10, int(rate_bps * 0.1 / 8 / 1538))
            return [f"tc -n {box} qdisc change dev {dev} parent 1:1 handle 10: netem "
                    f"limit {limit} delay {delay_ms}ms rate {rate_bps}bit -26"]
        batch.add("update-netem",
                  shaping.netem(self.tb, self.sc.vni, delay_ms=20, rate_bps=10_000_000)
                  + self._upd_run(self.sc.dst_ip, [change(5, 8_000_000), change(30, 20_000_000)])
                  + shaping.clear(self.tb))

    # -- 7. P2P vs a LAN's pair -------------------------------------------------------------
    def p2p_vs_lan(self, batch: Batch) -> None:
        m, c = self.mcfg, self.cfg
        hv1 = self.ns("hv1")
        self._add(batch, "pvl-latency", [
            "_pings=''",
            in_ns(hv1, f"ping -n -q -c 10 -i 0.02 {link('pp').address('hv2')} >/dev/null || true"),
            in_ns(hv1, f"ping -n -q -c 10 -i 0.02 {link('plan').address('hv2')} >/dev/null || true"),
            *_ping_bg(hv1, link("base").address("hv2"), m.pvl_pings, c.ping_interval_s, "$STEP.base"),
            *_ping_bg(hv1, link("pp").address("hv2"), m.pvl_pings, c.ping_interval_s, "$STEP.pp"),
            *_ping_bg(hv1, link("plan").address("hv2"), m.pvl_pings, c.ping_interval_s,
                      "$STEP.plan"),
            "wait $_pings",
        ])
        for lk in ("pp", "plan"):
            self._add(batch, f"pvl-tcp-{lk}", self._iperf(lk, seconds=c.tcp_seconds, omit_s=1))

    # -- analysis ----------------------------------------------------------------------------
    def analyse(self, outdir: Path, steps: dict[str, StepResult], out: dict) -> None:
        """Adds moa's figures (and the new netem comparisons) into `out` (Scenarios.analyse's)."""
        c, m = self.cfg, self.mcfg
        ok = {n: s for n, s in steps.items() if s.rc == 0}
        errors: dict[str, str] = {}  # step -> why its output could not be read
        out["moa"] = self._service(outdir, steps)

        # 1. latency: one-way = (RTT - round's baseline median) / 2 (both directions shaped)
        lat = out["latency"]
        rounds, base_all = [], []
        for r in range(c.latency_rounds):
            s = ok.get(f"latency-moa-r{r}")
            if s is None:
                continue
            base = measure.parse_ping(s.file(".base").read_text())
            base_all += base
            b = measure.median(base)
            rounds.append([(x - b) / 2 for x in measure.parse_ping(s.out)])
        lat.update(added_delay_stats("moa", rounds))
        if base_all:  # RTT over moa's unshaped link `base` (redirect pair + classifier)
            lat.update(moa_baseline_median_ms=measure.median(base_all),
                       moa_baseline_p90_ms=measure.percentile(base_all, 90))
        lat["moa_method"] = "(RTT over link lat - median RTT over link base) / 2, same round"
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
            tag = _pct_tag(p)
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
                               "while hv3 -> hv1 TCP runs as fast as it goes (moa: one-way = "
                               "difference / 2)"}
        for shaper, div in (("moa", 2.0), ("netem", 1.0)):
            s = ok.get(f"iso-{shaper}")
            if s is None:
                continue
            base = measure.parse_ping(s.file(".base").read_text())
            shaped = measure.parse_ping(s.file(".shaped").read_text())
            b = measure.median(base)
            added = [(x - b) / div for x in shaped]
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


def _pct_tag(p: float) -> str:
    return f"{p * 100:g}".replace(".", "_")


def _json(path: Path):
    import json

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
