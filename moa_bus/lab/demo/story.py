"""The demo's steps, in the order a user sees them: the testbed, NATS and the service, the links
materialized, pings before, emulation on, the live table, pings after, the summary."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

import schemas
from moa_bus.lab.demo.live import live_table
from moa_bus.lab.demo.output import Output, indent
from moa_bus.lab.demo.pings import PAIRS, measured_loss, run_pings
from moa_bus.lab.demo.processes import DemoError, Processes
from moa_bus.lab.demo.signals import critical
from moa_bus.lab.host_testbed import UPLINK, PingResult, Testbed
from moa_bus.service.box_checks import probe_fq

P2P_LOSS = 0.2
# With sch_fq (a kernel that can hold packets): what the demo adds on top of the loss.
P2P_LATENCY = "10ms"
LAN_LATENCY = "5ms"
LAN_CAPACITY = "10mbps"

# moa_bus/lab/host_testbed.py builds the testbed (the same builder as `moa bench control` and
# the tests); here only what the demo puts on it: (node, vni, inner address) of every endpoint.
P2P_ENDPOINTS = ((1, 100, "192.168.10.1/24"), (2, 101, "192.168.10.2/24"))
LAN_ENDPOINTS = ((1, 200, "192.168.20.1/24"), (2, 201, "192.168.20.2/24"),
                 (3, 202, "192.168.20.3/24"))


def materialize_doc(tb: Testbed, mid: str) -> dict:
    """The Materialize for the testbed: no emulation yet (the "before")."""
    def endpoints(eps: tuple[tuple[int, int, str], ...]) -> list[dict]:
        return [{"vni": vni, "remote": tb.hv_addr(node)} for node, vni, _ in eps]
    return {"id": mid, "links": [
        {"id": "p2p", "tags": ["demo"], "endpoints": endpoints(P2P_ENDPOINTS)},
        {"id": "lan", "tags": ["demo"], "endpoints": endpoints(LAN_ENDPOINTS)},
    ]}


def kernel_has_fq() -> bool:
    with critical():  # the probe's namespace must not outlive an interrupt
        probed = probe_fq()
    return bool(probed and probed[0])


@dataclass
class Demo:
    duration: float = 20.0
    prefix: str = field(default_factory=lambda: "md" + secrets.token_hex(2))
    live: bool | None = None  # None: live table when stdout is a terminal
    console: Console = field(default_factory=Console)
    # filled while running
    tb: Testbed | None = None
    procs: Processes | None = None
    has_fq: bool = False

    def __post_init__(self) -> None:
        self.out = Output(self.console)

    @property
    def host(self) -> str:
        return f"demo-{self.prefix}"

    @property
    def mid(self) -> str:
        return f"demo-{self.prefix}"

    @property
    def pin_root(self) -> str:
        return f"/sys/fs/bpf/moa-demo-{self.prefix}"

    # -- steps ------------------------------------------------------------------------------------

    def build(self) -> None:
        say = self.out.say
        self.out.step(f"1. a testbed in network namespaces ({self.prefix}*)")
        self.tb = Testbed(tag=self.prefix, pin_root=self.pin_root)  # before building: cleanup knows
        self.tb.build()
        for node, vni, addr in P2P_ENDPOINTS + LAN_ENDPOINTS:
            self.tb.add_endpoint(node, vni, addr)
        say("   node1, node2, node3: VXLAN endpoints (VTEPs) of the emulated links, made by "
            "hypervisors hv1-hv3 (which keep their UDP sockets), as a testbed's are")
        say(f"   fab: the switch (a bridge); box: where moa runs, uplink `{UPLINK}` (veth to fab)")
        say("   link p2p: node1 (vni 100, 192.168.10.1) <-> node2 (vni 101, 192.168.10.2)")
        say("   link lan: node1 (vni 200, .20.1), node2 (vni 201, .20.2), node3 (vni 202, .20.3)")

    def start_service(self, procs: Processes) -> None:
        self.out.step("2. NATS and the moa service")
        nats = procs.start_nats()
        self.out.say(f"   nats-server with JetStream on {nats.url} "
                     f"(state in {procs.tmp / 'nats'}), "
                     f"admitting only the holder of the nkey in {nats.credential} (every moa "
                     "command below gets it as MOA_NATS_NKEY); `moa serve` without --nats starts "
                     "the same on 127.0.0.1:4222, with its credential in <state-dir>/local.nk")
        assert self.tb is not None
        argv = ["serve", "--host", self.host, "--uplink", UPLINK,
                "--netns", self.tb.box, "--pin-root", self.pin_root,
                "--state-dir", str(procs.tmp / "state"), "--stats-interval", "0.5"]
        if not self.has_fq:
            argv.append("--allow-loss-only")
        procs.start_serve(argv)

    def materialize(self, procs: Processes) -> None:
        assert self.tb is not None
        self.out.step("3. materialize the links (no emulation yet)")
        doc = procs.tmp / "topology.json"
        doc.write_text(json.dumps(materialize_doc(self.tb, self.mid), indent=2) + "\n")
        self.out.say(f"   {doc}:")
        self.out.say(indent(json.dumps(materialize_doc(self.tb, self.mid)), 5))
        procs.moa("req", f"moa.{self.host}.materialize", f"@{doc}")

    def emulate(self, procs: Processes) -> None:
        self.out.step("5. emulation on")
        if self.has_fq:
            procs.moa("set", "p2p", "latency", P2P_LATENCY, "loss", str(P2P_LOSS), "--host",
                      self.host)
            procs.moa("set", "lan", "latency", LAN_LATENCY, "capacity", LAN_CAPACITY, "--host",
                      self.host)
            return
        procs.moa("set", "p2p", "loss", str(P2P_LOSS), "--host", self.host)
        self.out.say("   Latency and capacity need sch_fq, which this kernel lacks, so the box "
                     "runs loss-only and refuses them, per link:")
        rc, _ = procs.moa("set", "lan", "latency", LAN_LATENCY, "--host", self.host, check=False)
        if rc == 0:
            raise DemoError("a loss-only box accepted a latency")

    async def _status(self, nc) -> schemas.StatusReply:
        msg = await nc.request(f"moa.{self.host}.status", json.dumps({"id": self.mid}).encode(),
                               timeout=10)
        return schemas.decode(schemas.StatusReply, msg.data)

    def show_pings(self, title: str, results: list[PingResult]) -> None:
        self.out.say(f"   {title}:")
        for p, r in zip(PAIRS, results):
            self.out.say(f"     {p.label:<24} {r.describe()}")

    # -- the whole thing --------------------------------------------------------------------------

    def run(self, tmp: Path) -> int:
        import nats

        say = self.out.say
        started = time.monotonic()
        self.procs = procs = Processes(tmp, self.out)
        self.has_fq = kernel_has_fq()
        say("moa demo: a testbed in network namespaces, shaped by moa through NATS")
        say(f"   kernel {os.uname().release}: "
            + ("sch_fq present: loss, latency and capacity" if self.has_fq else
               "no sch_fq: loss only (latency and capacity need sch_fq; see the end)"))
        self.build()
        assert self.tb is not None
        self.start_service(procs)
        self.materialize(procs)
        runner = asyncio.Runner()
        try:
            assert procs.nats is not None
            nc = runner.run(nats.connect(procs.nats.url, connect_timeout=5,
                                         max_reconnect_attempts=3,
                                         **procs.nats.connect_options()))
            self.out.step("4. before: pings over the links as materialized (no emulation)")
            base = run_pings(procs, self.tb, PAIRS, 20, 0.05, "before")
            self.show_pings("before", base)
            if any(r.received == 0 for r in base):
                raise DemoError("no connectivity through the box before any emulation: "
                                f"see {tmp / 'serve.log'}")
            self.emulate(procs)
            start_status = runner.run(self._status(nc))
            self.out.step(f"6. live: `moa show --watch` for {self.duration:g} s while pings run")
            live_table(self.out, procs, self.tb, self.duration, self.live,
                       lambda: runner.run(self._status(nc)))
            self.out.step("7. after: the same pings")
            after = run_pings(procs, self.tb, PAIRS, 100, 0.01, "after")
            self.show_pings("after", after)
            end_status = runner.run(self._status(nc))
            runner.run(nc.close())
        finally:
            runner.close()
        self.summary(measured_loss(start_status, end_status, "p2p"), base, after)
        say(f"   done in {time.monotonic() - started:.0f} s; cleaning up")
        return 0

    def summary(self, p2p_loss: tuple[float, int], base: list[PingResult],
                after: list[PingResult]) -> None:
        say = self.out.say
        loss, offered = p2p_loss
        self.out.step("summary")
        say(f"   p2p loss: configured {P2P_LOSS:.1%}, measured {loss:.1%} of {offered:,} packets "
            "(the link's egress counters, both directions)")
        rt = 1 - (1 - P2P_LOSS) ** 2
        say(f"   p2p ping loss {after[0].loss:.0%} (a round trip crosses the link twice: "
            f"1 - (1 - {P2P_LOSS:g})^2 = {rt:.0%} expected)")
        added = {"p2p": 2 * schemas.parse_duration(P2P_LATENCY) / 1e6,
                 "lan": 2 * schemas.parse_duration(LAN_LATENCY) / 1e6} if self.has_fq else {}
        for p, b, a in zip(PAIRS, base, after):
            if b.rtt_min is not None and a.rtt_min is not None:
                expect = (f"; +{added[p.link]:g} ms expected (latency, both directions)"
                          if p.link in added else "")
                say(f"   {p.label:<24} rtt min/avg {b.rtt_min:.3f}/{b.rtt_avg:.3f} ms before, "
                    f"{a.rtt_min:.3f}/{a.rtt_avg:.3f} ms after{expect}")
        if not self.has_fq:
            say("")
            say("   Why only loss here: moa gives each packet a departure time (EDT) and sch_fq "
                "holds it until then; that is how latency, jitter and capacity happen. This "
                "kernel has no sch_fq, so nothing can hold a packet: moa serve runs with "
                "--allow-loss-only and refuses latency and capacity per link.")
            say("   To see them: run moa on a kernel with sch_fq (Debian 12's own kernel has it), "
                "or use the VM path: `make test-vm` boots Debian's kernel under qemu "
                "(scripts/vm/) and runs the fidelity tests there, and scripts/vm/run.sh runs "
                "this demo there (README: \"What make demo shows\").")

    def cleanup(self) -> list[str]:
        """Stop the processes, delete the namespaces (and so every device), the pins. Returns
        what could not be removed (empty when all went)."""
        problems = self.procs.stop() if self.procs is not None else []
        if self.tb is not None:
            problems += self.tb.cleanup()
        return problems
