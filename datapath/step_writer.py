"""Scheduled steps' map writes at their times, from a process of its own (docs/architecture.md,
"Scheduled changes").

Why a process: a thread of the service needs the interpreter's lock to run at all, and the
event loop (or the netlink worker) can hold it for as long as the machine lets that thread
wait for a CPU: on a busy box a thread woken at its time still ran tens of ms late. This
process holds nothing else: it runs SCHED_FIFO when it may (moa serve runs as root), is handed
each step well before its time (the service keeps it ahead of the clock), waits for it (a
sleep to a little before it, then a spin on CLOCK_MONOTONIC) and writes the `moa_links`
entries, whole (`Map.update_batch`: each element replaced under RCU), through the map's pin.

The protocol, on its stdin/stdout, every record a HEAD: `A` (group, tag, due CLOCK_MONOTONIC
ns, key bytes, value bytes; the bytes follow) adds a write; `R` says the map is open; `C` (group)
drops the group's writes not yet done and is answered `C` (group) once they are dropped, so a
write of that group answered after it never happens; every write is answered `D` (group, tag,
status 0 when written, CLOCK_MONOTONIC ns when the write returned).

    python -m datapath.step_writer /sys/fs/bpf/moa/moa_links
"""
from __future__ import annotations

import heapq
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable

# kind, group, tag, due or done ns, key bytes or status, value bytes
HEAD = struct.Struct("=cIQqII")
# How long before a write the process is awake and spinning: the kernel may take ms to run
# even a real-time process that wakes up while its CPUs are busy in the kernel (a kernel
# without full preemption, as Debian's), and a process already running is not delayed by
# that. A quarter of the time since the previous write, within these bounds: at most 25 % of
# a CPU while steps come every few ms, 2 % at most while they are a second apart or more.
SPIN_MIN_NS, SPIN_MAX_NS = 300_000, 20_000_000
RT_PRIORITY = 10  # SCHED_FIFO, low among real-time threads

Written = Callable[[int, int, bool, int], None]  # group, tag, ok, done ns


class StepWriterError(RuntimeError):
    """The writer process failed or did not answer."""


class StepWriter:
    """The service's side: the process (started once, on first use), a thread reading its
    answers (`written` is called there for each write), `cancel` waiting for its answer."""

    def __init__(self, pin_path: str) -> None:
        self.pin_path = pin_path
        self.written: Written | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._cancelled: dict[int, threading.Event] = {}
        self._ready = threading.Event()

    def start(self, timeout: float = 30) -> None:
        """Start the process and wait until it has the map open (a step handed to a process
        still starting would be late by its start-up)."""
        with self._lock:
            self._start()
        if not self._ready.wait(timeout):
            raise StepWriterError(f"step writer: not ready within {timeout:g} s")

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._ready.clear()
            p = self._proc = subprocess.Popen(
                [sys.executable, "-m", "datapath.step_writer", self.pin_path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_ROOT,
                env={**os.environ, "PYTHONPATH": _ROOT})
            self._reader = threading.Thread(target=self._read_answers, args=(p,),
                                            name="moa-step-answers", daemon=True)
            self._reader.start()
        return self._proc

    def _send(self, record: bytes) -> None:
        p = self._start()
        assert p.stdin is not None
        try:
            p.stdin.write(record)
            p.stdin.flush()
        except OSError as e:
            raise StepWriterError(f"step writer: {e}") from None

    def add(self, group: int, tag: int, due_ns: int, keys: bytes, values: bytes) -> None:
        """Write these entries at CLOCK_MONOTONIC `due_ns` (at once if past)."""
        with self._lock:
            self._send(HEAD.pack(b"A", group, tag, due_ns, len(keys), len(values))
                       + keys + values)

    def cancel(self, group: int, timeout: float = 10) -> None:
        """Drop the group's writes not done yet; returns once the process said so."""
        done = threading.Event()
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                return
            self._cancelled[group] = done
            self._send(HEAD.pack(b"C", group, 0, 0, 0, 0))
        if not done.wait(timeout):
            raise StepWriterError(f"step writer: no answer to a cancel in {timeout:g} s")

    def _read_answers(self, p: subprocess.Popen[bytes]) -> None:
        assert p.stdout is not None
        while len(head := p.stdout.read(HEAD.size)) == HEAD.size:
            kind, group, tag, ns, status, _ = HEAD.unpack(head)
            if kind == b"R":
                self._ready.set()
            elif kind == b"C":
                ev = self._cancelled.pop(group, None)
                if ev is not None:
                    ev.set()
            elif self.written is not None:
                self.written(group, tag, status == 0, ns)
        for ev in list(self._cancelled.values()):  # it is gone: nothing of it will be written
            ev.set()

    def close(self) -> None:
        with self._lock:
            p, self._proc = self._proc, None
        if p is not None:
            if p.stdin is not None:
                p.stdin.close()  # it exits at end of input
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
            if p.stdout is not None:
                p.stdout.close()


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(pin_path: str) -> int:
    from datapath.libbpf import Map

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    except OSError as e:
        print(f"step writer: no real-time priority ({e.strerror}): steps may be late on a "
              "busy box", file=sys.stderr)
    links = Map.from_pin(pin_path)
    fd, out = sys.stdin.fileno(), sys.stdout.buffer
    out.write(HEAD.pack(b"R", 0, 0, 0, 0, 0))
    out.flush()
    buf = bytearray()
    pending: list[tuple[int, int, int, int, bytes, bytes]] = []  # due, seq, group, tag, k, v
    seq = 0
    last = time.monotonic_ns()  # when the previous write was done

    def spin_ns(due: int) -> int:
        return min(SPIN_MAX_NS, max(SPIN_MIN_NS, (due - last) // 4))

    while True:
        timeout = None
        if pending:
            due = pending[0][0]
            timeout = max(0.0, (due - time.monotonic_ns() - spin_ns(due)) / 1e9)
        if select.select([fd], [], [], timeout)[0]:
            data = os.read(fd, 1 << 16)
            if not data:
                return 0
            buf += data
            at = 0
            while len(buf) - at >= HEAD.size:
                kind, group, tag, due, nk, nv = HEAD.unpack_from(buf, at)
                end = at + HEAD.size + (nk + nv if kind == b"A" else 0)
                if len(buf) < end:
                    break
                if kind == b"A":
                    seq += 1
                    k0 = at + HEAD.size
                    heapq.heappush(pending, (due, seq, group, tag, bytes(buf[k0:k0 + nk]),
                                             bytes(buf[k0 + nk:end])))
                else:
                    pending = [p for p in pending if p[2] != group]
                    heapq.heapify(pending)
                    out.write(HEAD.pack(b"C", group, 0, 0, 0, 0))
                    out.flush()
                at = end
            del buf[:at]
            continue
        if not pending or pending[0][0] - time.monotonic_ns() > spin_ns(pending[0][0]):
            continue
        due, _, group, tag, keys, values = heapq.heappop(pending)
        while time.monotonic_ns() < due:
            pass
        status = 0
        try:
            links.update_batch(keys, values)
        except Exception as e:  # noqa: BLE001 - answered, and said on stderr
            print(f"step writer: {e}", file=sys.stderr)
            status = 1
        last = time.monotonic_ns()
        out.write(HEAD.pack(b"D", group, tag, last, status, 0))
        out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
