"""Throughput at scale (issue 16), in the VM, side by side in one boot: one TCP flow through the
box with 1 link configured and with 65,534, for moa and for netem + HTB as Becker et al.
built it (one HTB class and one u32 filter per link).

moa. The flow crosses moa's link `tput` (10 Gbit/s, 1 ms: the full hit path, capacity never the
limit). Runs with the box as materialized (a few dozen VNIs in the classifier's map), then with
the map filled up to 65,534 VNIs by moa_bus/lab/vm/fill_map.py (traffic-less links, each with
parameters of its own, written into the service's pinned maps: no VTEPs, since 32,767 links'
worth of devices would take the VM hours to build; what is measured is the classifier's lookup
in a full map, which is where a per-link cost would show), then the fillers removed. This is
VTEP mode (vtep_tput_ratio_65534); flow mode's figure waits for flow mode in the service.

netem + HTB. On the plain bridge lan0: HTB at the bond's root, the flow's class at 10 Gbit/s
with a netem leaf (delay 1 ms), a u32 filter per link on the outer destination address. With 1
link: the flow's filter. Then 4,095 filters, the flow's in the middle of the list (u32 walks a
list in order: the middle is what a flow meets on average when every link carries traffic); the
others point at classes never made. Not 65,534 as Becker et al.: u32 numbers the filters of one
list in 12 bits (4,095 at most), and HTB's class creation walks every class for each new one,
so 65,534 classes did not finish within 10 minutes even on the host. Made with one `tc -batch`.

Rounds: each round measures 1 link and then many, back to back (the host's load drifts between
minutes); the ratio is the median of the rounds' ratios. Each run: iperf3 for `seconds`; the
VM's CPU time per GB carried,
from /proc/stat (all CPUs, busy = everything but idle and iowait) over each run, against the
bytes the receiver got. Offloads on (GSO/GRO), as in a testbed: a per-packet cost is paid per
super-packet, which the report says.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import measure, shaping
from .batch import Batch, StepResult
from .moa_stack import PIN_ROOT, MoaStack, link
from .scripted_testbed import Testbed

FILLER_FIRST_VNI = 100_000


@dataclass(frozen=True)
class ScaleConfig:
    links: int = 65_534
    netem_filters: int = 4_095  # u32's node ids are 12 bits: one list holds at most 4,095
    seconds: int = 5
    runs: int = 4
    port: int = 5203


def netem_htb(tb: Testbed, dst_vni: int, filters: int, batch_file: str) -> list[str]:
    """Commands writing `batch_file` (a tc -batch script) and running it: HTB at the bond's root,
    the flow's class (10 Gbit/s) with a netem leaf (1 ms), and `filters` u32 filters on the outer
    destination in one list, the flow's (towards dst_vni's hypervisor) in the middle; the
    others point at classes never made (their addresses carry nothing)."""
    box, dev = tb.ns("box"), tb.uplink_dev
    owner = tb.owner_of(dst_vni).underlay
    middle = (filters + 1) // 2
    # Filter i (1..filters) is node i of u32's table 800: (12 bits: at most 4,095 in one list).
    # The others match 10.250.0.0/16 + j: never an address of the testbed.
    gen = (
        f"awk -v n={filters} -v m={middle} -v dev={dev} -v dst={owner} 'BEGIN {{"
        'print "qdisc add dev " dev " root handle 1: htb default 0 r2q 100000";'
        'print "class add dev " dev " parent 1: classid 1:1 htb rate 10gbit";'
        'print "qdisc add dev " dev " parent 1:1 handle 10: netem delay 1ms limit 10000";'
        "for (i = 1; i <= n; i++) {"
        "  if (i == m) { a = dst; c = 1 }"
        "  else { j = i < m ? i : i - 1; c = i + 1;"
        '         a = sprintf("10.250.%d.%d", int(j / 256) % 256, j % 256) }'
        '  printf "filter add dev %s parent 1: protocol ip prio 1 handle 800::%x u32 '
        'match ip dst %s/32 flowid 1:%x\\n", dev, i, a, c;'
        "}}'"
    )
    return shaping.clear(tb) + [
        f'{gen} >"{batch_file}"',
        "_t0=$(date +%s.%N)",
        f'tc -n {box} -batch "{batch_file}" 2>&1 | grep -v "quantum of class"',
        f'echo "tc_batch_s $(echo "$_t0 $(date +%s.%N)" | awk \'{{printf "%.2f", $2 - $1}}\')"',
    ]


@dataclass
class ScaleScenarios:
    tb: Testbed
    stack: MoaStack
    netem_vni: int                  # lan0's VNI on hv2 (the flow's destination)
    netem_dst: str                  # hv2's address on lan0
    cfg: ScaleConfig = ScaleConfig()

    def _run(self, batch: Batch, name: str, dst: str, r: int) -> None:
        batch.add(f"scale-{name}-r{r}", [
            'head -1 /proc/stat >"$STEP.cpu0"',
            *measure.iperf3(self.tb.ns("hv2"), self.tb.ns("hv1"), dst, seconds=self.cfg.seconds,
                            port=self.cfg.port),
            'head -1 /proc/stat >"$STEP.cpu1"',
        ])

    def scale(self, batch: Batch) -> None:
        """Rounds of (1 link, many): the host's load drifts between minutes, so each round's
        pair is measured back to back and the ratio is the median of the rounds' ratios."""
        c, py = self.cfg, self.stack.python
        tput = link("tput").address("hv2")
        fill = (f"{py} -m moa_bus.lab.vm.fill_map --pin-root {PIN_ROOT} "
                f"--first-vni {FILLER_FIRST_VNI}")
        batch.add("scale-moa-clear", shaping.clear(self.tb))
        for r in range(c.runs):
            self._run(batch, "moa-1", tput, r)
            batch.add(f"scale-moa-fill-r{r}", [f"{fill} --total {c.links}"])
            self._run(batch, f"moa-{c.links}", tput, r)
            batch.add(f"scale-moa-unfill-r{r}", [f"{fill} --remove"])
        for r in range(c.runs):
            batch.add(f"scale-netem-setup-1-r{r}",
                      netem_htb(self.tb, self.netem_vni, 1, "/tmp/htb1.tc"))
            self._run(batch, "netem-1", self.netem_dst, r)
            batch.add(f"scale-netem-setup-many-r{r}",
                      netem_htb(self.tb, self.netem_vni, c.netem_filters, "/tmp/htbn.tc"))
            self._run(batch, f"netem-{c.netem_filters}", self.netem_dst, r)
        batch.add("scale-netem-clear", [*shaping.clear(self.tb), "rm -f /tmp/htb1.tc /tmp/htbn.tc"])

    # -- results ----------------------------------------------------------------------------
    def analyse(self, ok: dict[str, StepResult]) -> dict:
        c = self.cfg
        out: dict = {"links": c.links, "runs": c.runs, "seconds": c.seconds,
                     "method": "one TCP flow hv1 -> hv2, offloads on; moa: link tput (10 Gbit/s, "
                               "1 ms), map filled with traffic-less VNIs (no devices); netem: "
                               "HTB + netem (1 ms) + u32 per link, the flow's filter in the "
                               "middle; rounds of (1, many) back to back, ratio = median of the "
                               "rounds' ratios; CPU = the VM's busy time per GB received",
                     "flow_tput_ratio_65534": None,
                     "flow_note": "flow mode is not in the service yet: no figure"}
        for name in ("moa-1", f"moa-{c.links}", "netem-1", f"netem-{c.netem_filters}"):
            gbps, cpu, by_round = [], [], []
            for r in range(c.runs):
                s = ok.get(f"scale-{name}-r{r}")
                by_round.append(None)
                if s is None:
                    continue
                try:
                    run = measure.parse_iperf3_tcp(s.out)
                    busy = _busy_s(s.file(".cpu0").read_text(), s.file(".cpu1").read_text())
                except (OSError, ValueError, KeyError, TypeError) as e:
                    out.setdefault("errors", {})[f"{name}-r{r}"] = str(e)
                    continue
                gbps.append(run.goodput_bps / 1e9)
                by_round[-1] = run.goodput_bps / 1e9
                gb = run.goodput_bps * c.seconds / 8 / 1e9
                cpu.append(busy / gb if gb else None)
            key = name.replace("-", "_")
            out[f"{key}_gbps_runs"] = gbps
            out[f"{key}_gbps_by_round"] = by_round
            out[f"{key}_gbps"] = measure.median(gbps) if gbps else None
            cpus = [x for x in cpu if x is not None]
            out[f"{key}_cpu_s_per_gb"] = measure.median(cpus) if cpus else None
        for side, n in (("moa", c.links), ("netem", c.netem_filters)):
            ones, manys = out[f"{side}_1_gbps_by_round"], out[f"{side}_{n}_gbps_by_round"]
            pairs = [m / o for o, m in zip(ones, manys) if o and m is not None]
            ratio = "vtep_tput_ratio_65534" if side == "moa" else f"netem_tput_ratio_{n}"
            out[ratio] = measure.median(pairs) if pairs else None
            out[ratio + "_by_round"] = pairs
        out["netem_tput_ratio_65534"] = None
        out["netem_note"] = (f"netem + HTB measured with {c.netem_filters:,} filters, not 65,534: "
                             "u32 numbers a list's filters in 12 bits, and making one HTB class "
                             "per link walks every class per new one (65,534 did not finish in "
                             "10 minutes on the host, docs/benchmarks.md)")
        fill = ok.get("scale-moa-fill-r0")
        if fill is not None:
            out["moa_fill"] = fill.out.strip().splitlines()[-1] if fill.out.strip() else None
        setup = ok.get("scale-netem-setup-many-r0")
        if setup is not None:
            out["netem_tc_batch_s"] = next((float(w.split()[1]) for w in setup.out.splitlines()
                                            if w.startswith("tc_batch_s")), None)
        return out


def _busy_s(before: str, after: str) -> float:
    """Busy CPU seconds between two `cpu` lines of /proc/stat (USER_HZ = 100)."""
    a = [int(x) for x in before.split()[1:]]
    b = [int(x) for x in after.split()[1:]]
    d = [y - x for x, y in zip(a, b)]
    idle = d[3] + (d[4] if len(d) > 4 else 0)
    return (sum(d[:8]) - idle) / 100.0


