"""What BPF needs from this machine: bpffs, the privilege, program/map types and helpers.

``check_environment(pin_root="/sys/fs/bpf", prog_types=("sched_cls",), map_types=(), helpers=())``
raises ``LibbpfMissing`` naming the first absent thing.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from datapath.libbpf.lib import LibbpfMissing, libbpf

# Names for check_environment() and error messages (uapi enum values).
PROG_TYPES = {"sched_cls": 3, "sched_act": 4, "xdp": 6}
MAP_TYPES = {"hash": 1, "array": 2, "percpu_hash": 5, "percpu_array": 6, "ringbuf": 27}
HELPERS = {"ringbuf_reserve": 131, "ktime_get_ns": 5, "skb_set_tstamp": 192, "spin_lock": 93,
           "redirect": 23, "get_prandom_u32": 7}


def _bpffs_mounts() -> list[str]:
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "bpf":
                mounts.append(parts[1].replace("\\040", " "))
    return mounts


def require_bpffs(path: str) -> None:
    path = os.path.abspath(path)
    mounts = _bpffs_mounts()
    if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
        raise LibbpfMissing(
            f"bpffs is not mounted under {path} (bpf mounts: {mounts or 'none'}); "
            "mount it with `mount -t bpf bpf /sys/fs/bpf`")


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def require_privilege() -> None:
    caps = _cap_eff()
    cap_sys_admin, cap_bpf, cap_net_admin = 21, 39, 12
    if not (caps >> cap_sys_admin & 1 or (caps >> cap_bpf & 1 and caps >> cap_net_admin & 1)):
        raise LibbpfMissing(
            f"BPF privilege is missing: loading tc programs needs root, or CAP_BPF + CAP_NET_ADMIN "
            f"(effective capabilities {caps:#x}, uid {os.geteuid()})")


def check_environment(pin_root: str | None = "/sys/fs/bpf",
                      prog_types: Sequence[str] = ("sched_cls",),
                      map_types: Sequence[str] = (),
                      helpers: Sequence[str] = ()) -> None:
    """Raise LibbpfMissing naming the first thing BPF needs here that is absent.

    `helpers` are probed for the first of `prog_types` (e.g. ("skb_set_tstamp",) for sched_cls).
    """
    lib = libbpf()
    require_privilege()
    if pin_root is not None:
        require_bpffs(pin_root)
    for name in prog_types:
        if lib.libbpf_probe_bpf_prog_type(PROG_TYPES[name], None) != 1:
            raise LibbpfMissing(f"kernel feature missing: BPF program type {name}")
    for name in map_types:
        if lib.libbpf_probe_bpf_map_type(MAP_TYPES[name], None) != 1:
            raise LibbpfMissing(f"kernel feature missing: BPF map type {name}")
    for name in helpers:
        ptype = PROG_TYPES[prog_types[0]] if prog_types else PROG_TYPES["sched_cls"]
        if lib.libbpf_probe_bpf_helper(ptype, HELPERS[name], None) != 1:
            raise LibbpfMissing(f"kernel feature missing: BPF helper bpf_{name}")
