"""Numbered UDP datagrams, for what a receiver sees of duplication, reordering and slots (the VM's
netem-feature scenario, netem_features.py): iperf3 folds duplicates into its out-of-order count
and keeps no arrival times, so a datagram's fate is recorded here one by one.

    python -m moa_bus.lab.vm.seqprobe recv --port 9100 --out FILE [--idle 3]
    python -m moa_bus.lab.vm.seqprobe send --dst ADDR --port 9100 --count N --interval 0.005 \
        [--log FILE]

recv writes one JSON object: {"arrivals": [[seq, ns], ...]} (the kernel's receive time,
SO_TIMESTAMPNS, CLOCK_REALTIME ns), after `--idle`
seconds without a datagram following the first (or 30 s without any). send paces the datagrams
on the monotonic clock (a late one is sent at once, never skipped); with --log it writes
{"sends": [ns, ...], "returned": [ns, ...]}, by sequence number each datagram's CLOCK_REALTIME
time read before its sendto and after sendto returned (the clock a schedule's reports use; a
sender descheduled between the two, as the VM's software emulation does for tens of ms, shows
as a wide pair).
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import time

HEADER = struct.Struct("!Q")  # the sequence number; the rest of the datagram is padding
TIMESPEC = struct.Struct("@qq")  # SO_TIMESTAMPNS's struct timespec
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The kernel's receive time of a datagram (CLOCK_REALTIME ns), else now."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(data)
            return sec * 1_000_000_000 + nsec
    return time.time_ns()


def recv(port: int, out: str, idle_s: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    # The kernel's time of arrival: this process, scheduled late under the VM's software
    # emulation, would stamp a queue of datagrams tens of ms after they came.
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(30.0)
    arrivals: list[list[int]] = []
    try:
        while True:
            try:
                data, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(TIMESPEC.size))
            except socket.timeout:
                break
            arrivals.append([HEADER.unpack_from(data)[0], _stamp(ancillary)])
            sock.settimeout(idle_s)
    finally:
        sock.close()
    with open(out, "w") as f:
        json.dump({"arrivals": arrivals}, f)
    return 0


def send(dst: str, port: int, count: int, interval_s: float, size: int,
         log: str | None = None) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pad = bytes(max(0, size - HEADER.size))
    sends: list[int] = []  # with `log`: each datagram's CLOCK_REALTIME ns, read before sendto
    returned: list[int] = []  # ... and read after sendto returned
    t0 = time.monotonic()
    for seq in range(count):
        wait = t0 + seq * interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if log:
            sends.append(time.time_ns())
        sock.sendto(HEADER.pack(seq) + pad, (dst, port))
        if log:
            returned.append(time.time_ns())
    sock.close()
    if log:
        with open(log, "w") as f:
            json.dump({"sends": sends, "returned": returned}, f)
    return 0


def analyse(arrivals: list[list[int]], sent: int, burst_gap_ns: int = 5_000_000) -> dict:
    """What the receiver saw: distinct datagrams, duplicates (a sequence number seen before),
    early ones (a datagram that arrived before one numbered lower than it: it overtook; a
    delayed datagram never does, as all are delayed alike), and bursts (arrivals no more than
    burst_gap_ns after the previous one): their sizes and the median time from one burst's
    first arrival to the next's."""
    firsts: list[int] = []
    seen: set[int] = set()
    dups = 0
    bursts: list[int] = []
    starts: list[int] = []  # each burst's first arrival
    last = None
    for seq, ns in arrivals:
        if last is None or ns - last > burst_gap_ns:
            bursts.append(0)
            starts.append(ns)
        bursts[-1] += 1
        last = ns
        if seq in seen:
            dups += 1
        else:
            seen.add(seq)
            firsts.append(seq)
    early = 0
    low = None  # the lowest number arriving after the current one
    for seq in reversed(firsts):
        if low is not None and seq > low:
            early += 1
        low = seq if low is None else min(low, seq)
    n = len(firsts)
    spacing = sorted(b - a for a, b in zip(starts, starts[1:]))
    return {"sent": sent, "received": n, "duplicates": dups, "early": early,
            "duplicate_ratio": dups / n if n else None,
            "early_ratio": early / n if n else None,
            "bursts": len(bursts),
            "burst_mean": sum(bursts) / len(bursts) if bursts else None,
            "burst_max": max(bursts) if bursts else None,
            # all but the first and the last (a partial slot each)
            "burst_mean_inner": (sum(bursts[1:-1]) / (len(bursts) - 2)
                                 if len(bursts) > 2 else None),
            "burst_spacing_median_ms": spacing[len(spacing) // 2] / 1e6 if spacing else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seqprobe")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--idle", type=float, default=3.0)
    s = sub.add_parser("send")
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--interval", type=float, required=True)
    s.add_argument("--size", type=int, default=200)
    s.add_argument("--log", default=None, help="write each datagram's send time (realtime ns)")
    a = p.parse_args(argv)
    if a.cmd == "recv":
        return recv(a.port, a.out, a.idle)
    return send(a.dst, a.port, a.count, a.interval, a.size, a.log)


if __name__ == "__main__":
    raise SystemExit(main())
