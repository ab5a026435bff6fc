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

The pieces: story.py (the steps, in order), processes.py (nats-server, `moa serve`, the CLI and
pings as a user runs them), pings.py (the traffic and the loss it measures), live.py (the live
table), output.py (what it prints), signals.py (interrupts that still clean up); here, the
entry point (`moa demo`: moa_bus/cli/demo.py) with its preflight and cleanup.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from rich.console import Console

from moa_bus.lab.demo import signals
from moa_bus.lab.demo.processes import DemoError
from moa_bus.lab.demo.story import Demo
from moa_bus.lab.host_testbed import TestbedError
from moa_bus.service.embedded_nats import NatsServerError


def preflight() -> str | None:
    """Why the demo cannot run here, or None."""
    if os.geteuid() != 0:
        return "moa demo needs root (namespaces, BPF, tc): run it as root, e.g. `sudo make demo`"
    for tool in ("ip", "tc", "nsenter", "ping"):
        if shutil.which(tool) is None:
            return (f"{tool} is missing: apt-get install iproute2 util-linux iputils-ping "
                    "(make setup)")
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
    tmp: Path | None = None
    with signals.on_stop_signals(signals.handler):
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f"moa-demo-{demo.prefix}-"))
            rc = demo.run(tmp)
        except KeyboardInterrupt:
            console.print("\nmoa demo: interrupted (SIGINT); cleaning up", markup=False)
            rc = 130
        except signals.Stopped as e:
            console.print(f"\nmoa demo: {e} received; cleaning up", markup=False)
            rc = 128 + e.signum
        except (DemoError, TestbedError, NatsServerError, subprocess.TimeoutExpired, OSError) as e:
            console.print(f"\nmoa demo failed: {e}", markup=False)
            rc = 1
        finally:
            # While cleaning up, a second Ctrl-C must not leave half the testbed behind.
            with signals.on_stop_signals(signal.SIG_IGN):
                problems = demo.cleanup()
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
    for p in problems:
        console.print(f"moa demo: cleanup: {p}", markup=False)
    if not problems:
        console.print(f"moa demo: cleaned up (namespaces {demo.prefix}*, {demo.pin_root}, "
                      "nats-server, moa serve)", markup=False)
    return rc if not problems or rc else 1
