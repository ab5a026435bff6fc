"""`moa watch`: print the box's acks and telemetry as they come (one line each, or --json)."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

import schemas
from moa_bus import engine
from moa_bus.cli import client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--acks", action="store_true", help="acks only (with the others: combine)")
    parser.add_argument("--drops", action="store_true", help="drop batches")
    parser.add_argument("--links", action="store_true", help="per-link counters")
    parser.add_argument("--json", action="store_true", help="print each message's JSON")
    parser.add_argument("--count", type=int, default=0, metavar="N", help="exit after N messages")
    client.add_arguments(parser)


def describe(kind: str, obj: dict) -> str:
    if kind == "acks":
        state = "ok" if obj.get("ok") else f"FAILED {obj.get('error')}"
        gen = f" gen={obj['generation']}" if obj.get("generation") is not None else ""
        ms = f" {obj['elapsed_ms']:.1f}ms" if obj.get("elapsed_ms") is not None else ""
        return f"ack    {obj.get('op')} {obj.get('id')} {state}{gen}{ms}"
    if kind == "drops":
        counts = " ".join(f"{k}={v}" for k, v in sorted(obj.get("counts", {}).items()))
        return (f"drops  {len(obj.get('events', []))} events {counts} "
                f"suppressed={obj.get('suppressed', 0)} lost={obj.get('lost', 0)}")
    links = obj.get("links", [])
    part = f" (part {obj['part']}/{obj['parts']})" if obj.get("parts", 1) > 1 else ""
    return (f"links  {len(links)} counters, {sum(x['packets'] for x in links):,} packets, "
            f"{sum(sum(x['drops'].values()) for x in links):,} drops{part}")


def run(args: argparse.Namespace) -> int:
    kinds = ([k for k in ("acks", "drops", "links") if getattr(args, k)]
             or ["acks", "drops", "links"])

    async def go(box: engine.MoaClient) -> int:
        feeds = {"acks": box.acks, "drops": box.drops, "links": box.link_stats}
        done = asyncio.Event()
        seen = 0

        async def follow(kind: str, feed: engine.Feed) -> None:
            nonlocal seen
            async for message in feed:
                obj = json.loads(schemas.encode(message))
                print(json.dumps({kind: obj}) if args.json else describe(kind, obj), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    done.set()

        async with contextlib.AsyncExitStack() as stack:
            opened = [(kind, await stack.enter_async_context(feeds[kind]())) for kind in kinds]
            print(f"watching {', '.join(feed.subject for _, feed in opened)}", file=sys.stderr,
                  flush=True)
            tasks = [asyncio.create_task(follow(kind, feed)) for kind, feed in opened]
            try:
                await done.wait()
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return 0

    return client.run_engine(args, go, lambda code: code)
