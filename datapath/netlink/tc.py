"""Traffic control on moa's devices: clsact, moa's bpf filters (pyroute2), sch_fq (iproute2's tc).

`TrafficControl` is the tc half of `Netlink` (datapath/netlink/devices.py), which mixes it in:
like the rest of Netlink it runs on the netlink worker thread, in the box's network namespace.
"""
from __future__ import annotations

import errno
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from datapath.netlink import qdisc_tree
from datapath.netlink.model import DatapathNetlinkError, FqSizing, FqUnavailable, NotOurs
from datapath.netlink.raw import TC_EGRESS, TC_H_ROOT, TC_INGRESS, Rtnl

# moa's tc filters sit at one fixed priority/handle per hook so that finding and replacing them
# needs no state: another tool's filters at other priorities are left alone.
MOA_TC_PRIO = 0xA0
MOA_TC_HANDLE = 1
MOA_FILTER_PREFIX = "moa"
# moa's sch_fq has this handle ("MO"): the root qdisc moa put there, never one to keep.
MOA_FQ_HANDLE = 0x4D4F


@dataclass(frozen=True)
class TcFilter:
    direction: str  # "egress" | "ingress"
    prio: int
    handle: int
    name: str
    prog_id: int | None


def _parent(direction: str) -> int:
    if direction == "egress":
        return TC_EGRESS
    if direction == "ingress":
        return TC_INGRESS
    raise ValueError(f"direction must be egress or ingress, not {direction!r}")


class TrafficControl:
    """clsact, bpf filters and sch_fq; mixed into Netlink, which provides `ipr`, the thread
    check and the ifindex lookups."""

    ipr: IPRoute
    rtnl: Rtnl

    if TYPE_CHECKING:
        def _check_thread(self) -> None: ...

        def ifindex(self, name: str) -> int | None: ...

        def require_ifindex(self, name: str) -> int: ...

    def has_clsact(self, name: str) -> bool:
        """Slow (pyroute2 dumps every qdisc of the namespace): checks and tests only. A filter
        dump cannot tell, it answers empty with or without clsact."""
        index = self.require_ifindex(name)
        return any(q.get("TCA_KIND") == "clsact" for q in self.ipr.get_qdiscs(index))

    def ensure_clsact(self, name: str) -> None:
        self._check_thread()
        index = self.require_ifindex(name)
        try:
            self.ipr.tc("add", "clsact", index=index)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise DatapathNetlinkError(f"adding clsact to {name}: {e}") from e

    def remove_clsact(self, name: str) -> None:
        """Remove clsact only when no filter but moa's is left on it (another tool's stay)."""
        self._check_thread()
        index = self.ifindex(name)
        if index is None:
            return
        for direction in ("egress", "ingress"):
            for msg in self.ipr.get_filters(index=index, parent=_parent(direction)):
                opts = msg.get("TCA_OPTIONS")
                if opts is None:
                    continue  # a chain header, not a filter
                if msg.get("TCA_KIND") != "bpf" or not (opts.get("TCA_BPF_NAME") or "").startswith(
                        MOA_FILTER_PREFIX):
                    return  # another tool's filter: its clsact stays
        try:
            self.ipr.tc("del", "clsact", index=index)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL):
                raise DatapathNetlinkError(f"removing clsact from {name}: {e}") from e

    def list_filters(self, name: str, direction: str, index: int | None = None) -> list[TcFilter]:
        self._check_thread()
        index = index if index is not None else self.require_ifindex(name)
        out = []
        try:
            msgs = list(self.ipr.get_filters(index=index, parent=_parent(direction)))
        except NetlinkError as e:
            if e.code in (errno.EINVAL, errno.ENOENT):  # no clsact
                return []
            raise
        for msg in msgs:
            if msg.get("TCA_KIND") != "bpf":
                continue
            opts = msg.get("TCA_OPTIONS")
            if opts is None:  # the per-priority chain header, not a filter
                continue
            out.append(TcFilter(direction=direction, prio=msg["info"] >> 16, handle=msg["handle"],
                                name=opts.get("TCA_BPF_NAME") or "",
                                prog_id=opts.get("TCA_BPF_ID")))
        return out

    def attach_bpf(self, name: str, direction: str, prog_fd: int, prog_name: str) -> None:
        """Attach a direct-action bpf filter at moa's priority, replacing moa's previous one.

        `prog_name` must start with "moa" (how reconcile recognises moa's filters).
        """
        self._check_thread()
        if not prog_name.startswith(MOA_FILTER_PREFIX):
            raise ValueError(f"moa's filter names start with {MOA_FILTER_PREFIX!r}: {prog_name!r}")
        self.ensure_clsact(name)
        index = self.require_ifindex(name)
        for f in self.list_filters(name, direction, index):
            if f.prio == MOA_TC_PRIO and not f.name.startswith(MOA_FILTER_PREFIX):
                raise NotOurs(f"{direction} filter at prio {MOA_TC_PRIO} on {name} is not moa's")
        try:
            self.ipr.tc("replace-filter", "bpf", index=index, handle=MOA_TC_HANDLE,
                        parent=_parent(direction), prio=MOA_TC_PRIO, fd=prog_fd,
                        name=prog_name, direct_action=True)
        except NetlinkError as e:
            raise DatapathNetlinkError(f"attaching {prog_name} to {name} {direction}: {e}") from e

    def detach_bpf(self, name: str, direction: str) -> None:
        self._check_thread()
        index = self.ifindex(name)
        if index is None:
            return
        ours = [f for f in self.list_filters(name, direction, index)
                if f.prio == MOA_TC_PRIO and f.name.startswith(MOA_FILTER_PREFIX)]
        for f in ours:
            try:
                self.ipr.tc("del-filter", "bpf", index=index, parent=_parent(direction),
                            prio=f.prio, handle=f.handle)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.EINVAL):
                    raise DatapathNetlinkError(f"detaching {f.name} from {name}: {e}") from e

    # -- sch_fq -------------------------------------------------------------------------------

    def _tc_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        # pyroute2 0.9.7 has no sch_fq encoder; iproute2's `tc` has one. The child inherits this
        # thread's network namespace (fork copies the calling thread's nsproxy).
        return subprocess.run(["tc", *args], capture_output=True, text=True)

    def qdisc_kind(self, name: str) -> str | None:
        index = self.require_ifindex(name)
        for q in self.ipr.get_qdiscs(index):
            if q["parent"] == TC_H_ROOT:
                return q.get("TCA_KIND")
        return None

    @staticmethod
    def _fq_args(name: str, sizing: FqSizing) -> list[str]:
        horizon_us = max(1, -(-sizing.horizon_ns // 1000))  # up: never before the classifier's
        return ["qdisc", "replace", "dev", name, "root", "handle", f"{MOA_FQ_HANDLE:x}:", "fq",
                "limit", str(sizing.limit), "flow_limit", str(sizing.flow_limit),
                "buckets", str(sizing.buckets), "orphan_mask", str(sizing.orphan_mask),
                "horizon", f"{horizon_us}us", "horizon_drop"]

    @staticmethod
    def _fq_error(name: str, r: subprocess.CompletedProcess[str]) -> Exception:
        msg = (r.stderr or r.stdout).strip()
        if "unknown" in msg.lower() or "no such file" in msg.lower():
            return FqUnavailable(f"this kernel has no sch_fq ({msg}): latency and capacity "
                                 "cannot be emulated; allow loss-only mode to run anyway")
        return DatapathNetlinkError(f"setting sch_fq on {name}: {msg}")

    def ensure_fq(self, name: str, sizing: FqSizing) -> None:
        """sch_fq as root qdisc of `name`, sized as given (replaces whatever root qdisc was)."""
        self._check_thread()
        self.require_ifindex(name)
        r = self._tc_cli(*self._fq_args(name, sizing))
        if r.returncode != 0:
            raise self._fq_error(name, r)

    def ensure_fq_many(self, devices: list[tuple[str, FqSizing]]) -> None:
        """ensure_fq for many devices in one `tc -batch` process (a fork each costs ~5 ms).
        On a failure the devices are retried one by one, so the error names the device."""
        self._check_thread()
        if not devices:
            return
        script = "".join(" ".join(self._fq_args(n, z)) + "\n" for n, z in devices)
        r = subprocess.run(["tc", "-force", "-batch", "-"], input=script, capture_output=True,
                           text=True)
        if r.returncode != 0:
            for name, sizing in devices:
                self.ensure_fq(name, sizing)

    def remove_fq(self, name: str) -> None:
        self._check_thread()
        if self.ifindex(name) is None or self.qdisc_kind(name) != "fq":
            return
        r = self._tc_cli("qdisc", "del", "dev", name, "root")
        if r.returncode != 0:
            raise DatapathNetlinkError(f"removing sch_fq from {name}: {r.stderr.strip()}")

    # -- the root qdisc tree sch_fq replaces ------------------------------------------------------

    def root_tree(self, name: str) -> bytes | None:
        """The device's root qdisc tree as saved bytes (datapath/netlink/qdisc_tree.py): b""
        when its root is the kernel's default, None when it is moa's sch_fq (nothing to keep)."""
        self._check_thread()
        index = self.require_ifindex(name)
        tree = qdisc_tree.read_tree(self.rtnl, index)
        if any(o.parent == TC_H_ROOT and o.handle >> 16 == MOA_FQ_HANDLE and o.kind == "fq"
               for o in tree):
            return None
        return qdisc_tree.encode(tree)

    def restore_root_tree(self, name: str, saved: bytes) -> None:
        """Put a saved root tree back (b"": the kernel's default root, nothing to do)."""
        self._check_thread()
        index = self.require_ifindex(name)
        missing = qdisc_tree.restore(self.rtnl, index, qdisc_tree.decode(saved))
        if missing:
            raise DatapathNetlinkError(f"the root qdisc tree of {name} did not all come back: "
                                       f"{'; '.join(missing)}")
