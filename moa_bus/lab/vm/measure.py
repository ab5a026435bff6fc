"""Traffic and counters as shell snippets for a batch step, and the parsers of their output.

Commands enter only the network namespace (nsenter --net), not a new mount namespace as
`ip netns exec` does: cheaper under software emulation, and pinned BPF objects stay visible.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path


def in_ns(ns: str, cmd: str) -> str:
    return f"nsenter --net=/run/netns/{ns} {cmd}"


# processes -------------------------------------------------------------------------------------
def seqprobe_receiver(python: str, ns: str, port: int, *, also: tuple[str, ...] = ()) -> list[str]:
    """A step's first lines for seqprobe's numbered datagrams (seqprobe.py): its receiver in
    namespace `ns`, in the background, writing "$STEP.arrivals.json", killed when the step ends
    whatever it ends in (with the processes whose pids the variables `also` will hold), then a
    wait for Python's start under TCG. The step sends, then waits with RECEIVED."""
    pids = ["_rx", *also]
    return [
        " ".join(f"{v}=''" for v in pids),
        f"trap '_rc=$?; kill {' '.join('$' + v for v in pids)} 2>/dev/null || true; exit $_rc' "
        "EXIT",
        in_ns(ns, f'{python} -m moa_bus.lab.vm.seqprobe recv --port {port} '
                  '--out "$STEP.arrivals.json" --idle 3 &'), "_rx=$!",
        "sleep 4",  # Python's start under TCG
    ]


RECEIVED = "wait $_rx"  # the end of a step begun with seqprobe_receiver: all datagrams are in


def start_daemon(ns: str | None, cmd: str, name: str) -> list[str]:
    """Start `cmd` in the background (in namespace `ns`, or the VM's root namespace); its output
    goes to "$OUT/<name>.log", its pid to "$OUT/<name>.pid" (for stop_daemon, e.g. in
    Batch.finally_commands). For moa's service: start_daemon(box, "moa serve ...", "moa")."""
    run = in_ns(ns, cmd) if ns else cmd
    return [f'{run} >"$OUT/{name}.log" 2>&1 &', f'echo $! >"$OUT/{name}.pid"']


def stop_daemon(name: str) -> str:
    return f'kill "$(cat "$OUT/{name}.pid")" 2>/dev/null || true'


def wait_until(check: str, *, timeout_s: float = 30.0, poll_s: float = 0.1) -> str:
    """Poll `check` (a shell command) until it succeeds; fail the step after timeout_s."""
    n = max(1, int(timeout_s / poll_s))
    return (f"for _i in $(seq {n}); do {check} && break; sleep {poll_s}; done; "
            f"{check} || {{ echo 'timed out: {check}' >&2; false; }}")


def python_startup(python: str, modules: str = "msgspec, nats, pyroute2") -> str:
    """Seconds the host venv's Python takes to import `modules` (in the VM: 9p + TCG)."""
    return (f't0=$(date +%s.%N); {python} -c "import {modules}"; t1=$(date +%s.%N); '
            'echo "$t0 $t1" | awk \'{printf "%.2f\\n", $2 - $1}\'')


# ping ------------------------------------------------------------------------------------------
def ping(ns: str, dst: str, *, count: int, interval_s: float, warmup: int = 20) -> list[str]:
    """Per-packet RTTs on stdout; `warmup` pings first (ARP, cold code paths) are not recorded."""
    cmds = []
    if warmup:
        cmds.append(in_ns(ns, f"ping -n -q -c {warmup} -i {interval_s} {dst} >/dev/null || true"))
    cmds.append(in_ns(ns, f"ping -n -c {count} -i {interval_s} -W 2 {dst}"))
    return cmds


_RTT = re.compile(r"time=([0-9.]+) ms")


def parse_ping(text: str) -> list[float]:
    """RTTs in ms, in send order (lost probes are absent)."""
    return [float(m.group(1)) for m in _RTT.finditer(text)]


def wait_ping(ns: str, dst: str, *, timeout_s: int = 20) -> str:
    """Blocks until `dst` answers (bond slaves up, bridges forwarding), else fails the step."""
    return in_ns(ns, f"ping -n -q -c 1 -w {timeout_s} {dst} >/dev/null")


# iperf3 ----------------------------------------------------------------------------------------
def iperf3(
    server_ns: str,
    client_ns: str,
    dst: str,
    *,
    seconds: int,
    port: int = 5201,
    udp_rate_bps: int | None = None,
    length: int | None = None,
    parallel: int = 1,
    omit_s: int = 0,
    attempts: int = 1,
) -> list[str]:
    """One iperf3 run; client JSON (with the server's output) on stdout, "$STEP.server.json".

    The server is waited for by pid (a bare `wait` would hang on daemonized servers) and must
    run with -J for --get-server-output (docs/environment.md).
    """
    opts = f"-c {dst} -p {port} -t {seconds} -J --get-server-output -P {parallel}"
    if omit_s:
        opts += f" -O {omit_s}"
    if udp_rate_bps is not None:
        # -b is per stream; the offered load is split between the streams.
        # -w: a 4 MiB socket buffer (the VM raises rmem_max), so a receiver whose vCPU is
        # briefly not scheduled does not drop what the shaper let through.
        opts += f" -u -b {udp_rate_bps // parallel} -w 4M"
    if length is not None:
        opts += f" -l {length}"
    # The server gives up after the run's time + 60 s: a client that never connects (a lossy
    # link ate its first datagram) must not hang the whole batch.
    server = f"timeout {seconds + omit_s + 60} iperf3 -s -1 -J -p {port}"
    if attempts == 1:
        return [
            in_ns(server_ns, f'{server} >"$STEP.server.json" 2>&1 &'),
            "srv=$!",
            f"for i in $(seq 100); do {in_ns(server_ns, 'ss -Hltn')} | grep -q ':{port} ' && break;"
            " sleep 0.1; done",
            in_ns(client_ns, f"iperf3 {opts}"),
            "wait $srv",
        ]
    # Over a lossy link iperf3's UDP start (one datagram each way) may be lost: try again.
    return [
        f"for _try in $(seq {attempts}); do",
        "  " + in_ns(server_ns, f'{server} >"$STEP.server.json" 2>&1 &'),
        "  srv=$!",
        f"  for i in $(seq 100); do {in_ns(server_ns, 'ss -Hltn')} | grep -q ':{port} ' && break;"
        " sleep 0.1; done",
        # iperf3 3.12 may report an error in its JSON and still exit 0
        "  if " + in_ns(client_ns, f'iperf3 {opts} >"$STEP.try"')
        + ' && ! grep -q \'"error"\' "$STEP.try"; then',
        '    wait $srv || true; cat "$STEP.try"; break',
        "  fi",
        '  echo "iperf3 attempt $_try failed: $(grep -o \'"error".*\' "$STEP.try")" >&2',
        "  kill $srv 2>/dev/null || true; wait $srv || true",
        f'  [ "$_try" != {attempts} ] || exit 1',
        "done",
    ]


@dataclass(frozen=True)
class TcpRun:
    goodput_bps: float  # receiver's bytes over the measured (non-omitted) time
    bytes_sent: int
    retransmits: int
    intervals_bps: list[float]  # receiver's goodput per 1-s interval (omitted intervals dropped)

    def retransmit_ratio(self, mss: int = 1448) -> float:
        """Retransmitted segments per segment sent (segments estimated from bytes and MSS)."""
        return self.retransmits / max(1.0, self.bytes_sent / mss)


def parse_iperf3_tcp(text: str) -> TcpRun:
    d = json.loads(text)
    if "error" in d:
        raise ValueError(f"iperf3: {d['error']}")
    end = d["end"]
    return TcpRun(
        goodput_bps=float(end["sum_received"]["bits_per_second"]),
        bytes_sent=int(end["sum_sent"]["bytes"]),
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        intervals_bps=[float(i["sum"]["bits_per_second"])
                       for i in d.get("server_output_json", d).get("intervals", [])
                       if not i["sum"].get("omitted") and i["sum"]["seconds"] >= 0.5],
    )


@dataclass(frozen=True)
class UdpRun:
    offered_bps: float
    received_bps: float  # payload bits received per second (iperf3's end.sum_received)
    lost_percent: float
    packets: int = 0  # datagrams sent
    lost_packets: int = 0  # gaps in the receiver's sequence numbers (late arrivals give back)
    out_of_order: int = 0  # datagrams that arrived after a later one (the receiver's count)
    intervals_bps: tuple[float, ...] = ()  # receiver's rate per 1-s interval

    @property
    def loss_ratio(self) -> float:
        return self.lost_packets / self.packets if self.packets else math.nan


def parse_iperf3_udp(text: str) -> UdpRun:
    d = json.loads(text)
    if "error" in d:
        raise ValueError(f"iperf3: {d['error']}")
    end = d["end"]
    server = d.get("server_output_json", {})
    streams = server.get("end", {}).get("streams") or end.get("streams", [])
    return UdpRun(
        offered_bps=float(end["sum_sent"]["bits_per_second"]),
        received_bps=float(end["sum_received"]["bits_per_second"]),
        lost_percent=float(end["sum_received"].get("lost_percent", 0.0)),
        packets=int(end.get("sum", {}).get("packets", 0)),
        lost_packets=int(end["sum_received"].get("lost_packets", 0)),
        out_of_order=sum(int(s.get("udp", {}).get("out_of_order", 0)) for s in streams),
        intervals_bps=tuple(float(i["sum"]["bits_per_second"])
                            for i in server.get("intervals", [])
                            if i["sum"]["seconds"] >= 0.5),
    )


# counters --------------------------------------------------------------------------------------
def link_stats(ns: str, devs: tuple[str, ...], label: str) -> list[str]:
    """`ip -s -j link` of `devs` into "$STEP.<label>.<dev>.json"."""
    return [f'ip -n {ns} -s -j link show dev {d} >"$STEP.{label}.{d}.json"' for d in devs]


def qdisc_stats(ns: str, devs: tuple[str, ...], label: str) -> list[str]:
    return [f'tc -n {ns} -s -j qdisc show dev {d} >"$STEP.{label}.{d}.qdisc.json"' for d in devs]


def tx_bytes(path: Path) -> int:
    return int(json.loads(path.read_text())[0]["stats64"]["tx"]["bytes"])


# statistics ------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(values: list[float]) -> float:
    return percentile(values, 50.0)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def mean_plus_2se(values: list[float]) -> float:
    """Mean + 2 standard errors (sample standard deviation / sqrt(n)): the one-sided check of
    the throughput-at-scale rounds (tests/vm/test_vm_scale.py) and its plot (report.py)."""
    n = len(values)
    if n < 2:
        return math.nan
    m = mean(values)
    sd = math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1))
    return m + 2 * sd / math.sqrt(n)
