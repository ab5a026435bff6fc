"""The box's side of the VM's scheduled down/up (issue 14, schedule_scenario.py): an Update whose
schedule takes one link down at +down s and up at +up s from a start `lead` s ahead, the two
steps' reports (moa.<host>.schedule) collected as they come.

    python -m moa_bus.lab.vm.schedule_probe --nats URL --host e2e --id e2e --link sd \\
        --down 2 --up 4 --lead 10 --out FILE [--started FILE]

FILE: {"start_ns": ..., "ack": {...}, "reports": [ScheduleReport, ...]} (CLOCK_REALTIME ns, the
clock the box schedules on). The credential is the embedded server's, as for `moa` itself
(MOA_STATE_DIR).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import msgspec

import schemas
from moa_bus import engine
from moa_bus.cli import client

NS = 1_000_000_000


async def probe(a: argparse.Namespace) -> int:
    start = time.clock_gettime_ns(time.CLOCK_REALTIME) + int(a.lead * NS)
    update = schemas.Update(id=a.id, links=[], schedule=schemas.Schedule(start=start, steps=[
        schemas.ScheduleStep(at=int(a.down * NS), link=a.link,
                             set=schemas.EmulationPatch(state="down")),
        schemas.ScheduleStep(at=int(a.up * NS), link=a.link,
                             set=schemas.EmulationPatch(state="up")),
    ]))
    reports: list[dict] = []
    got_both = asyncio.Event()

    async def on_report(msg) -> None:
        reports.append(json.loads(msg.data))
        if len(reports) >= 2:
            got_both.set()

    async with await engine.MoaClient.connect(options=client.nats_options(a),
                                              host=a.host) as box:
        sub = await box.nc.subscribe(box.subjects.schedule, cb=on_report)
        ack = await box.update(update, timeout=30)
        if a.started:  # the schedule's start, for whoever waits to send traffic across it
            with open(a.started, "w") as f:
                f.write(f"{start if ack.ok else 0}\n")
        if ack.ok:
            await asyncio.wait_for(got_both.wait(), a.lead + a.up + 30)
        await sub.unsubscribe()
    with open(a.out, "w") as f:
        json.dump({"start_ns": start, "ack": msgspec.to_builtins(ack), "reports": reports}, f)
    return 0 if ack.ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="schedule_probe")
    p.add_argument("--id", required=True, help="the materialization")
    p.add_argument("--link", required=True)
    p.add_argument("--down", type=float, required=True, help="s after the start")
    p.add_argument("--up", type=float, required=True, help="s after the start")
    p.add_argument("--lead", type=float, default=3.0, help="s from now to the start")
    p.add_argument("--out", required=True)
    p.add_argument("--started", default=None, metavar="FILE",
                   help="write the start (realtime ns; 0 if refused) here once acked")
    client.add_arguments(p)
    return asyncio.run(probe(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
