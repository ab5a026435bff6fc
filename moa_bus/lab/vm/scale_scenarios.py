"""Throughput at scale (issue 16), in the VM, side by side in one boot: one TCP flow through the
box with 1 link configured and with 65,534, for moa and for netem + HTB as Becker et al.
built it (one HTB class and one u32 filter per link).

moa. The flow crosses moa's link `tput` (10 Gbit/s, 1 ms: the full hit path, capacity never the
limit). Runs with the box as materialized (a few dozen VNIs in the classifier's map), then with
the map filled up to 65,534 VNIs by moa_bus/lab/vm/fill_map.py (traffic-less links, each with
parameters of its own, written into the service's pinned maps: no VTEPs, since 32,767 links'
worth of devices would take the VM hours to build; what is measured is the classifier's lookup
in a full map, which is where a per-link cost would show), then the fillers removed. The
figure is the mode's the box serves in (MoaStack.p2p_mode):

  VTEP mode (vtep_tput_ratio_65534): `tput` has a VTEP per endpoint in the box; the fillers
    are moa_links entries.
  flow mode (flow_tput_ratio_65534, `moa serve --p2p-mode flow`): `tput` is a flow-mode link,
    no VTEP: the uplink's ingress looks every frame's VNI up in the hash map moa_flow and
    redirects it to the egress, shaped there under the peer's VNI (datapath/bpf/flow.h).
    fill_map --flow fills moa_flow as well, up to 65,534 entries (the fillers as flow-mode
    links toward addresses no packet carries), so that lookup meets a full hash map too.
    netem + HTB is not run in this boot: its path does not depend on moa's mode, and the
    VTEP-mode boot measures it (netem_note says so).

netem + HTB. On the plain bridge lan0: HTB at the bond's root, the flow's class at 10 Gbit/s
with a netem leaf (delay 1 ms), a u32 filter per link on the outer destination address. With 1
link: the flow's filter. Then 4,095 filters, the flow's in the middle of the list (u32 walks a
list in order: the middle is what a flow meets on average when every link carries traffic); the
others point at classes never made. Not 65,534 as Becker et al.: u32 numbers the filters of one
list in 12 bits (4,095 at most), and HTB's class creation walks every class for each new one,
so 65,534 classes did not finish within 10 minutes even on the host. Made with one `tc -batch`.

Rounds, balanced (A B B A): 1 link, many, many again, 1 link again, back to back; a round's
ratio is the two many-link runs' throughput over the two 1-link runs'. A run straight after
another reads a few per cent below one after a pause (a fill, an unfill, a set-up: a flow-mode
boot of 7 rounds read 0.864 Gbit/s for the 1-link runs after a run, 0.907 after the unfill;
0.929 for the many-link runs after the fill, 0.893 after a run), and the host's load drifts
between minutes: in A B B A each side has one run of each kind, and a drift in time lands on
both sides alike. Each run: iperf3 for `seconds`; the VM's CPU time per GB carried, from
/proc/stat (all CPUs, busy = everything but idle and iowait) over each run, against the bytes
the receiver got; user, system and softirq time per GB as well (where a cost lands, should a
ratio drop). Offloads on (GSO/GRO), as in a testbed: a per-packet cost is paid per
super-packet, which the report says.
"""
from __future__ import annotations

import json
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
    # Balanced rounds of four runs; five of them: with four single-pair rounds, one stalled run
    # lifted netem's mean + 2 SE past 0.95; a stalled run is half of its round's side now
    # (docs/benchmarks.md, "Balanced rounds")
    runs: int = 5
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
        # HTB warns of a big quantum per class; kept apart, so that tc's own failure fails
        # the step (set -e) and grep finding nothing else does not
        f'tc -n {box} -batch "{batch_file}" 2>"$STEP.tc.err"',
        '{ grep -v "quantum of class" "$STEP.tc.err" || true; } >&2',
        'echo "tc_batch_s $(echo "$_t0 $(date +%s.%N)" | awk \'{printf "%.2f", $2 - $1}\')"',
    ]


@dataclass
class ScaleScenarios:
    tb: Testbed
    stack: MoaStack
    netem_vni: int                  # lan0's VNI on hv2 (the flow's destination)
    netem_dst: str                  # hv2's address on lan0
    cfg: ScaleConfig = ScaleConfig()

    @property
    def flow(self) -> bool:
        """The box serves point-to-point links in flow mode (`tput` has no VTEP)."""
        return self.stack.p2p_mode == "flow"

    def _run(self, batch: Batch, name: str, dst: str, r: int, again: bool = False) -> None:
        batch.add(f"scale-{name}-r{r}" + ("-again" if again else ""), [
            'head -1 /proc/stat >"$STEP.cpu0"',
            *measure.iperf3(self.tb.ns("hv2"), self.tb.ns("hv1"), dst, seconds=self.cfg.seconds,
                            port=self.cfg.port),
            'head -1 /proc/stat >"$STEP.cpu1"',
        ])

    def scale(self, batch: Batch) -> None:
        """Balanced rounds of (1 link, many, many, 1): the module's doc says why."""
        c, py = self.cfg, self.stack.python
        tput = link("tput").address("hv2")
        fill = (f"{py} -m moa_bus.lab.vm.fill_map --pin-root {PIN_ROOT} "
                f"--first-vni {FILLER_FIRST_VNI}")
        flow = " --flow" if self.flow else ""  # moa_flow filled as well (the module's doc)
        batch.add("scale-moa-clear", shaping.clear(self.tb))
        for r in range(c.runs):
            self._run(batch, "moa-1", tput, r)
            batch.add(f"scale-moa-fill-r{r}", [f"{fill} --total {c.links}{flow}"])
            self._run(batch, f"moa-{c.links}", tput, r)
            self._run(batch, f"moa-{c.links}", tput, r, again=True)
            batch.add(f"scale-moa-unfill-r{r}", [f"{fill} --remove"])
            self._run(batch, "moa-1", tput, r, again=True)
        if self.flow:  # netem's path is the same in either mode: the VTEP-mode boot runs it
            return
        many = c.netem_filters
        for r in range(c.runs):
            batch.add(f"scale-netem-setup-1-r{r}",
                      netem_htb(self.tb, self.netem_vni, 1, "/tmp/htb1.tc"))
            self._run(batch, "netem-1", self.netem_dst, r)
            batch.add(f"scale-netem-setup-many-r{r}",
                      netem_htb(self.tb, self.netem_vni, many, "/tmp/htbn.tc"))
            self._run(batch, f"netem-{many}", self.netem_dst, r)
            self._run(batch, f"netem-{many}", self.netem_dst, r, again=True)
            batch.add(f"scale-netem-setup-1-r{r}-again",
                      netem_htb(self.tb, self.netem_vni, 1, "/tmp/htb1.tc"))
            self._run(batch, "netem-1", self.netem_dst, r, again=True)
        batch.add("scale-netem-clear", [*shaping.clear(self.tb), "rm -f /tmp/htb1.tc /tmp/htbn.tc"])

    # -- results ----------------------------------------------------------------------------
    def analyse(self, ok: dict[str, StepResult]) -> dict:
        c = self.cfg
        method = ("one TCP flow hv1 -> hv2, offloads on; moa: link tput (10 Gbit/s, 1 ms), "
                  "map filled with traffic-less VNIs (no devices); netem: HTB + netem (1 ms) + "
                  "u32 per link, the flow's filter in the middle; balanced rounds of (1, many, "
                  "many, 1) back to back, a round's ratio = its many-link runs' throughput over "
                  "its 1-link runs', the figure = the median of the rounds' ratios; CPU = the "
                  "VM's busy time per GB received")
        if self.flow:
            method = ("one TCP flow hv1 -> hv2, offloads on; moa in flow mode: link tput "
                       "(10 Gbit/s, 1 ms, no VTEP), moa_links and moa_flow filled with "
                       "traffic-less VNIs (flow entries toward addresses no packet carries); "
                       "balanced rounds of (1, many, many, 1) back to back, a round's ratio = its "
                       "many-link runs' throughput over its 1-link runs', the figure = the "
                       "median of the rounds' ratios; CPU = the VM's busy time per GB received")
        out: dict = {"links": c.links, "runs": c.runs, "seconds": c.seconds, "method": method,
                     "p2p_mode": self.stack.p2p_mode}
        mine, other = (("flow", "vtep") if self.flow else ("vtep", "flow"))
        out[f"{other}_tput_ratio_65534"] = None
        out[f"{other}_note"] = (f"measured in a boot with --p2p-mode {other}, not this one "
                                f"(--p2p-mode {mine})")
        names = ["moa-1", f"moa-{c.links}"]
        if not self.flow:
            names += ["netem-1", f"netem-{c.netem_filters}"]
        for name in names:
            gbps, cpu, by_round = [], [], []
            split: dict[str, list[float]] = {"user": [], "system": [], "softirq": []}
            for r in range(c.runs):
                got = []
                for again in ("", "-again"):
                    s = ok.get(f"scale-{name}-r{r}{again}")
                    if s is None:
                        continue
                    try:
                        run = measure.parse_iperf3_tcp(s.out)
                        times = _cpu_s(s.file(".cpu0").read_text(), s.file(".cpu1").read_text())
                    except (OSError, ValueError, KeyError, TypeError) as e:
                        out.setdefault("errors", {})[f"{name}-r{r}{again}"] = str(e)
                        continue
                    got.append(run.goodput_bps / 1e9)
                    gb = run.goodput_bps * c.seconds / 8 / 1e9
                    if gb:
                        cpu.append(times["busy"] / gb)
                        for k, v in split.items():
                            v.append(times[k] / gb)
                gbps += got
                # a round's figure needs both of its runs: one alone would unbalance the round
                by_round.append(sum(got) / 2 if len(got) == 2 else None)
            key = name.replace("-", "_")
            out[f"{key}_gbps_runs"] = gbps
            out[f"{key}_gbps_by_round"] = by_round
            out[f"{key}_gbps"] = measure.median(gbps) if gbps else None
            out[f"{key}_cpu_s_per_gb"] = measure.median(cpu) if cpu else None
            for k, v in split.items():
                out[f"{key}_{k}_s_per_gb"] = measure.median(v) if v else None
        sides = [("moa", c.links)] + ([] if self.flow else [("netem", c.netem_filters)])
        for side, n in sides:
            ones, manys = out[f"{side}_1_gbps_by_round"], out[f"{side}_{n}_gbps_by_round"]
            pairs = [m / o for o, m in zip(ones, manys) if o and m is not None]
            ratio = f"{mine}_tput_ratio_65534" if side == "moa" else f"netem_tput_ratio_{n}"
            out[ratio] = measure.median(pairs) if pairs else None
            out[ratio + "_by_round"] = pairs
        out["netem_tput_ratio_65534"] = None
        if self.flow:
            out[f"netem_tput_ratio_{c.netem_filters}"] = None
            out["netem_note"] = ("netem + HTB not run in a flow-mode boot: its path does not "
                                 "depend on moa's mode; the VTEP-mode boot measures it")
        else:
            out["netem_note"] = (f"netem + HTB measured with {c.netem_filters:,} filters, not "
                                 "65,534: u32 numbers a list's filters in 12 bits, and making "
                                 "one HTB class per link walks every class per new one (65,534 "
                                 "did not finish in 10 minutes on the host, docs/benchmarks.md)")
        fills = []  # fill_map's JSON line of each round (counts, seconds)
        for r in range(c.runs):
            fill = ok.get(f"scale-moa-fill-r{r}")
            line = fill.out.strip().splitlines()[-1] if fill is not None and fill.out.strip() \
                else None
            if r == 0 and fill is not None:
                out["moa_fill"] = line
            try:
                fills.append(json.loads(line) if line else None)
            except ValueError:
                fills.append(None)
        out["moa_fill_by_round"] = fills
        setup = ok.get("scale-netem-setup-many-r0")
        if setup is not None:
            out["netem_tc_batch_s"] = next((float(w.split()[1]) for w in setup.out.splitlines()
                                            if w.startswith("tc_batch_s")), None)
        return out


def _cpu_s(before: str, after: str) -> dict[str, float]:
    """CPU seconds between two `cpu` lines of /proc/stat (USER_HZ = 100): busy (everything but
    idle and iowait), and the user, system and softirq parts of it."""
    a = [int(x) for x in before.split()[1:]]
    b = [int(x) for x in after.split()[1:]]
    d = [y - x for x, y in zip(a, b)]
    idle = d[3] + (d[4] if len(d) > 4 else 0)
    return {"busy": (sum(d[:8]) - idle) / 100.0, "user": (d[0] + d[1]) / 100.0,
            "system": d[2] / 100.0, "softirq": (d[6] if len(d) > 6 else 0) / 100.0}
