"""Failpoints: named places where a test makes the real code fail, or the process die, to prove
rollback and restart on the real kernel (docs/architecture.md, "Faults").

Nothing happens unless a failpoint is armed: by `MOA_FAILPOINTS` in the environment of a
process (read once, at import), or by `arm()` in-process. A spec is a comma-separated list of
`POINT=ACTION`:

    plan.before/big/17=kill            SIGKILL this process before operation 17 of big's plan
    plan.after/*/3=error:map           operation 3 of any plan applies, then fails
    rtnl.window/2=kill                 after the third window of a pipelined netlink batch
    state.after-write/big=kill         big's desired state is durable, the ack not yet sent

A point's path segments are matched one by one, `*` matching any. `POINT=ACTION@N` fires at
the N-th hit of the point instead of the first (a later plan of the same materialization).
Points (who calls `hit`):
`plan.before/<id>/<i>`, `plan.after/<id>/<i>` and `plan.revert/<id>/<i>` (the undoing of
operation i in a rollback) (datapath.plan.runner.run_plan),
`rtnl.window/<k>` (datapath.netlink.raw.Rtnl.run), `params.before-write/<id>` and
`params.after-write/<id>` (a parameters-only update, datapath.api), `state.before-write/<id>`
and `state.after-write/<id>` (moa_bus.service.desired), `ack.before/<id>`
(moa_bus.service.applier).

Actions: `kill` (SIGKILL, as `kill -9` from outside would), `error:netlink`, `error:map`,
`error:qdisc` (raise the exception the real failure raises: a netlink error, a BPF map update
error, sch_fq refused), `sleep:<ms>` (hold the caller there: a slow kernel, for tests of what
waits behind an operation). A failpoint fires once, then is spent.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
import time
from dataclasses import dataclass

ENV = "MOA_FAILPOINTS"
ACTIONS = ("kill", "error:netlink", "error:map", "error:qdisc", "sleep:<ms>")


class FailpointError(ValueError):
    """A failpoint spec that cannot be parsed."""


@dataclass
class _Armed:
    path: tuple[str, ...]
    action: str
    spent: bool = False
    skip: int = 0  # matching hits to let pass before firing
    def matches(self, path: tuple[str, ...]) -> bool:
        return len(path) == len(self.path) and all(
            want in ("*", got) for want, got in zip(self.path, path))


_lock = threading.Lock()
_armed: list[_Armed] = []


def parse(spec: str) -> list[_Armed]:
    out = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        point, sep, action = item.partition("=")
        action, at, nth = action.partition("@")
        sleep = action.startswith("sleep:") and action[len("sleep:"):].isdigit()
        if (not sep or (action not in ACTIONS and not sleep) or not point
                or (at and not (nth.isdigit() and int(nth) >= 1))):
            raise FailpointError(f"failpoint {item!r}: want POINT=ACTION[@N], ACTION one of "
                                 f"{', '.join(ACTIONS)}, N >= 1")
        out.append(_Armed(tuple(point.split("/")), action, skip=int(nth) - 1 if at else 0))
    return out


def arm(spec: str) -> None:
    """Arm the failpoints of `spec` (in addition to those armed already)."""
    parsed = parse(spec)
    with _lock:
        _armed.extend(parsed)


def disarm() -> None:
    with _lock:
        _armed.clear()


def armed() -> bool:
    return bool(_armed)


def hit(point: str, *args: object) -> None:
    """Called where a failpoint may fire: `point` and its arguments form the path matched."""
    if not _armed:  # the common case: one list check
        return
    path = (point, *(str(a) for a in args))
    with _lock:
        fp = next((f for f in _armed if not f.spent and f.matches(path)), None)
        if fp is None:
            return
        if fp.skip:
            fp.skip -= 1
            return
        fp.spent = True
    _fire(fp.action, "/".join(path))


def _fire(action: str, where: str) -> None:
    if action.startswith("sleep:"):
        time.sleep(int(action[len("sleep:"):]) / 1000)
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        threading.Event().wait()  # not reached: SIGKILL cannot be caught
    if action == "error:netlink":
        from datapath.netlink.model import DatapathNetlinkError
        raise DatapathNetlinkError(f"failpoint {where}: RTNETLINK answers: "
                                   f"{os.strerror(errno.EBUSY)}")
    if action == "error:map":
        from datapath.libbpf import BpfError
        raise BpfError(f"failpoint {where}: update of map moa_links: "
                       f"{os.strerror(errno.ENOSPC)}", errno.ENOSPC)
    if action == "error:qdisc":
        from datapath.netlink.model import DatapathNetlinkError
        raise DatapathNetlinkError(f"failpoint {where}: setting sch_fq: Error: "
                                   "Specified qdisc kind is unknown.")
    raise FailpointError(f"unknown failpoint action {action!r}")


if os.environ.get(ENV):
    arm(os.environ[ENV])
