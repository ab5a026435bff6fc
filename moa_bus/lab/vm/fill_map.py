"""Fill the box's classifier map with links that carry no traffic, and take them out again: the
VM's throughput-at-scale scenario (scale_scenarios.py) runs inside the VM, after `moa serve`
has pinned its maps:

    python -m moa_bus.lab.vm.fill_map --pin-root /sys/fs/bpf/moa --total 65534 --first-vni 100000
    python -m moa_bus.lab.vm.fill_map --pin-root /sys/fs/bpf/moa --remove --first-vni 100000

The fillers are written past the service (the pinned maps, as a second user would): VNIs from
--first-vni up, until the map holds --total VNIs; each gets an emulation of its own (latency and
capacity vary), so their parameters do not share cache lines. They have no device: the scenario
measures what the classifier's lookup costs with a full map, not a box of that many VTEPs
(docs/benchmarks.md says so). --remove deletes every VNI at or above --first-vni. Prints one
JSON object: VNIs written or removed, the map's count after, seconds.
"""
from __future__ import annotations

import argparse
import json
import time

import schemas
from datapath.classifier import Classifier


def _emulation(i: int) -> schemas.Emulation:
    return schemas.Emulation(latency=1_000_000 + 1_000 * (i % 1000),
                             capacity=1_000_000_000 + 1_000 * i)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fill_map", description=__doc__.split("\n\n")[0])
    p.add_argument("--pin-root", required=True)
    p.add_argument("--first-vni", type=int, required=True)
    p.add_argument("--total", type=int, default=65_534)
    p.add_argument("--remove", action="store_true")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    with Classifier.load(pin_root=a.pin_root) as clf:
        if a.remove:
            mine = [v for v in clf.vnis() if v >= a.first_vni]
            for vni in mine:
                clf.delete_link(vni)
            done = len(mine)
        else:
            want = a.total - clf.link_count()
            stages = {a.first_vni + i: clf.encode_stages(_emulation(i), None)
                      for i in range(max(0, want))}
            done = clf.update_links(stages)
        print(json.dumps({"vnis": done, "count": clf.link_count(),
                          "seconds": round(time.monotonic() - t0, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
