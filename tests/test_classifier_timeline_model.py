"""edt.h's timeline protocol, model-checked: every interleaving of a few packets' shared-memory
steps, fast path (cmpxchg) and locked path (xchg to MOA_OWNED under the lock) mixed.

The kernel tests (test_classifier_timeline.py) race the real program on two CPUs, but a race
window of a few instructions is rarely hit there. Here the protocol is transcribed step by step
(one step = one access to t_last, t_depart or the lock, as in moa_step_fast / moa_step_locked)
and every schedule of the steps is run, checking on each outcome:
- no lost update: t_last ends at its start plus every accepted packet's serialisation;
- departures distinct, and a packet that starts after another has finished departs after it;
- t_depart ends at or after every departure handed out; no word left MOA_OWNED, lock free.
The transcription is checked against the C by test_the_model_follows_edt_h (the steps it models
appear in edt.h in the same order), and the checker is shown to catch the bugs it is meant to.

The timeline starts ahead of the clock (now = 0, t_last = 100), so capacity arithmetic is exact.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generator, Iterator

import pytest

OWNED = (1 << 64) - 1
NOW = 0
T0 = 100
HORIZON = 10_000
EDT_H = Path(__file__).resolve().parent.parent / "datapath" / "bpf" / "edt.h"


@dataclass(frozen=True)
class Pkt:
    path: str                 # "fast": no Gilbert-Elliott; "locked": Gilbert-Elliott (no loss)
    ser: int = 10             # serialisation time; rate 0 when None
    delay: int = 50           # latency (+ jitter sample, + handover)
    queue: int = 0            # queue limit in ns, 0 = none
    reorder: bool = False


@dataclass(frozen=True)
class Bugs:
    """Deliberate departures from edt.h, to show the checker finds them."""
    locked_reads_t_depart: bool = False   # locked path reads t_depart instead of owning it
    locked_reads_t_last: bool = False     # locked path reads t_last instead of owning it
    commit_before_raise: bool = False     # fast path commits t_last before raising t_depart
    fast_no_clamp: bool = False           # fast path does not clamp to t_depart + 1


Op = tuple  # ("read", word) | ("cas", word, expect, new) | ("xchg", word, v) | ("store", word, v)
#             | ("lock",) | ("unlock",); the scheduler performs it and sends back the result


def locked(p: Pkt, out: dict[str, Any], bugs: Bugs) -> Generator[Op, Any, None]:
    yield ("lock",)
    if bugs.locked_reads_t_depart:
        td = yield ("read", "td")
    else:
        td = yield ("xchg", "td", OWNED)
    td = 0 if td == OWNED else td
    tl = t_new = 0
    if p.ser is not None:
        if bugs.locked_reads_t_last:
            tl = yield ("read", "tl")
        else:
            tl = yield ("xchg", "tl", OWNED)
        tl = 0 if tl == OWNED else tl
        start = max(tl, NOW)
        if p.queue and start > NOW and start - NOW + p.ser > p.queue:
            out["drop"] = "queue"
            yield ("store", "td", td)
            yield ("store", "tl", tl)
            yield ("unlock",)
            return
        t_new = start + p.ser
        dep = t_new + p.delay
    else:
        dep = NOW + p.delay
    if not p.reorder and dep <= td:
        dep = td + 1
    if dep - NOW > HORIZON:
        out["drop"] = "horizon"
        yield ("store", "td", td)
        if p.ser is not None:
            yield ("store", "tl", tl)
        yield ("unlock",)
        return
    yield ("store", "td", max(dep, td))
    if p.ser is not None:
        yield ("store", "tl", t_new)
    out["dep"] = dep
    yield ("unlock",)


def fast(p: Pkt, out: dict[str, Any], bugs: Bugs, tries: int) -> Generator[Op, Any, None]:
    tl = t_new = 0
    if p.ser is not None:
        tl = yield ("read", "tl")
    for _ in range(tries):
        td = yield ("read", "td")
        if tl == OWNED or td == OWNED:
            break
        if p.ser is not None:
            start = max(tl, NOW)
            if p.queue and start > NOW and start - NOW + p.ser > p.queue:
                out["drop"] = "queue"
                return
            t_new = start + p.ser
            dep = t_new + p.delay
        else:
            dep = NOW + p.delay
        if not p.reorder and dep <= td and not bugs.fast_no_clamp:
            dep = td + 1
        if dep - NOW > HORIZON:
            out["drop"] = "horizon"
            return
        if bugs.commit_before_raise and p.ser is not None:
            seen = yield ("cas", "tl", tl, t_new)
            if seen != tl:
                tl = seen
                continue
            yield ("cas", "td", td, max(dep, td))   # may fail: the bug
            out["dep"] = dep
            return
        seen = yield ("cas", "td", td, max(dep, td))
        if seen != td:
            if p.ser is not None:
                tl = yield ("read", "tl")
            continue
        if p.ser is not None:
            seen = yield ("cas", "tl", tl, t_new)
            if seen != tl:
                tl = seen
                continue
        out["dep"] = dep
        return
    yield from locked(p, out, bugs)


class Explorer:
    """Every schedule of the packets' steps, depth first, states seen once. A packet's state is
    the list of results it was sent (its code is deterministic), so a state is replayed from it."""

    def __init__(self, pkts: list[Pkt], bugs: Bugs, tries: int, t_depart0: int = 0) -> None:
        self.pkts, self.bugs, self.tries = pkts, bugs, tries
        self.mem0 = {"tl": T0, "td": t_depart0, "lock": -1}
        self.seen: set = set()
        self._procs: dict = {}
        self.outcomes = 0

    def _proc(self, i: int, results: tuple) -> tuple[bool, Op | None, dict]:
        """(finished, its next step, its outcome) after being sent `results`; memoised."""
        key = (i, results)
        if key not in self._procs:
            out: dict[str, Any] = {}
            p = self.pkts[i]
            gen = (fast(p, out, self.bugs, self.tries) if p.path == "fast"
                   else locked(p, out, self.bugs))
            try:
                op = next(gen)
                for r in results:
                    op = gen.send(r)
                self._procs[key] = (False, op, out)
            except StopIteration:
                self._procs[key] = (True, None, out)
        return self._procs[key]

    @staticmethod
    def _do(mem: dict, op: Op, i: int) -> Any:
        kind = op[0]
        if kind == "read":
            return mem[op[1]]
        if kind == "cas":
            old = mem[op[1]]
            if old == op[2]:
                mem[op[1]] = op[3]
            return old
        if kind == "xchg":
            old, mem[op[1]] = mem[op[1]], op[2]
            return old
        if kind == "store":
            mem[op[1]] = op[2]
            return None
        if kind == "lock":
            mem["lock"] = i
            return None
        assert kind == "unlock" and mem["lock"] == i
        mem["lock"] = -1
        return None

    def run(self) -> Iterator[tuple[dict, list[dict], list[frozenset]]]:
        n = len(self.pkts)
        start: tuple = (tuple(sorted(self.mem0.items())), ((),) * n, (None,) * n)
        stack = [start]
        while stack:
            key = stack.pop()
            if key in self.seen:
                continue
            self.seen.add(key)
            mem_items, histories, before = key
            mem = dict(mem_items)
            procs = [self._proc(i, histories[i]) for i in range(n)]
            done = frozenset(i for i in range(n) if procs[i][0])
            if len(done) == n:
                self.outcomes += 1
                yield mem, [out for _, _, out in procs], list(before)
                continue
            for i, (finished, op, _) in enumerate(procs):
                if finished or (op[0] == "lock" and mem["lock"] != -1):
                    continue
                m = dict(mem)
                r = self._do(m, op, i)
                h = list(histories)
                h[i] = h[i] + (r,)
                b = list(before)
                if b[i] is None:          # its first step: who had finished before it began
                    b[i] = done
                stack.append((tuple(sorted(m.items())), tuple(h), tuple(b)))


def violations(pkts: list[Pkt], bugs: Bugs = Bugs(), tries: int = 4,
               t_depart0: int = 0) -> tuple[list[str], int]:
    """What goes wrong in any schedule (empty: nothing), and how many outcomes were checked."""
    ex = Explorer(pkts, bugs, tries, t_depart0)
    found: set[str] = set()
    for mem, outs, before in ex.run():
        deps = {i: o["dep"] for i, o in enumerate(outs) if "dep" in o}
        assert all("dep" in o or "drop" in o for o in outs), "a packet neither left nor dropped"
        expect_tl = T0 + sum(pkts[i].ser for i in deps if pkts[i].ser is not None)
        if mem["tl"] != expect_tl:
            found.add(f"lost update: t_last {mem['tl']} != {expect_tl}")
        if OWNED in (mem["tl"], mem["td"]) or mem["lock"] != -1:
            found.add("a word or the lock left held")
        if deps and mem["td"] < max(deps.values()):
            found.add("t_depart below a departure handed out")
        ordered = [i for i in deps if not pkts[i].reorder]
        if len({deps[i] for i in ordered}) != len(ordered):
            found.add("two departures equal")
        for b in ordered:
            for a in before[b] or ():
                if a in deps and deps[b] <= deps[a]:
                    found.add("a later packet departs at or before an earlier one")
    return sorted(found), ex.outcomes


FAST, LOCKED = Pkt("fast"), Pkt("locked")

SCENARIOS = {
    "three fast": [FAST, FAST, FAST],
    "two fast, one locked with a lower latency": [FAST, FAST, replace(LOCKED, delay=20)],
    "latency lowered between packets": [FAST, replace(FAST, delay=5), replace(LOCKED, delay=5)],
    "locked queue drop restores the words (ABA)": [FAST, replace(FAST, delay=20),
                                                   replace(LOCKED, queue=5)],
    "locked without capacity (parameters changed)": [FAST, replace(FAST, delay=30),
                                                     replace(LOCKED, ser=None, delay=10)],
    "fast without capacity, jitter-like delays": [replace(FAST, ser=None, delay=40),
                                                   replace(FAST, delay=5),
                                                   replace(LOCKED, delay=60)],
    "reorder flag on one packet": [FAST, replace(FAST, delay=5, reorder=True),
                                   replace(LOCKED, delay=1)],
    "zero serialisation": [replace(FAST, ser=0), replace(FAST, ser=0), replace(LOCKED, ser=0)],
}


@pytest.mark.parametrize("tries", [4, 1])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_schedule_keeps_the_timeline_exact(name: str, tries: int) -> None:
    """tries=1 sends every lost race to the locked path: the fallback under contention."""
    found, outcomes = violations(SCENARIOS[name], tries=tries)
    assert found == []
    assert outcomes > 10, "the scenario did interleave"


def test_a_standing_departure_is_respected() -> None:
    """t_depart ahead of what the timeline gives (latency lowered long ago): all clamp."""
    found, _ = violations([replace(FAST, delay=0), replace(FAST, delay=0),
                           replace(LOCKED, delay=0)], t_depart0=500)
    assert found == []


@pytest.mark.parametrize("bug,scenario,expect", [
    (Bugs(locked_reads_t_last=True), "two fast, one locked with a lower latency", "lost update"),
    (Bugs(locked_reads_t_depart=True), "two fast, one locked with a lower latency",
     "t_depart below"),
    (Bugs(commit_before_raise=True), "two fast, one locked with a lower latency",
     "at or before an earlier one"),
    (Bugs(fast_no_clamp=True), "latency lowered between packets", "at or before an earlier one"),
])
def test_the_checker_finds_the_bugs_it_is_for(bug: Bugs, scenario: str, expect: str) -> None:
    found, _ = violations(SCENARIOS[scenario], bugs=bug)
    assert any(expect in f for f in found), found


def test_the_model_follows_edt_h() -> None:
    """The shared accesses of the model, in edt.h, in the model's order."""
    src = EDT_H.read_text()
    place_c = src[src.index("moa_timeline_place("):src.index("moa_step_fast(")]
    fast_c = src[src.index("moa_step_fast("):src.index("moa_step_locked(")]
    locked_c = src[src.index("moa_step_locked("):src.index("moa_stage_step(", src.index(
        "moa_step_locked("))]
    # Both paths place the packet with moa_timeline_place (the clamp, then the horizon; its last
    # argument, a slotted stage's slot words, are the stage's own: slot.h).
    place = r"moa_timeline_place\(p, s, tl, td, &t_new, &dep, [^;]*\)"
    for body, steps in [
        (place_c, [r"\*dep = td \+ 1", r"horizon_ns"]),
        (fast_c, [r"MOA_READ_ONCE\(st->t_last\)", r"MOA_READ_ONCE\(st->t_depart\)",
                  r"MOA_OWNED", place,
                  r"__sync_val_compare_and_swap\(&st->t_depart, td, dep > td \? dep : td\)",
                  r"__sync_val_compare_and_swap\(&st->t_last, tl, t_new\)"]),
        (locked_c, [r"bpf_spin_lock", r"__sync_lock_test_and_set\(&st->t_depart, MOA_OWNED\)",
                    r"__sync_lock_test_and_set\(&st->t_last, MOA_OWNED\)", place,
                    r"MOA_WRITE_ONCE\(st->t_depart, dep > td \? dep : td\)",
                    r"MOA_WRITE_ONCE\(st->t_last, t_new\)", r"MOA_WRITE_ONCE\(st->t_depart, td\)",
                    r"MOA_WRITE_ONCE\(st->t_last, tl\)", r"bpf_spin_unlock"]),
    ]:
        pos = 0
        for step in steps:
            m = re.compile(step).search(body, pos)
            assert m, f"edt.h no longer has {step!r} where the model expects it"
            pos = m.end()
