"""Background traffic of a step, as shell: pings and iperf3 servers left running, pktgen floods,
and the trap that stops what a step started when it ends (also when it fails half-way).
"""
from __future__ import annotations

from .measure import in_ns

PKTGEN = "/proc/net/pktgen"
# Background traffic of a step that fails half-way must not outlive it (the step's status kept).
# `|| true`: errexit is on in the trap too, and `kill` without a job fails.
KILL_JOBS = "trap '_rc=$?; kill $(jobs -p) 2>/dev/null || true; exit $_rc' EXIT"


def ping_bg(ns: str, dst: str, count: int, interval_s: float, out: str) -> list[str]:
    return [in_ns(ns, f'ping -n -c {count} -i {interval_s} -W 2 {dst} >"{out}" 2>&1 &'),
            "_pings=\"$_pings $!\""]


def iperf_server(ns: str, port: int, out: str, timeout_s: int = 120) -> list[str]:
    # timeout: a client that never connects must not hang the batch (`wait $_srv`)
    return [in_ns(ns, f'timeout {timeout_s} iperf3 -s -1 -J -p {port} >"{out}" 2>&1 &'),
            "_srv=\"$_srv $!\"",
            f"for i in $(seq 100); do {in_ns(ns, 'ss -Hltn')} | grep -q ':{port} ' && break;"
            " sleep 0.1; done"]


def pktgen_write(ns: str, path: str, cmd: str) -> str:
    """Write `cmd` to /proc/net/pktgen/`path` of namespace `ns` (/proc/net is the writer's
    namespace's). Double quotes outside: `cmd` may hold shell variables of the step."""
    return in_ns(ns, f"sh -c \"echo '{cmd}' > {PKTGEN}/{path}\"")


def pktgen_setup(ns: str, dev: str, dst_ip: str, dst_mac_cmd: str, *, mbps: int,
                  size: int) -> list[str]:
    """Configure pktgen on `dev` in `ns` (thread 0) for an endless UDP flood at `mbps` (pktgen's
    `rate` is in Mbit/s); started with pktgen_start, stopped with pktgen_stop (also on the
    step's exit: a flood left running would spoil every later step). clone_skb 0: a VXLAN device
    rewrites the skb."""
    return [
        f"_pgstop() {{ {pktgen_write(ns, 'pgctrl', 'stop')}; }}",
        # keeps the step's status: a trap's own last status would replace it
        "trap '_rc=$?; _pgstop 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; "
        "exit $_rc' EXIT",
        "modprobe pktgen",
        f"_mac=$({dst_mac_cmd})",
        pktgen_write(ns, "kpktgend_0", "rem_device_all"),
        pktgen_write(ns, "kpktgend_0", f"add_device {dev}"),
        *[pktgen_write(ns, dev, c) for c in ("count 0", "clone_skb 0", f"pkt_size {size}",
                                    "delay 0", f"rate {mbps}", f"dst {dst_ip}", "dst_mac $_mac",
                                    "udp_dst_min 9", "udp_dst_max 9")],
    ]


def pktgen_start(ns: str) -> list[str]:
    # `start` blocks until the threads stop (or this writer gets a signal, which stops them).
    return [pktgen_write(ns, "pgctrl", "start") + " &", "_pg=$!"]


def pktgen_stop(ns: str, dev: str) -> list[str]:
    return [pktgen_write(ns, "pgctrl", "stop"), "wait $_pg || true",
            in_ns(ns, f'cat {PKTGEN}/{dev} >"$STEP.pktgen"'),
            pktgen_write(ns, "kpktgend_0", "rem_device_all")]


def mac_of(ns: str, dev: str) -> str:
    return f"ip -n {ns} -br link show dev {dev} | awk '{{print $3}}'"
