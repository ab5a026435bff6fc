"""Numbered UDP datagrams, for what a receiver sees of duplication, reordering and slots (the VM's
netem-feature scenario, netem_features.py): iperf3 folds duplicates into its out-of-order count
and keeps no arrival times, so a datagram's fate is recorded here one by one.

    python -m moa_bus.lab.vm.seqprobe recv --port 9100 --out FILE [--idle 3]
    python -m moa_bus.lab.vm.seqprobe send --dst ADDR --port 9100 --count N --interval 0.005

recv writes one JSON object: {"arrivals": [[seq, ns], ...]} (CLOCK_MONOTONIC ns), after `--idle`
seconds without a datagram following the first (or 30 s without any). send paces the datagrams
on the monotonic clock (a late one is sent at once, never skipped).
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import time

HEADER = struct.Struct("!Q")  # the sequence number; the rest of the datagram is padding


def recv(port: int, out: str, idle_s: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(30.0)
    arrivals: list[list[int]] = []
    try:
        while True:
            try:
                data = sock.recv(2048)
            except socket.timeout:
                break
            arrivals.append([HEADER.unpack_from(data)[0], time.monotonic_ns()])
            sock.settimeout(idle_s)
    finally:
        sock.close()
    with open(out, "w") as f:
        json.dump({"arrivals": arrivals}, f)
    return 0


def send(dst: str, port: int, count: int, interval_s: float, size: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pad = bytes(max(0, size - HEADER.size))
    t0 = time.monotonic()
    for seq in range(count):
        wait = t0 + seq * interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sock.sendto(HEADER.pack(seq) + pad, (dst, port))
    sock.close()
    return 0


def analyse(arrivals: list[list[int]], sent: int, burst_gap_ns: int = 5_000_000) -> dict:
    """What the receiver saw: distinct datagrams, duplicates (a sequence number seen before),
    early ones (a datagram that arrived before one numbered lower than it: it overtook; a
    delayed datagram never does, as all are delayed alike), and bursts (arrivals no more than
    burst_gap_ns after the previous one)."""
    firsts: list[int] = []
    seen: set[int] = set()
    dups = 0
    bursts: list[int] = []
    last = None
    for seq, ns in arrivals:
        if last is None or ns - last > burst_gap_ns:
            bursts.append(0)
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
    return {"sent": sent, "received": n, "duplicates": dups, "early": early,
            "duplicate_ratio": dups / n if n else None,
            "early_ratio": early / n if n else None,
            "bursts": len(bursts),
            "burst_mean": sum(bursts) / len(bursts) if bursts else None,
            "burst_max": max(bursts) if bursts else None}


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
    a = p.parse_args(argv)
    if a.cmd == "recv":
        return recv(a.port, a.out, a.idle)
    return send(a.dst, a.port, a.count, a.interval, a.size)


if __name__ == "__main__":
    raise SystemExit(main())
