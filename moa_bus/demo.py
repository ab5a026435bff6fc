"""`moa demo`: a small testbed in network namespaces, shaped by a real moa service.

    node1 ──vni 100── p2p ──vni 101── node2        three "nodes" (namespaces with VTEPs), one
    node1 ──vni 200──┐                              point-to-point link and one LAN, all through
    node2 ──vni 201──┼── lan (bridge)               the box namespace, where `moa serve` runs
    node3 ──vni 202──┘                              (its uplink is a veth to the fabric bridge)

What runs is what a user runs: nats-server (the binary `moa serve` embeds) on a free loopback
port with its JetStream store in a temporary directory, `moa serve` as a subprocess, and the CLI
(`moa req`, `moa set`) for every request. The live table is `moa show`'s table, fed by
moa.<host>.status. On a kernel without sch_fq the service runs loss-only and the demo shows loss
(measured on the link's own counters and by ping); with sch_fq it adds latency and capacity.

Everything the demo makes carries one prefix (namespaces `<prefix>box` ..., pins in
/sys/fs/bpf/moa-demo-<prefix>, materialization `demo-<prefix>`) and is removed on the way out:
normal exit, error, Ctrl-C (SIGINT), SIGTERM or SIGHUP.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

import schemas
from moa_bus import cmd_show
from moa_bus.natsserver import NatsServer, NatsServerError, free_port
from moa_bus.testbed import (
    UPLINK, PingResult, Testbed, TestbedError, parse_ping, ping_cmd,
)

P2P_LOSS = 0.2
# With sch_fq (a kernel that can hold packets): what the demo adds on top of the loss.
P2P_LATENCY = "10ms"
LAN_LATENCY = "5ms"
LAN_CAPACITY = "10mbps"
PING_RATE = 100  # pings per second per pair while the live table runs (root may go below 0.2 s)


class DemoError(RuntimeError):
    """A step failed; the message says which and why."""


class Stopped(BaseException):
    """SIGTERM/SIGHUP arrived: unwind like Ctrl-C does, so every cleanup step runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ------------------------------------------------------------------------------------- testbed
# moa_bus/testbed.py builds it (the same builder as `moa bench control` and the tests); here only
# what the demo puts on it: (node, vni, inner address) of every link endpoint.

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


# ------------------------------------------------------------------------------------- the demo

@dataclass
class Pair:
    """Two nodes that ping each other over one link."""
    link: str
    src: int  # node number
    dst: int
    dst_ip: str

    @property
    def label(self) -> str:
        return f"node{self.src} -> node{self.dst} ({self.link})"


PAIRS = (Pair("p2p", 1, 2, "192.168.10.2"), Pair("lan", 1, 3, "192.168.20.3"),
         Pair("lan", 2, 3, "192.168.20.3"))


@dataclass
class Demo:
    duration: float = 20.0
    prefix: str = field(default_factory=lambda: "md" + secrets.token_hex(2))
    live: bool | None = None  # None: live table when stdout is a terminal
    console: Console = field(default_factory=Console)
    # filled while running
    tb: Testbed | None = None
    tmp: Path | None = None
    nats: NatsServer | None = None
    serve: subprocess.Popen | None = None
    children: list[subprocess.Popen] = field(default_factory=list)
    has_fq: bool = False

    @property
    def host(self) -> str:
        return f"demo-{self.prefix}"

    @property
    def mid(self) -> str:
        return f"demo-{self.prefix}"

    @property
    def pin_root(self) -> str:
        return f"/sys/fs/bpf/moa-demo-{self.prefix}"

    # -- output -----------------------------------------------------------------------------------

    def say(self, text: str = "", style: str | None = None) -> None:
        self.console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)

    def step(self, text: str) -> None:
        self.console.print()
        self.console.print(Text(f"== {text}", style="bold cyan"), soft_wrap=True)

    # -- running commands -------------------------------------------------------------------------

    def moa(self, *argv: str, check: bool = True, show: bool = True, timeout: float = 120) -> tuple[int, str]:
        """Run the moa CLI like a user would, printing the command line and its output."""
        shown = ["moa", *argv, "--nats", self.nats.url]
        if show:
            self.say("$ " + " ".join(shlex.quote(a) for a in shown), style="bold")
        env = {**os.environ, "MOA_NATS_URL": "", "MOA_HOST": "", "MOA_UPLINK": ""}
        with critical():
            p = subprocess.Popen([sys.executable, "-m", "moa_bus.cli", *argv, "--nats", self.nats.url],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            self.children.append(p)
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise DemoError(f"`moa {' '.join(argv)}` took more than {timeout:g} s") from None
        out = (stdout + stderr).strip()
        if show and out:
            self.say(_indent(out))
        if check and p.returncode != 0:
            raise DemoError(f"`moa {' '.join(argv)}` exited {p.returncode}: {out}")
        return p.returncode, stdout

    def popen(self, cmd: list[str], out: Path) -> subprocess.Popen:
        # A session of its own: Ctrl-C in the terminal reaches the demo only, which then stops
        # its children in order (pings, the service, nats-server).
        with critical(), open(out, "wb") as f:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            self.children.append(p)
        return p

    def pings(self, pairs: tuple[Pair, ...], count: int, interval: float, tag: str) -> list[PingResult]:
        procs = [(self.popen(ping_cmd(self.tb.node(p.src), p.dst_ip, count, interval),
                             self.tmp / f"ping-{tag}-{i}.txt"), i) for i, p in enumerate(pairs)]
        results = []
        for proc, i in procs:
            try:
                proc.wait(timeout=count * interval + 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            results.append(parse_ping((self.tmp / f"ping-{tag}-{i}.txt").read_text(errors="replace")))
        return results

    # -- steps ------------------------------------------------------------------------------------

    def probe_fq(self) -> bool:
        from moa_bus.cmd_doctor import ScratchNetns

        with critical(), ScratchNetns() as ns:  # its namespace must not outlive an interrupt
            ok, _ = ns.try_("tc", "qdisc", "add", "dev", "lo", "root", "fq")
        return ok

    def build(self) -> None:
        self.step(f"1. a testbed in network namespaces ({self.prefix}*)")
        self.tb = Testbed(tag=self.prefix, pin_root=self.pin_root)  # before building: cleanup knows
        self.tb.build()
        for node, vni, addr in P2P_ENDPOINTS + LAN_ENDPOINTS:
            self.tb.add_endpoint(node, vni, addr)
        self.say("   node1, node2, node3: VXLAN endpoints (VTEPs) of the emulated links, made by "
                 "hypervisors hv1-hv3 (which keep their UDP sockets), as a testbed's are")
        self.say(f"   fab: the switch (a bridge); box: where moa runs, uplink `{UPLINK}` "
                 "(veth to fab)")
        self.say("   link p2p: node1 (vni 100, 192.168.10.1) <-> node2 (vni 101, 192.168.10.2)")
        self.say("   link lan: node1 (vni 200, .20.1), node2 (vni 201, .20.2), node3 (vni 202, .20.3)")

    def start_service(self) -> None:
        self.step("2. NATS and the moa service")
        for attempt in range(3):
            self.nats = NatsServer(port=free_port(), state_dir=self.tmp / "nats")
            try:
                with critical():  # its process must be recorded before a signal can unwind
                    self.nats.start()
                break
            except NatsServerError:
                if attempt == 2:
                    raise
        self.say(f"   nats-server with JetStream on {self.nats.url} (state in {self.tmp / 'nats'}); "
                 "`moa serve` without --nats starts the same on 127.0.0.1:4222")
        argv = ["serve", "--host", self.host, "--uplink", UPLINK,
                "--netns", self.tb.box, "--pin-root", self.pin_root,
                "--state-dir", str(self.tmp / "state"), "--stats-interval", "0.5"]
        if not self.has_fq:
            argv.append("--allow-loss-only")
        shown = ["moa", *argv, "--nats", self.nats.url]
        self.say("$ " + " ".join(shown) + " &", style="bold")
        env = {**os.environ, "MOA_NATS_URL": "", "MOA_HOST": "", "MOA_UPLINK": "",
               "PYTHONUNBUFFERED": "1"}
        log = self.tmp / "serve.log"
        with critical(), open(log, "wb") as f:
            self.serve = subprocess.Popen([sys.executable, "-m", "moa_bus.cli", *argv, "--nats", self.nats.url],
                                          stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while b"serving host" not in log.read_bytes():
            if self.serve.poll() is not None:
                raise DemoError(f"moa serve exited with {self.serve.returncode}:\n"
                                f"{_indent(log.read_text(errors='replace'))}")
            if time.monotonic() > deadline:
                raise DemoError(f"moa serve did not come up within 60 s:\n"
                                f"{_indent(log.read_text(errors='replace'))}")
            time.sleep(0.1)
        self.say(_indent(log.read_text(errors="replace").strip()))

    def materialize(self) -> None:
        self.step("3. materialize the links (no emulation yet)")
        doc = self.tmp / "topology.json"
        doc.write_text(json.dumps(materialize_doc(self.tb, self.mid), indent=2) + "\n")
        self.say(f"   {doc}:")
        self.say(_indent(json.dumps(materialize_doc(self.tb, self.mid)), 5))
        self.moa("req", f"moa.{self.host}.materialize", f"@{doc}")

    def emulate(self) -> None:
        self.step("5. emulation on")
        if self.has_fq:
            self.moa("set", "p2p", "latency", P2P_LATENCY, "loss", str(P2P_LOSS), "--host", self.host)
            self.moa("set", "lan", "latency", LAN_LATENCY, "capacity", LAN_CAPACITY, "--host", self.host)
            return
        self.moa("set", "p2p", "loss", str(P2P_LOSS), "--host", self.host)
        self.say("   Latency and capacity need sch_fq, which this kernel lacks, so the box runs "
                 "loss-only and refuses them, per link:")
        rc, _ = self.moa("set", "lan", "latency", LAN_LATENCY, "--host", self.host, check=False)
        if rc == 0:
            raise DemoError("a loss-only box accepted a latency")

    async def _status(self, nc) -> schemas.StatusReply:
        msg = await nc.request(f"moa.{self.host}.status", json.dumps({"id": self.mid}).encode(),
                               timeout=10)
        return schemas.decode(schemas.StatusReply, msg.data)

    def live_table(self, runner: asyncio.Runner, nc) -> schemas.StatusReply:
        """`moa show --watch`'s table while pings run; a few snapshots when not on a terminal."""
        live = self.console.is_terminal if self.live is None else self.live
        procs = [self.popen(ping_cmd(self.tb.node(p.src), p.dst_ip, None, 1 / PING_RATE,
                                     deadline=self.duration + 1),
                            self.tmp / f"ping-live-{i}.txt") for i, p in enumerate(PAIRS)]
        note = Text(f"pings running: {', '.join(p.label for p in PAIRS)}, {PING_RATE}/s each",
                    style="dim")
        status = runner.run(self._status(nc))
        prev, t_prev = cmd_show.totals(status), time.monotonic()
        end = t_prev + self.duration
        if live:
            width = self.console.width
            with Live(fit_table(cmd_show.build_table(status), width), console=self.console,
                      refresh_per_second=4) as view:
                while time.monotonic() < end:
                    time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                    status = runner.run(self._status(nc))
                    t = time.monotonic()
                    view.update(Group(fit_table(cmd_show.build_table(status, prev, t - t_prev), width),
                                      note))
                    prev, t_prev = cmd_show.totals(status), t
        else:
            snapshots = 3
            start = t_prev
            self.say(note.plain)
            for k in range(1, snapshots + 1):
                time.sleep(max(0.0, start + self.duration * k / snapshots - time.monotonic()))
                status = runner.run(self._status(nc))
                t = time.monotonic()
                self.say(f"-- snapshot {k}/{snapshots}, t={t - start:.1f} s")
                self.console.print(fit_table(cmd_show.build_table(status, prev, t - t_prev),
                                             self.console.width))
                prev, t_prev = cmd_show.totals(status), t
        for p in procs:
            if p.poll() is None:
                p.terminate()
            p.wait(timeout=10)
        return runner.run(self._status(nc))

    def measured_loss(self, before: schemas.StatusReply, after: schemas.StatusReply,
                      link: str) -> tuple[float, int]:
        """(dropped / offered, offered) on `link`'s egress stages between two statuses: the
        link's own counters (packets counts what passed, drops what it dropped)."""
        def sums(st: schemas.StatusReply) -> tuple[int, int]:
            passed = dropped = 0
            for m in st.materializations:
                for lk in m.links:
                    if lk.id == link:
                        for c in lk.counters:
                            if c.stage == "egress":
                                passed += c.packets
                                dropped += c.drops.get("loss", 0)
            return passed, dropped
        p0, d0 = sums(before)
        p1, d1 = sums(after)
        offered = (p1 - p0) + (d1 - d0)
        return ((d1 - d0) / offered if offered else 0.0), offered

    def show_pings(self, title: str, results: list[PingResult]) -> None:
        self.say(f"   {title}:")
        for p, r in zip(PAIRS, results):
            self.say(f"     {p.label:<24} {r.describe()}")

    # -- the whole thing --------------------------------------------------------------------------

    def run(self) -> int:
        import nats

        started = time.monotonic()
        self.has_fq = self.probe_fq()
        self.say("moa demo: a testbed in network namespaces, shaped by moa through NATS")
        self.say(f"   kernel {os.uname().release}: "
                 + ("sch_fq present: loss, latency and capacity" if self.has_fq else
                    "no sch_fq: loss only (latency and capacity need sch_fq; see the end)"))
        self.build()
        self.start_service()
        self.materialize()
        runner = asyncio.Runner()
        try:
            nc = runner.run(nats.connect(self.nats.url, connect_timeout=5, max_reconnect_attempts=3))
            self.step("4. before: pings over the links as materialized (no emulation)")
            base = self.pings(PAIRS, 20, 0.05, "before")
            self.show_pings("before", base)
            if any(r.received == 0 for r in base):
                raise DemoError("no connectivity through the box before any emulation: "
                                f"see {self.tmp / 'serve.log'}")
            self.emulate()
            start_status = runner.run(self._status(nc))
            self.step(f"6. live: `moa show --watch` for {self.duration:g} s while pings run")
            self.live_table(runner, nc)
            self.step("7. after: the same pings")
            after = self.pings(PAIRS, 100, 0.01, "after")
            self.show_pings("after", after)
            end_status = runner.run(self._status(nc))
            runner.run(nc.close())
        finally:
            runner.close()
        loss, offered = self.measured_loss(start_status, end_status, "p2p")
        self.step("summary")
        self.say(f"   p2p loss: configured {P2P_LOSS:.1%}, measured {loss:.1%} of {offered:,} packets "
                 "(the link's egress counters, both directions)")
        rt = 1 - (1 - P2P_LOSS) ** 2
        self.say(f"   p2p ping loss {after[0].loss:.0%} (a round trip crosses the link twice: "
                 f"1 - (1 - {P2P_LOSS:g})^2 = {rt:.0%} expected)")
        added = {"p2p": 2 * schemas.parse_duration(P2P_LATENCY) / 1e6,
                 "lan": 2 * schemas.parse_duration(LAN_LATENCY) / 1e6} if self.has_fq else {}
        for p, b, a in zip(PAIRS, base, after):
            if b.rtt_min is not None and a.rtt_min is not None:
                expect = (f"; +{added[p.link]:g} ms expected (latency, both directions)"
                          if p.link in added else "")
                self.say(f"   {p.label:<24} rtt min/avg {b.rtt_min:.3f}/{b.rtt_avg:.3f} ms before, "
                         f"{a.rtt_min:.3f}/{a.rtt_avg:.3f} ms after{expect}")
        if not self.has_fq:
            self.say("")
            self.say("   Why only loss here: moa gives each packet a departure time (EDT) and sch_fq "
                     "holds it until then; that is how latency, jitter and capacity happen. This "
                     "kernel has no sch_fq, so nothing can hold a packet: moa serve runs with "
                     "--allow-loss-only and refuses latency and capacity per link.")
            self.say("   To see them: run moa on a kernel with sch_fq (Debian 12's own kernel has it), "
                     "or use the VM path: `make test-vm` boots Debian's kernel under qemu "
                     "(scripts/vm/) and runs the fidelity tests there, and scripts/vm/run.sh runs "
                     "this demo there (README: \"What make demo shows\").")
        self.say(f"   done in {time.monotonic() - started:.0f} s; cleaning up")
        return 0

    # -- cleanup ----------------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Stop children, delete namespaces (and so every device), pins, the temporary
        directory. Returns what could not be removed (empty when all went)."""
        problems: list[str] = []
        for p in self.children:
            if p.poll() is None:
                p.kill()
            p.wait()
        if self.serve is not None and self.serve.poll() is None:
            self.serve.terminate()  # SIGTERM: moa serve drains and exits 0
            try:
                self.serve.wait(timeout=15)
            except subprocess.TimeoutExpired:
                problems.append("moa serve ignored SIGTERM for 15 s: killed")
                self.serve.kill()
                self.serve.wait()
        if self.nats is not None:
            self.nats.stop()
        if self.tb is not None:
            problems += self.tb.cleanup()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


def fit_table(table: Table, width: int) -> Table:
    """`moa show`'s table, narrowed for a terminal under 140 columns: the demo has a single
    materialization and names its links after their kind, so those columns go first."""
    if width >= 140:
        return table
    for name in ("materialization", "kind", "jitter", "bytes"):
        for i, col in enumerate(table.columns):
            if col.header == name:
                del table.columns[i]  # a column holds its own cells: the rows shrink with it
                break
    table.box = box.SIMPLE_HEAD
    return table


def _indent(text: str, n: int = 3) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


class _Signals:
    """SIGINT raises KeyboardInterrupt and SIGTERM/SIGHUP raise Stopped, so every cleanup step
    runs; inside `critical()` (starting a process and recording it) the signal waits until the
    section ends, so no child can be started without cleanup knowing about it."""

    depth = 0
    pending: int | None = None

    @classmethod
    def handler(cls, signum: int, _frame: object) -> None:
        if cls.depth:
            cls.pending = signum
            return
        cls.raise_for(signum)

    @staticmethod
    def raise_for(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)


@contextmanager
def critical() -> Iterator[None]:
    _Signals.depth += 1
    try:
        yield
    finally:
        _Signals.depth -= 1
        if not _Signals.depth and _Signals.pending is not None:
            signum, _Signals.pending = _Signals.pending, None
            _Signals.raise_for(signum)


@contextmanager
def _on_stop_signals(handler: Any) -> Iterator[None]:
    """`handler` for SIGINT, SIGTERM and SIGHUP while inside; the previous ones after."""
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def preflight() -> str | None:
    """Why the demo cannot run here, or None."""
    if os.geteuid() != 0:
        return "moa demo needs root (namespaces, BPF, tc): run it as root, e.g. `sudo make demo`"
    for tool in ("ip", "tc", "nsenter", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install iproute2 util-linux iputils-ping (make setup)"
    with open("/proc/mounts") as f:
        if not any(line.split()[1] == "/sys/fs/bpf" for line in f):
            return "/sys/fs/bpf is not mounted: mount -t bpf bpf /sys/fs/bpf (make setup does it)"
    return None


def main(duration: float, prefix: str | None = None, live: bool | None = None,
         console: Console | None = None) -> int:
    console = console or Console()
    why = preflight()
    if why:
        console.print(f"moa demo: {why}", markup=False)
        return 1
    demo = Demo(duration=duration, live=live, console=console,
                **({"prefix": prefix} if prefix else {}))
    rc = 1
    with _on_stop_signals(_Signals.handler):
        try:
            demo.tmp = Path(tempfile.mkdtemp(prefix=f"moa-demo-{demo.prefix}-"))
            rc = demo.run()
        except KeyboardInterrupt:
            console.print("\nmoa demo: interrupted (SIGINT); cleaning up", markup=False)
            rc = 130
        except Stopped as e:
            console.print(f"\nmoa demo: {e} received; cleaning up", markup=False)
            rc = 128 + e.signum
        except (DemoError, TestbedError, NatsServerError, subprocess.TimeoutExpired, OSError) as e:
            console.print(f"\nmoa demo failed: {e}", markup=False)
            rc = 1
        finally:
            # While cleaning up, a second Ctrl-C must not leave half the testbed behind.
            with _on_stop_signals(signal.SIG_IGN):
                problems = demo.cleanup()
    for p in problems:
        console.print(f"moa demo: cleanup: {p}", markup=False)
    if not problems:
        console.print(f"moa demo: cleaned up (namespaces {demo.prefix}*, {demo.pin_root}, "
                      "nats-server, moa serve)", markup=False)
    return rc if not problems or rc else 1
