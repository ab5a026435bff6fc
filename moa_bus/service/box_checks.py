"""What `moa serve` checks on this machine before it starts anything: the uplink (given,
existing, with an address unless --local), the VTEPs' source address, the NATS credential
files, and sch_fq, tried in a scratch network namespace (`moa doctor` probes the kernel the
same way). A failed check is a SettingsError saying what to change; nothing is left behind.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import uuid

from moa_bus.service.settings import ServeSettings, SettingsError, check_nats


def run_command(*cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a probe's command: its output captured, 20 s at most."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class ScratchNetns:
    """A network namespace that exists only while a probe runs: the kernel is asked by doing
    the real thing (adding a qdisc, a device) where nothing of the box can be touched."""

    def __init__(self, prefix: str = "moa-doctor") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> "ScratchNetns":
        run_command("ip", "netns", "add", self.name)
        run_command("ip", "-n", self.name, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        run_command("ip", "netns", "delete", self.name)

    def try_(self, *cmd: str) -> tuple[bool, str]:
        """Run `cmd` (ip, tc: a tool taking -n) in the namespace: (it succeeded, its first line
        of error output)."""
        proc = run_command(cmd[0], "-n", self.name, *cmd[1:])
        return proc.returncode == 0, first_line(proc.stderr) or first_line(proc.stdout)


def _in_netns(netns: str | None, *cmd: str) -> subprocess.CompletedProcess[str]:
    from datapath.netlink.worker import netns_path

    path = netns_path(netns)
    # nsenter, not `ip -n`: --netns may be a path, and `ip -n` takes only a name
    prefix = ["nsenter", f"--net={path}"] if path else []
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=30)


def _where(netns: str | None) -> str:
    return f"network namespace {netns} (`ip -n {netns} link` lists its devices)" if netns else \
        "this network namespace (`ip link` lists its devices)"


def uplink_addresses(uplink: str, netns: str | None) -> list[dict]:
    """iproute2's addr_info of `uplink`; a SettingsError when the namespace or the device does
    not exist."""
    from datapath.netlink.worker import netns_path

    path = netns_path(netns)
    if path and not os.path.exists(path):
        raise SettingsError(f"--netns {netns}: no such network namespace ({path} does not exist; "
                            "`ip netns list` shows the names)")
    out = _in_netns(netns, "ip", "-j", "addr", "show", "dev", uplink)
    if out.returncode != 0:
        if "does not exist" in out.stderr:
            raise SettingsError(f"--uplink {uplink}: no such device in {_where(netns)}; name the "
                                "device that carries the VXLAN traffic")
        raise SettingsError(f"--uplink {uplink}: {out.stderr.strip() or 'not found'}")
    return [a for dev in json.loads(out.stdout or "[]") for a in dev.get("addr_info", [])]


def first_ipv4(uplink: str, addrs: list[dict]) -> str:
    for a in addrs:
        if a.get("family") == "inet":
            return a["local"]
    raise SettingsError(f"--uplink {uplink} has no IPv4 address: give the VTEPs' source "
                        "address with --local ADDRESS (local = \"...\" in --config), or give the "
                        "uplink one")


def uplink_ipv4(uplink: str, netns: str | None) -> str:
    """The first IPv4 address of `uplink` (iproute2's JSON output)."""
    return first_ipv4(uplink, uplink_addresses(uplink, netns))


def require_uplink(s: ServeSettings) -> str:
    if not s.uplink:
        raise SettingsError("--uplink DEV is required: the device that carries the VXLAN traffic "
                            "(or MOA_UPLINK, or uplink = \"...\" in --config)")
    return s.uplink


def no_fq(detail: str) -> SettingsError:
    return SettingsError(
        f"this kernel has no sch_fq ({detail}): latency and capacity cannot be emulated. Start "
        "with --allow-loss-only (allow_loss_only = true in --config) to emulate loss only (links "
        "asking for latency or capacity are then refused), or run moa on a kernel with sch_fq "
        "(see README, the VM path).")


def probe_fq() -> tuple[bool, str] | None:
    """(the kernel has sch_fq, tc's error), tried in a throwaway network namespace (the box is
    not touched); None when the probe itself could not run (the datapath then finds out)."""
    with ScratchNetns() as ns:
        if not ns.try_("ip", "link", "show", "lo")[0]:
            return None
        return ns.try_("tc", "qdisc", "add", "dev", "lo", "root", "fq")


def check_box(s: ServeSettings) -> None:
    """The settings that name things on this machine, checked before anything starts: the uplink
    (given, existing, with an address unless --local), the source address, the NATS credential
    files, and sch_fq unless --allow-loss-only. A SettingsError says what to change."""
    uplink = require_uplink(s)
    addrs = uplink_addresses(uplink, s.netns)
    if s.local:
        try:
            ipaddress.ip_address(s.local)
        except ValueError:
            raise SettingsError(f"--local {s.local} is not an IP address: give the VTEPs' source "
                                "address (default: the uplink's first IPv4 address)") from None
    else:
        first_ipv4(uplink, addrs)
    check_nats(s)  # the NATS options against each other, files holding a secret private
    if not s.allow_loss_only:
        probed = probe_fq()
        if probed is not None and not probed[0]:
            raise no_fq(probed[1])
