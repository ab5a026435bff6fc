"""A testbed in network namespaces around one moa box, built on this host, command by command,
with iproute2 (the VM tier writes its testbed as a shell script instead: vm/scripted_testbed.py).

    node1   node2   node3        node namespaces: one VXLAN endpoint device per link endpoint,
      |       |       |          with an address on the inner (experiment) network
     hv1     hv2     hv3         "hypervisor" namespaces: own the endpoint VTEPs' UDP sockets
      \\       |       /          (the VXLAN device is created here, then moved into the node)
           fab                   the underlay switch: a bridge joining everyone's underlay veth
            |
           box                   moa's namespace: uplink veth `up0` (moa's VTEPs, bridges, pairs)

One builder for `moa demo`, `moa bench control` and the tests (tests/fixtures/topology.py wraps
it as a pytest fixture). It lives in moa_bus because both commands ship with `pip install .`;
it only runs `ip`/`sysctl`/`ping` (no pyroute2): only the datapath touches netlink.

Every namespace carries the testbed's tag (unique per run); `cleanup()` deletes every namespace
it made (and so every device in them) and the box's pin directory, even after a build that failed
or was interrupted half-way.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

UNDERLAY_NET = "10.201.0"
BOX_ADDR = f"{UNDERLAY_NET}.1"
UPLINK = "up0"
VXLAN_PORT = 4789
_BRIDGE = "fabric"


class TestbedError(RuntimeError):
    """A command building or using the testbed failed; the message says which and why."""

    __test__ = False  # not a pytest test class


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise TestbedError(f"`{' '.join(args)}` failed ({r.returncode}): "
                           f"{r.stderr.strip() or r.stdout.strip()}")
    return r


def nsenter(ns: str) -> list[str]:
    # --net only: `ip netns exec` also remounts /sys, which would hide /sys/fs/bpf.
    return ["nsenter", f"--net=/var/run/netns/{ns}"]


def ns_exec(ns: str, *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return sh(*nsenter(ns), *args, check=check, timeout=timeout)


def unique_tag(prefix: str) -> str:
    """`prefix` + pid + random: unique among runs on this machine, short enough for names."""
    return f"{prefix}{os.getpid() % 100000}{secrets.token_hex(2)}"


# ------------------------------------------------------------------------------------- pings

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/")


@dataclass
class PingResult:
    sent: int = 0
    received: int = 0
    rtt_min: float | None = None  # ms
    rtt_avg: float | None = None
    rtt_max: float | None = None

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0

    def describe(self) -> str:
        rtt = (f"rtt min/avg/max {self.rtt_min:.3f}/{self.rtt_avg:.3f}/{self.rtt_max:.3f} ms"
               if self.rtt_avg is not None else "no replies")
        return f"{self.received}/{self.sent} answered ({self.loss:.0%} lost), {rtt}"


def parse_ping(text: str) -> PingResult:
    r = PingResult()
    if m := _SUMMARY.search(text):
        r.sent, r.received = int(m.group(1)), int(m.group(2))
    if m := _RTT.search(text):
        r.rtt_min, r.rtt_avg, r.rtt_max = (float(x) for x in m.groups())
    return r


def ping_cmd(ns: str, dst: str, count: int | None, interval: float, wait: float = 1,
             deadline: float | None = None, dev: str | None = None) -> list[str]:
    """ping from namespace `ns`, quiet (the summary only): `count` pings (None: until
    `deadline` seconds, -w), each waited for at most `wait` seconds (-W)."""
    cmd = [*nsenter(ns), "ping", "-n", "-q", "-i", f"{interval:g}", "-W", f"{wait:g}"]
    if count is not None:
        cmd += ["-c", str(count)]
    if deadline is not None:
        cmd += ["-w", f"{deadline:g}"]
    if dev is not None:
        cmd += ["-I", dev]
    return cmd + [dst]


# ------------------------------------------------------------------------------------- the testbed

@dataclass
class Endpoint:
    node: int
    vni: int
    addr: str  # inner address with prefix, e.g. 192.168.100.1/24
    dev: str

    @property
    def ip(self) -> str:
        return self.addr.split("/")[0]


@dataclass
class Testbed:
    __test__ = False  # not a pytest test class

    tag: str = field(default_factory=lambda: unique_tag("mtb"))
    hypervisors: int = 3
    pin_root: str = ""  # where moa in the box pins its objects; default /sys/fs/bpf/<tag>
    state_dir: str = ""  # moa serve's --state-dir for the box; default <tmp>/moa-<tag>
    # Names are recorded before the command that creates them: cleanup after an interruption
    # anywhere in build() finds everything (deleting a namespace that was not made yet is fine).
    namespaces: list[str] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pin_root = self.pin_root or f"/sys/fs/bpf/{self.tag}"
        self.state_dir = self.state_dir or os.path.join(tempfile.gettempdir(), f"moa-{self.tag}")

    @property
    def fab(self) -> str:
        return f"{self.tag}fab"

    @property
    def box(self) -> str:
        return f"{self.tag}box"

    def hv(self, i: int) -> str:
        return f"{self.tag}hv{i}"

    def node(self, i: int) -> str:
        return f"{self.tag}node{i}"

    @staticmethod
    def hv_addr(i: int) -> str:
        return f"{UNDERLAY_NET}.{10 + i}"

    def _add_ns(self, name: str) -> None:
        self.namespaces.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _wire(self, ns: str, inner: str, outer: str, addr: str) -> None:
        """A veth from the underlay bridge to `ns` (named `inner` there)."""
        sh("ip", "-n", self.fab, "link", "add", outer, "type", "veth", "peer", "name", inner,
           "netns", ns)
        sh("ip", "-n", self.fab, "link", "set", outer, "master", _BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
        sh("ip", "-n", ns, "link", "set", inner, "up")

    def build(self) -> "Testbed":
        try:
            self._add_ns(self.fab)
            sh("ip", "-n", self.fab, "link", "add", _BRIDGE, "type", "bridge")
            sh("ip", "-n", self.fab, "link", "set", _BRIDGE, "up")
            self._add_ns(self.box)
            self._wire(self.box, UPLINK, "pbox", BOX_ADDR)
            for i in range(1, self.hypervisors + 1):
                self._add_ns(self.hv(i))
                self._add_ns(self.node(i))
                self._wire(self.hv(i), "eth0", f"phv{i}", self.hv_addr(i))
        except BaseException:
            self.cleanup()
            raise
        return self

    def add_endpoint(self, node: int, vni: int, addr: str, port: int = VXLAN_PORT) -> Endpoint:
        """A node's VXLAN endpoint for VNI `vni`, pointing at the box, with inner address `addr`
        (its UDP port `port`: the box's VTEP for it must use the same).

        Created in the hypervisor (which keeps its UDP socket and underlay), then moved into
        the node namespace: the node sees a plain Ethernet device with offloads on.
        """
        dev = f"vx{vni}"
        hv = self.hv(node)
        sh("ip", "-n", hv, "link", "add", dev, "type", "vxlan", "id", str(vni),
           "local", self.hv_addr(node), "remote", BOX_ADDR, "dstport", str(port),
           "dev", "eth0", "nolearning")
        sh("ip", "-n", hv, "link", "set", dev, "netns", self.node(node))
        sh("ip", "-n", self.node(node), "addr", "add", addr, "dev", dev)
        # IPv4 only, and off before the device comes up: IPv6 would send router solicitations
        # and MLD reports into the link (and turning it off later sends MLD leaves), frames
        # that tests counting drops exactly would see.
        ns_exec(self.node(node), "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
        sh("ip", "-n", self.node(node), "link", "set", dev, "up")
        ep = Endpoint(node, vni, addr, dev)
        self.endpoints.append(ep)
        return ep

    def quiet(self, *eps: Endpoint) -> None:
        """Only what a test sends between these endpoints on the wire: permanent neighbour
        entries between them (no ARP; IPv6 is off on every endpoint from the start), so that
        counters can be compared with the packets sent exactly."""
        macs = {}
        for ep in eps:
            out = ns_exec(self.node(ep.node), "ip", "-j", "link", "show", ep.dev).stdout
            macs[ep.vni] = json.loads(out)[0]["address"]
        for ep in eps:
            for other in eps:
                if other is not ep:
                    ns_exec(self.node(ep.node), "ip", "neigh", "replace", other.ip, "lladdr",
                            macs[other.vni], "dev", ep.dev, "nud", "permanent")

    def ping(self, src: Endpoint, dst: Endpoint, count: int = 3, interval: float = 0.2,
             deadline: float = 10) -> tuple[int, int]:
        """(transmitted, received) of exactly `count` pings from src's node to dst's address,
        each waited for at most `deadline` seconds (-W: unlike -w, it does not send more)."""
        r = sh(*ping_cmd(self.node(src.node), dst.ip, count, interval, wait=deadline, dev=src.dev),
               check=False, timeout=count * interval + deadline + 30)
        if not _SUMMARY.search(r.stdout):
            raise TestbedError(f"ping output not understood: {r.stdout} {r.stderr}")
        p = parse_ping(r.stdout)
        return p.sent, p.received

    def cleanup(self) -> list[str]:
        """Delete every namespace made (and so every device in them) and the pin directory;
        what could not be removed (empty when all went). A name leaves `namespaces` only once
        deleted: a cleanup interrupted half-way can be run again."""
        problems = []
        while self.namespaces:
            ns = self.namespaces[-1]
            r = sh("ip", "netns", "del", ns, check=False)
            if r.returncode != 0 and "No such file" not in r.stderr:
                problems.append(f"namespace {ns}: {r.stderr.strip()}")
            self.namespaces.pop()
        for path, what in ((self.pin_root, "pins"), (self.state_dir, "state")):
            if os.path.exists(path):
                shutil.rmtree(path, ignore_errors=True)
                if os.path.exists(path):
                    problems.append(f"{what} left in {path}")
        return problems

    def leftover_namespaces(self) -> list[str]:
        out = sh("ip", "netns", "list").stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(self.tag)]
