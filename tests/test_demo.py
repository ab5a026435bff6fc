"""`moa demo` as a user runs it (a subprocess, stdout not a terminal): it measures loss on the
point-to-point link near what it configured, exits 0, and leaves nothing behind; interrupted by
SIGINT or SIGTERM half-way, it still removes everything it made."""
from __future__ import annotations

import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from moa_bus.lab.demo import story
from moa_bus.lab.host_testbed import parse_ping

pytestmark = [pytest.mark.netns, pytest.mark.nats]

ROOT = Path(__file__).resolve().parent.parent


def _prefix() -> str:
    # At most 6 characters (namespace and device names); unique among helpers running tests.
    return f"t{os.getpid() % 1000:03d}{secrets.token_hex(1)}"


def _start(prefix: str, duration: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MOA_NATS_URL": "", "MOA_HOST": "",
           "MOA_UPLINK": ""}
    env.pop("COLUMNS", None)
    return subprocess.Popen([sys.executable, "-m", "moa_bus.cli", "demo", "--duration",
                             str(duration), "--prefix", prefix], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def _lines(proc: subprocess.Popen) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            q.put(line)
        q.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return q


def _read_until(q: queue.Queue, marker: str, timeout: float, seen: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"{marker!r} not seen within {timeout} s:\n{''.join(seen)}")


def _drain(q: queue.Queue, seen: list[str]) -> str:
    while (line := q.get(timeout=60)) is not None:
        seen.append(line)
    return "".join(seen)


def leftovers(prefix: str) -> dict[str, list[str]]:
    """Everything carrying the demo's prefix that still exists on this machine."""
    namespaces = [line.split()[0] for line in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
        if line.startswith(prefix)]
    pins = [p for p in os.listdir("/sys/fs/bpf") if prefix in p]
    procs = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                       .decode(errors="replace"))
        except OSError:
            continue
        if prefix in cmdline:
            procs.append(f"{pid}: {cmdline}")
    links = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    devices = [d["ifname"] for d in links if prefix in (d.get("ifalias") or "")
               or prefix in d["ifname"]]
    tmp = [p.name for p in Path("/tmp").glob(f"moa-demo-{prefix}-*")]
    return {k: v for k, v in {"namespaces": namespaces, "pins": pins, "processes": procs,
                              "devices": devices, "tmp": tmp}.items() if v}


def _force_cleanup(prefix: str) -> None:
    """Only when the demo itself failed to clean up: keep the machine usable for other tests."""
    for ns in leftovers(prefix).get("namespaces", []):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["rm", "-rf", f"/sys/fs/bpf/moa-demo-{prefix}"], capture_output=True)


@pytest.mark.timeout(180)
def test_demo_measures_loss_and_cleans_up() -> None:
    prefix = _prefix()
    proc = _start(prefix, 5)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = leftovers(prefix)
        if left:
            _force_cleanup(prefix)
    assert proc.returncode == 0, out
    assert left == {}, (left, out)
    m = re.search(r"p2p loss: configured ([\d.]+)%, measured ([\d.]+)% of ([\d,]+) packets", out)
    assert m, out
    configured, measured, packets = float(m[1]) / 100, float(m[2]) / 100, int(m[3].replace(",", ""))
    assert configured == story.P2P_LOSS
    # ~1000 packets at p = 0.2: sigma ~ 1.3 %; 0.07 is more than 5 sigma.
    assert packets >= 300, out
    assert abs(measured - configured) <= 0.07, out
    # The round trip shows the loss too (two crossings: ~36 %); the LAN stays clean.
    after = out.split("== 7. after")[1]
    p2p = re.search(r"node1 -> node2 \(p2p\)\s+(\d+)/(\d+) answered", after)
    lan = re.search(r"node1 -> node3 \(lan\)\s+(\d+)/(\d+) answered", after)
    assert p2p and lan, out
    assert 0.15 <= 1 - int(p2p[1]) / int(p2p[2]) <= 0.6, out
    assert lan[1] == lan[2], out
    # the live view: snapshots (not a terminal) with moving counters, and the loss-only story
    assert out.count("-- snapshot") == 3
    counts = [int(x.replace(",", "")) for x in re.findall(
        r"│ p2p\s+│ p2p\s+│[^│]+│[^│]+│[^│]+│[^│]+│[^│]+│\s*([\d,]+)", out)]
    assert len(counts) == 3 and counts[0] < counts[1] < counts[2], out
    if not story.kernel_has_fq():
        assert "unsupported" in out and "need sch_fq" in out and "make test-vm" in out
    assert f"moa demo: cleaned up (namespaces {prefix}*" in out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig,marker,rc", [
    (signal.SIGINT, "== 6. live", 130),  # Ctrl-C while the live table runs
    (signal.SIGTERM, "$ moa serve", 128 + signal.SIGTERM),  # while the service starts
])
def test_demo_interrupted_cleans_up(sig: signal.Signals, marker: str, rc: int) -> None:
    prefix = _prefix()
    proc = _start(prefix, 60)
    seen: list[str] = []
    try:
        q = _lines(proc)
        _read_until(q, marker, 90, seen)
        assert leftovers(prefix).get("namespaces"), "the demo should have made its testbed by now"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        out = _drain(q, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = leftovers(prefix)
        if left:
            _force_cleanup(prefix)
    assert proc.returncode == rc, "".join(seen)
    assert left == {}, (left, "".join(seen))
    assert "cleaning up" in out and "moa demo: cleaned up" in out, out
    assert "summary" not in out  # it really stopped half-way


def test_demo_refuses_bad_arguments() -> None:
    r = subprocess.run([sys.executable, "-m", "moa_bus.cli", "demo", "--prefix", "much-too-long"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--prefix" in r.stdout


def test_parse_ping() -> None:
    text = ("--- 192.168.10.2 ping statistics ---\n"
            "100 packets transmitted, 63 received, 37% packet loss, time 1254ms\n"
            "rtt min/avg/max/mdev = 0.037/0.089/0.164/0.020 ms\n")
    r = parse_ping(text)
    assert (r.sent, r.received, r.rtt_min, r.rtt_avg, r.rtt_max) == (100, 63, 0.037, 0.089, 0.164)
    assert abs(r.loss - 0.37) < 1e-9
    none = parse_ping("3 packets transmitted, 0 received, 100% packet loss, time 2030ms\n")
    assert none.loss == 1.0 and none.rtt_avg is None and "no replies" in none.describe()
