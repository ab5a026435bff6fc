r"""moa's real stack inside the VM: the testbed with moa's links, `moa serve`, the CLI.

What runs is what an operator runs on a box: `moa serve` (embedded nats-server, JetStream) inside
the box's network namespace (`nsenter --net`: bpffs pins stay visible), uplink = the bond, no
qdisc made by the harness (moa's own EnsureUplink must put sch_fq on the bond's slaves; a step
records what it did); one Materialize file sent with `moa materialize`, runtime changes with
`moa set`. The hypervisor namespaces own one VTEP per link endpoint.

The comparison shapers (tc-netem, edt_ref) keep their plain bridges in the box (VNIs 100/101 and
the LAN 410-412); moa's links use other VNIs, so both live in one testbed and one boot.

    link    kind  endpoints (hv:VNI)           emulation               scenario
    base    p2p   hv1:300 hv2:301              none                    moa's baseline path
    lat     p2p   hv1:310 hv2:311              20 ms towards hv2       1 latency
    cap     p2p   hv1:320 hv2:321              capacity 50 Mbit/s      2 capacity, 8 bond
    udp     p2p   hv1:330 hv2:331              capacity 20 Mbit/s      2 UDP overload
    loss1   p2p   hv1:340 hv2:341              loss 1 %                3 loss
    loss10  p2p   hv1:350 hv2:351              loss 10 %               3 loss
    lan     lan   hv1:400 hv2:401 hv3:402      capacity 10 Mbit/s      4 the LAN case (x0, x1, x2)
    iso     p2p   hv1:500 hv2:501              10 Mbit/s, 20 ms        5 isolation
                                               towards hv2
    fast    p2p   hv3:600 hv1:601              none                    5 the busy neighbour
    upd     p2p   hv1:700 hv2:701              20 ms, 10 Mbit/s        6 runtime update
    plan    lan   hv1:800 hv2:801 hv3:802      20 ms, 50 Mbit/s        7 a LAN's pair ...
    pp      p2p   hv1:810 hv2:811              20 ms, 50 Mbit/s        7 ... vs a P2P link
    long    p2p   hv1:910 hv2:911              10 s, 10 Mbit/s, 64KiB  9 the horizon (issue 11)
    acc     p2p   hv1:950 hv2:951              20 Mbit/s towards hv1,  issue 13: each direction
                                               2 Mbit/s towards hv2
    bb      p2p   hv1:960 hv2:961              20 ms, 20 Mbit/s, 1 MB  issue 14: a deep FIFO ...
    cd      p2p   hv1:970 hv2:971              the same with CoDel     ... and CoDel
    dp      p2p   hv1:990 hv2:991              10 ms, duplicate 10 %   issue 13: netem's duplicate,
    ro      p2p   hv1:1000 hv2:1001            10 ms, 25 % early gap 5 and reorder with a gap
    tput    p2p   hv1:980 hv2:981              1 ms, 10 Gbit/s, 1 MB   issue 16: throughput at scale

Emulation is per link, both directions (schemas.Emulation): a ping over `upd` crosses 20 ms twice;
a link's `own` gives one direction (the frames towards that hypervisor) fields of its own: `lat`
and `iso` delay only the frames towards hv2, as the comparison's netem does.
"""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .measure import in_ns, start_daemon, wait_until
from .scripted_testbed import Hypervisor, Testbed, Vtep

HOST = "e2e"  # the box's id in subjects: moa.e2e.*
REPO = Path(__file__).resolve().parents[3]  # the checkout holding moa_bus
MATERIALIZATION = "e2e"
NATS_PORT = 4222  # the embedded server, inside the box namespace (alone there)
PIN_ROOT = "/sys/fs/bpf/moa"  # the VM's own bpffs
STATE_DIR = "/tmp/moa-nats"  # the service's state: desired state, JetStream store, local.nk
HV_UNDERLAY = {"hv1": "10.77.0.11", "hv2": "10.77.0.12", "hv3": "10.77.0.13"}


@dataclass(frozen=True)
class MoaLink:
    id: str
    members: tuple[tuple[str, int], ...]  # (hypervisor, VNI), in order
    emulation: dict = field(default_factory=dict)  # schemas.Emulation as JSON (units as text)
    # per hypervisor, the direction towards its endpoint's own fields (Endpoint.emulation)
    own: tuple[tuple[str, dict], ...] = ()

    @property
    def kind(self) -> str:
        return "p2p" if len(self.members) == 2 else "lan"

    @property
    def subnet(self) -> str:
        """Overlay /24 of the link: 192.168.<first VNI // 10> (unique per link)."""
        return f"192.168.{self.members[0][1] // 10}"

    def address(self, hv: str) -> str:
        """Overlay address of `hv`'s endpoint: .1, .2, .3 in member order."""
        i = next(i for i, (h, _) in enumerate(self.members) if h == hv)
        return f"{self.subnet}.{i + 1}"

    def vni(self, hv: str) -> int:
        return next(v for h, v in self.members if h == hv)


LINKS: tuple[MoaLink, ...] = (
    MoaLink("base", (("hv1", 300), ("hv2", 301))),
    # lat and iso: latency only towards hv2, as netem shapes the frames towards hv2 only, so
    # both sides of the comparison add their delay once per round trip (docs/benchmarks.md)
    MoaLink("lat", (("hv1", 310), ("hv2", 311)), {"latency": "20ms"},
            own=(("hv1", {"latency": "0ms"}),)),
    MoaLink("cap", (("hv1", 320), ("hv2", 321)), {"capacity": "50mbps"}),
    MoaLink("udp", (("hv1", 330), ("hv2", 331)), {"capacity": "20mbps"}),
    MoaLink("loss1", (("hv1", 340), ("hv2", 341)), {"loss": 0.01}),
    MoaLink("loss10", (("hv1", 350), ("hv2", 351)), {"loss": 0.1}),
    MoaLink("lan", (("hv1", 400), ("hv2", 401), ("hv3", 402)), {"capacity": "10mbps"}),
    MoaLink("iso", (("hv1", 500), ("hv2", 501)), {"latency": "20ms", "capacity": "10mbps"},
            own=(("hv1", {"latency": "0ms"}),)),
    MoaLink("fast", (("hv3", 600), ("hv1", 601))),
    MoaLink("upd", (("hv1", 700), ("hv2", 701)), {"latency": "20ms", "capacity": "10mbps"}),
    MoaLink("plan", (("hv1", 800), ("hv2", 801), ("hv3", 802)),
            {"latency": "20ms", "capacity": "50mbps"}),
    MoaLink("pp", (("hv1", 810), ("hv2", 811)), {"latency": "20ms", "capacity": "50mbps"}),
    MoaLink("long", (("hv1", 910), ("hv2", 911)),
            {"latency": "10s", "capacity": "10mbps", "queue": "64KiB"}),
    # issue 13 (impairment_scenarios.py): the jitter's distributions, a link taken down and up
    MoaLink("jn", (("hv1", 920), ("hv2", 921)),
            {"latency": "20ms", "jitter": "4ms", "distribution": "normal", "reorder": True}),
    MoaLink("jp", (("hv1", 930), ("hv2", 931)),
            {"latency": "20ms", "jitter": "4ms", "distribution": "pareto", "reorder": True}),
    MoaLink("dn", (("hv1", 940), ("hv2", 941))),
    # an access link, 20 Mbit/s towards hv1 (down), 2 Mbit/s towards hv2 (up): per direction
    MoaLink("acc", (("hv1", 950), ("hv2", 951)), {"capacity": "20mbps"},
            own=(("hv2", {"capacity": "2mbps"}),)),
    # issue 14 (impairment_scenarios.py): a deep FIFO and the same link with CoDel
    MoaLink("bb", (("hv1", 960), ("hv2", 961)),
            {"latency": "20ms", "capacity": "20mbps", "queue": "1MB"}),
    MoaLink("cd", (("hv1", 970), ("hv2", 971)),
            {"latency": "20ms", "capacity": "20mbps", "queue": "1MB", "aqm": {"kind": "codel"}}),
    # issue 13 (netem_features.py): duplicate and reorder with a gap, beside netem's
    # (a capacity: without one, sch_fq's worst case is the line rate x 10 ms, which the VM's
    # --fq-memory-max does not leave room for)
    MoaLink("dp", (("hv1", 990), ("hv2", 991)),
            {"latency": "10ms", "capacity": "100mbps", "duplicate": 0.1}),
    MoaLink("ro", (("hv1", 1000), ("hv2", 1001)),
            {"latency": "10ms", "capacity": "100mbps",
             "reorder_early": {"probability": 0.25, "gap": 5}}),
    # issue 13 (netem_features.py): slots beside netem's, without and with a packet limit
    MoaLink("sa", (("hv1", 1010), ("hv2", 1011)),
            {"latency": "10ms", "capacity": "100mbps", "slot": {"min": "20ms"}}),
    MoaLink("sb", (("hv1", 1020), ("hv2", 1021)),
            {"latency": "10ms", "capacity": "100mbps", "slot": {"min": "20ms", "packets": 6}}),
    # issue 14 (trace_scenario.py): a cellular trace towards hv2, set by `moa set ... trace`
    MoaLink("tr", (("hv1", 1030), ("hv2", 1031)), {"capacity": "100mbps"}),
    # issue 14 (schedule_scenario.py): scheduled down at +2 s, up at +4 s
    MoaLink("sd", (("hv1", 1040), ("hv2", 1041)), {"capacity": "100mbps"}),
    # issue 16 (scale_scenarios.py): throughput with 1 and 65,534 VNIs in the map
    MoaLink("tput", (("hv1", 980), ("hv2", 981)),
            {"latency": "1ms", "capacity": "10gbps", "queue": "1MB"}),
)
SLOW_LINKS = ("long",)  # a ping takes 20 s: not waited for at start (its scenario does)

# Plain bridges in the box for the comparison shapers: (bridge, [(hypervisor, VNI, address)]).
COMPARISON_BRIDGES: tuple[tuple[str, tuple[tuple[str, int, str], ...]], ...] = (
    ("lan0", (("hv1", 100, "192.168.77.1/24"), ("hv2", 101, "192.168.77.2/24"))),
    ("lanq", (("hv1", 410, "192.168.41.1/24"), ("hv2", 411, "192.168.41.2/24"),
              ("hv3", 412, "192.168.41.3/24"))),
)


def link(link_id: str) -> MoaLink:
    return next(lk for lk in LINKS if lk.id == link_id)


# The rollback check (issue 10): a materialization of its own, a LAN of four whose VTEPs are
# held at their ports (sch_fq + moa_port_hold: this kernel has sch_fq), then the same LAN
# without its fourth member (three: still a LAN). The service is started with a failpoint
# (datapath/faults.py) that makes the second plan's first operation -- deleting that member's
# VTEP -- fail right after it applied: the rollback must give the VTEP back with its fq, its
# filter and its bridge.
ROLLBACK_ID = "rollback"
ROLLBACK_MEMBERS = (("hv1", 900), ("hv2", 901), ("hv3", 902), ("hv1", 903))
ROLLBACK_FAILPOINT = f"plan.after/{ROLLBACK_ID}/0=error:netlink@2"


def rollback_docs() -> tuple[dict, dict]:
    """(the LAN with four members, the same LAN with three)."""
    def doc(members: tuple[tuple[str, int], ...]) -> dict:
        return {"id": ROLLBACK_ID, "links": [{
            "id": "held", "emulation": {"capacity": "10mbps"},
            "endpoints": [{"vni": v, "remote": HV_UNDERLAY[h]} for h, v in members]}]}
    return doc(ROLLBACK_MEMBERS), doc(ROLLBACK_MEMBERS[:-1])


def testbed(prefix: str) -> Testbed:
    """hv1..hv3 with the comparison VTEPs and one VTEP per moa link endpoint; the box's uplink is
    the bond, with no qdisc: moa's EnsureUplink puts fq on the slaves."""
    vteps: dict[str, list[Vtep]] = {h: [] for h in HV_UNDERLAY}
    for _, members in COMPARISON_BRIDGES:
        for hv, vni, addr in members:
            vteps[hv].append(Vtep(vni, addr))
    for lk in LINKS:
        for hv, vni in lk.members:
            vteps[hv].append(Vtep(vni, f"{lk.address(hv)}/24"))
    return Testbed(prefix=prefix, uplink="bond", with_fq=False,
                   hypervisors=tuple(Hypervisor(h, u, tuple(vteps[h]))
                                     for h, u in HV_UNDERLAY.items()))


def materialize_doc(links: tuple[MoaLink, ...] = LINKS) -> dict:
    """The Materialize message (docs/contract.md): endpoints carry the hypervisor's underlay address
    as `remote`; moa creates the box's VTEPs itself."""
    out = []
    for lk in links:
        own = dict(lk.own)
        d: dict = {"id": lk.id, "tags": ["e2e"],
                   "endpoints": [{"vni": v, "remote": HV_UNDERLAY[h]}
                                 | ({"emulation": own[h]} if h in own else {})
                                 for h, v in lk.members]}
        if lk.emulation:
            d["emulation"] = lk.emulation
        out.append(d)
    return {"id": MATERIALIZATION, "links": out}


@dataclass(frozen=True)
class MoaStack:
    tb: Testbed
    # The host venv's interpreter (shared over 9p), importing this checkout's code first: an
    # editable install points at the tree it was made from, which need not be this one.
    python: str = f"env PYTHONPATH={REPO} {sys.executable}"
    p2p_mode: str = "vtep"  # moa serve --p2p-mode

    @property
    def box(self) -> str:
        return self.tb.ns("box")

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{NATS_PORT}"

    def cli(self, *argv: str) -> str:
        """`moa ARGV...` inside the box namespace (where the embedded NATS listens)."""
        args = " ".join(shlex.quote(a) for a in argv)
        # The embedded server admits only the holder of <state dir>/local.nk: the CLI finds it
        # through MOA_STATE_DIR, as an operator's shell would.
        return in_ns(self.box, f"env MOA_STATE_DIR={STATE_DIR} "
                               f"{self.python} -m moa_bus.cli {args} --nats {self.nats_url}")

    def timed_cli(self, label: str, *argv: str, check: bool = True) -> list[str]:
        """The CLI call, its wall time (s) appended to "$STEP.cli" as `label seconds rc`;
        check=False: a failure is only recorded (the step goes on, e.g. to stop its traffic)."""
        return [
            "_t0=$(date +%s.%N)",
            f"{self.cli(*argv)} && _rc=0 || _rc=$?",
            f'echo "{label} $(echo "$_t0 $(date +%s.%N)" | awk \'{{printf "%.2f", $2 - $1}}\') '
            '$_rc" >>"$STEP.cli"',
            *(['[ "$_rc" = 0 ]'] if check else []),
        ]

    def serve(self, *, timeout_s: float = 240.0) -> list[str]:
        """Start `moa serve` in the box namespace and wait for "serving host"; its log is
        "$OUT/moa.log". The uplink's fq and classifiers are the service's own work."""
        argv = (f"{self.python} -m moa_bus.cli serve --host {HOST} --uplink {self.tb.uplink_dev} "
                f"--pin-root {PIN_ROOT} --state-dir {STATE_DIR} --embedded-port {NATS_PORT} "
                f"--stats-interval 5 --p2p-mode {self.p2p_mode}")
        return [
            "export PYTHONUNBUFFERED=1",
            f"export MOA_FAILPOINTS={shlex.quote(ROLLBACK_FAILPOINT)}",  # the rollback check's
            "_t0=$(date +%s.%N)",
            *start_daemon(self.box, argv, "moa"),
            wait_until('grep -q "serving host" "$OUT/moa.log" || '
                       '{ ! kill -0 "$(cat "$OUT/moa.pid")" 2>/dev/null && '
                       'echo "moa serve exited" >&2 && cat "$OUT/moa.log" >&2 && exit 1; }',
                       timeout_s=timeout_s, poll_s=0.5),
            'echo "serve_ready_s $(echo "$_t0 $(date +%s.%N)" | awk \'{printf "%.2f", $2 - $1}\')"',
        ]

    def uplink_state(self) -> list[str]:
        """What moa made of the uplink: qdiscs of the bond and its slaves, tc filters (JSON)."""
        cmds = [f'tc -n {self.box} -j qdisc show dev {d} >"$STEP.qdisc.{d}.json"'
                for d in (self.tb.uplink_dev, *self.tb.slaves)]
        cmds += [f'tc -n {self.box} -j filter show dev {self.tb.uplink_dev} {w} '
                 f'>"$STEP.filter.{w}.json"' for w in ("egress", "ingress")]
        return cmds

    def materialize(self, doc_path: Path) -> list[str]:
        return self.timed_cli("materialize", "materialize", str(doc_path), "--host", HOST)

    def set_link(self, link_id: str, label: str, *, check: bool = True, **params: str) -> list[str]:
        """`moa set LINK key value ...` (the runtime update path: Update through NATS)."""
        words = [w for k, v in params.items() for w in (k, v)]
        return self.timed_cli(label, "set", link_id, *words, "--host", HOST, "--id",
                              MATERIALIZATION, check=check)

    def status(self, dest: str) -> list[str]:
        return [f'{self.cli("req", f"moa.{HOST}.status", "{}", "--timeout", "30")} >"{dest}"']

    def stop(self) -> str:
        return 'kill "$(cat "$OUT/moa.pid" 2>/dev/null)" 2>/dev/null || true'


def write_doc(folder: Path) -> Path:
    path = folder / "materialize.json"
    path.write_text(json.dumps(materialize_doc(), indent=1) + "\n")
    for name, doc in zip(("rollback-before.json", "rollback-after.json"), rollback_docs()):
        (folder / name).write_text(json.dumps(doc, indent=1) + "\n")
    return path


def parse_fq(qdisc_json: str) -> dict | None:
    """The root fq of a `tc -j qdisc show` listing, or None."""
    for q in json.loads(qdisc_json or "[]"):
        if q.get("kind") == "fq" and q.get("root", False):
            return q
    return None
