"""Running a plan: its operations in order (runs of one kind in bulk), rolled back on a failure.

When an operation fails, `run_plan` reverts what it applied, in reverse, and raises `PlanError`
naming the operation and the cause (pyroute2's ndb/transaction.py does the same).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from datapath import faults
from datapath.plan.operation import Env, Operation

log = logging.getLogger(__name__)


class PlanError(Exception):
    """An operation of a plan failed; what the plan had applied was reverted (in reverse).

    `operation` is the failed operation, `cause` the exception, `rollback_errors` whatever
    failed while reverting (empty when the box is back where it was)."""

    def __init__(self, operation: Operation, cause: BaseException, index: int,
                 rollback_errors: Sequence[tuple[Operation, BaseException]] = ()) -> None:
        self.operation = operation
        self.cause = cause
        self.index = index
        self.rollback_errors = list(rollback_errors)
        msg = f"operation {index + 1} ({operation.describe()}) failed: {cause}"
        if self.rollback_errors:
            msg += "; rollback incomplete: " + "; ".join(
                f"{op.describe()}: {e}" for op, e in self.rollback_errors)
        super().__init__(msg)


@dataclass
class PlanResult:
    applied: int = 0
    operations: list[Operation] = field(default_factory=list)


def run_plan(ops: Sequence[Operation], env: Env, label: str = "") -> PlanResult:
    """Apply `ops` in order; on a failure revert the applied ones in reverse, raise PlanError.

    `label` names the plan (its materialization) for the failpoints `plan.before/<label>/<i>`,
    `plan.after/<label>/<i>` and `plan.revert/<label>/<i>` (datapath/faults.py), which tests
    arm to fail operation i, or its undoing.
    """
    done: list[Operation] = []
    index = {id(op): i for i, op in enumerate(ops)}

    def fail(i: int, op: Operation, e: Exception) -> PlanError:
        errors: list[tuple[Operation, BaseException]] = []
        # The failed operation may have half-applied: its revert is idempotent, run it too.
        undo_list = [*([] if any(op is d for d in done) else [op]), *reversed(done)]
        for undo in undo_list:
            try:
                faults.hit("plan.revert", label, index[id(undo)])
                undo.revert(env)
            except Exception as re:  # keep going: revert as much as possible
                log.error("rollback of %s failed: %s", undo.describe(), re)
                errors.append((undo, re))
        return PlanError(op, e, i, errors)

    i = 0
    while i < len(ops):
        # The run of operations of one bulk class starting here (see Operation).
        j = i + 1
        if type(ops[i]).bulk:
            while j < len(ops) and type(ops[j]) is type(ops[i]):
                j += 1
        group = list(range(i, j))
        stopped: tuple[int, Exception] | None = None
        for k in group:
            try:
                faults.hit("plan.before", label, k)
            except Exception as e:
                stopped = (k, e)
                group = list(range(i, k))
                break
        if len(group) > 1:
            try:
                left = {id(op) for op in type(ops[i]).apply_bulk([ops[k] for k in group], env)}
            except Exception as e:  # the bulk path itself broke: everything one by one
                log.warning("bulk %s failed (%s): one by one", type(ops[i]).__name__, e)
                left = {id(ops[k]) for k in group}
        else:
            left = {id(ops[k]) for k in group}
        applied = [ops[k] for k in group if id(ops[k]) not in left]
        for k in group:
            if id(ops[k]) in left:
                try:
                    ops[k].apply(env)
                except Exception as e:
                    done.extend(applied)
                    raise fail(k, ops[k], e) from e
                applied.append(ops[k])
        done.extend(applied)
        for k in group:
            try:
                faults.hit("plan.after", label, k)
            except Exception as e:
                raise fail(k, ops[k], e) from e
        if stopped is not None:
            k, e = stopped
            raise fail(k, ops[k], e) from e
        i = j
    return PlanResult(applied=len(done), operations=list(done))

