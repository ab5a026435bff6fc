"""Issue 5's scenarios with moa's real stack (moa_stack), next to tc-netem in the same boot: the
steps each scenario adds to the batch (their results: stack_results.py).

moa's links are materialized once (one Materialize through NATS) and each scenario uses its own
link (moa_stack.LINKS), so no scenario waits for a CLI call except the runtime update, which is
what it tests. The comparison runs tc-netem on the box's plain bridges
(shaper_scenarios.ShaperScenarios and the steps below) on the same bond egress.

moa's emulation acts on both directions of a link; netem here on one (the destination's). The
links compared with netem on delay (`lat`, `iso`) therefore delay only the frames towards hv2
(moa_stack.LINKS): both sides add their delay once per round trip, and the added delay is the
RTT minus the same round's baseline over each one's unshaped path (moa's link `base`, netem's
bridge without netem). Links judged alone (`upd`, `pp`/`plan`) keep both directions: their
one-way delay is half the round trip's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import measure, moa_stack, shaping, traffic
from .batch import Batch
from .measure import in_ns
from .moa_stack import MoaStack, link
from .shaper_scenarios import E2eConfig, ShaperScenarios


@dataclass(frozen=True)
class MoaConfig:
    p2p_mode: str = "vtep"  # moa serve --p2p-mode: a boot runs in one mode
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
    long_pings: int = 5  # over the 10 s link, 0.5 s apart: all of them held by fq at once
    port2: int = 5202  # a second iperf3 server when two run at once


def pct_tag(p: float) -> str:
    """A loss rate as a step name's tag: 0.01 -> 1, 0.005 -> 0_5."""
    return f"{p * 100:g}".replace(".", "_")


@dataclass
class StackScenarios:
    """The batch steps of moa's scenarios, each next to its netem comparison where it has one."""
    sc: ShaperScenarios  # the reference scenarios (netem, edt_ref) on the same testbed
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
        # the box's VXLAN devices once the links are up: in flow mode, the LANs' only
        vteps = [f'ip -n {s.box} -d -j link show type vxlan >"$STEP.vxlan.json"']
        slaves = " ".join(self.tb.slaves)
        batch.add("moa-uplink", s.uplink_state() + [
            f"for d in {slaves}; do tc -n {s.box} qdisc show dev $d | grep -q '^qdisc fq ' || "
            f"{{ echo \"fallback: fq put on $d by the harness\"; "
            f"tc -n {s.box} qdisc replace dev $d root fq {self.tb.fq_opts}; }}; done"])
        waits = []
        for lk in moa_stack.LINKS:
            if lk.id in moa_stack.SLOW_LINKS:
                continue
            (a, _), *others = lk.members
            waits += [measure.wait_ping(self.ns(a), lk.address(b), timeout_s=30)
                      for b, _ in others]
        batch.add("moa-materialize", s.materialize(self.doc_path) + waits + vteps)

    # -- the rollback of a held LAN member's VTEP (issue 10) -----------------------------------
    def rollback(self, batch: Batch) -> None:
        """The LAN of ROLLBACK_ID, then the same without its last member: the failpoint makes
        that plan fail after the VTEP's deletion; the VTEP's qdiscs, egress filters and master
        before and after are recorded, and the second Materialize's reply."""
        s, box = self.stack, self.stack.box
        dev = f"mv{moa_stack.ROLLBACK_MEMBERS[-1][1]}"
        folder = self.doc_path.parent

        def state(tag: str) -> list[str]:
            return [f'tc -n {box} -j qdisc show dev {dev} >"$STEP.{tag}.qdisc.json"',
                    f'tc -n {box} -j filter show dev {dev} egress >"$STEP.{tag}.filter.json"',
                    f'ip -n {box} -j -d link show dev {dev} >"$STEP.{tag}.link.json"']
        batch.add("moa-rollback", [
            *s.timed_cli("rollback_materialize", "materialize",
                         str(folder / "rollback-before.json"), "--host", moa_stack.HOST),
            *state("before"),
            f'{s.cli("materialize", str(folder / "rollback-after.json"), "--host", moa_stack.HOST)}'
            ' >"$STEP.reply.json" && echo "rollback_rc 0" || echo "rollback_rc $?"',
            *state("after"),
            *s.timed_cli("rollback_dematerialize", "dematerialize", moa_stack.ROLLBACK_ID,
                         "--host", moa_stack.HOST),
        ])

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
                  + measure.link_stats(box, devs, "after")
                  + measure.qdisc_stats(box, devs, "after"))

    def udp(self, batch: Batch) -> None:
        c = self.cfg
        self._add(batch, "udp-moa", self._iperf("udp", seconds=c.udp_seconds,
                                         udp_rate_bps=c.udp_offered_bps, length=c.udp_length))

    # -- 3. loss ----------------------------------------------------------------------------
    def loss(self, batch: Batch) -> None:
        m = self.mcfg
        for p in m.loss_rates:
            tag = pct_tag(p)
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
            *traffic.pktgen_setup(hv1, x0_dev, x2_ip, traffic.mac_of(hv3, x2_dev),
                                  mbps=m.lan_x0_mbps, size=m.lan_pkt_size),
            f"ip -n {hv2} neigh replace {x2_ip} lladdr $_mac dev {x1_dev} nud permanent",
            *traffic.iperf_server(hv3, self.cfg.port, "$STEP.server.json"),
            in_ns(hv2, f"iperf3 -c {x2_ip} -p {self.cfg.port} -u -b {m.lan_x1_bps} "
                  f"-l {m.lan_length} -w 4M -t {m.lan_seconds + 3} -J --get-server-output "
                  '>"$STEP.client.json" &'),
            "_cl=$!",
            "sleep 1",
            *traffic.pktgen_start(hv1),
            f'ip -n {hv1} -s -j link show dev eth0 >"$STEP.x0before.json"',
            'date +%s.%N >"$STEP.t0"',
            f"sleep {m.lan_seconds}",
            f'ip -n {hv1} -s -j link show dev eth0 >"$STEP.x0after.json"',
            'date +%s.%N >"$STEP.t1"',
            *traffic.pktgen_stop(hv1, x0_dev),
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
            "_srv='' _pings=''", traffic.KILL_JOBS,
            *traffic.iperf_server(hv1, m.port2, "$STEP.flood.server.json"),
            in_ns(hv3, f'iperf3 -c {fast.address("hv1")} -p {m.port2} -t {m.iso_seconds} -J '
                  f'>"$STEP.flood.json" &'),
            "_flood=$!",
            "sleep 1.5",
            *traffic.ping_bg(hv1, base_ip, m.iso_pings, c.ping_interval_s, "$STEP.base"),
            *traffic.ping_bg(hv1, shaped_ip, m.iso_pings, c.ping_interval_s, "$STEP.shaped"),
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
            "_srv=''", traffic.KILL_JOBS,
            self._fabric_in_order(True),
            *traffic.iperf_server(hv2, self.cfg.port, "$STEP.server.json"),
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
            in_ns(hv1, f"ping -n -q -c 10 -i 0.02 {link('plan').address('hv2')} "
                       ">/dev/null || true"),
            *traffic.ping_bg(hv1, link("base").address("hv2"), m.pvl_pings, c.ping_interval_s,
                             "$STEP.base"),
            *traffic.ping_bg(hv1, link("pp").address("hv2"), m.pvl_pings, c.ping_interval_s,
                             "$STEP.pp"),
            *traffic.ping_bg(hv1, link("plan").address("hv2"), m.pvl_pings, c.ping_interval_s,
                             "$STEP.plan"),
            "wait $_pings",
        ])
        for lk in ("pp", "plan"):
            self._add(batch, f"pvl-tcp-{lk}", self._iperf(lk, seconds=c.tcp_seconds, omit_s=1))

    # -- 9. the horizon: a 10 s latency with a queue carries traffic (issue 11) -------------
    def long_latency(self, batch: Batch) -> None:
        """Pings over `long` (10 s each way, 10 Mbit/s, a 64 KiB queue): every one answered
        after 20 s, held by sch_fq on the slaves, whose horizon and limits are recorded."""
        m = self.mcfg
        hv1, s = self.ns("hv1"), self.stack
        # ARP gives up after 3 s (three probes a second apart) and its answer takes 20 s: each end
        # is told the other's MAC, as a static neighbour, before the first ping.
        lk = link("long")
        neigh = [
            f'ip -n {self.ns(here)} neigh replace {lk.address(there)} dev vx{lk.vni(here)} '
            f'nud permanent lladdr "$(ip -n {self.ns(there)} -br link show dev vx{lk.vni(there)} '
            "| awk '{print $3}')\""
            for here, there in (("hv1", "hv2"), ("hv2", "hv1"))]
        self._add(batch, "long-latency", [
            *neigh,
            in_ns(hv1, f'ping -n -c {m.long_pings} -i 0.5 -W 45 {link("long").address("hv2")} '
                       '>"$STEP.ping" 2>&1 || true'),
            *[f'tc -n {s.box} -s -j qdisc show dev {d} >"$STEP.{d}.qdisc.json"'
              for d in self.tb.slaves],
        ])
