#!/usr/bin/env python3
"""An example realization engine on moa's engine client (moa_bus/engine.py).

It realizes a small experiment on one moa box, the way a testbed's engine would:

1. builds the experiment's links as moa's typed messages (a chain of point-to-point links
   between the nodes given, tagged "wan", and one LAN of all of them) and checks them locally;
2. asks the box for its plan (a dry run: nothing applied);
3. sends the materialization through the durable path (JetStream) and waits for its ack on
   the box's ack feed (subscribed before sending, so the ack cannot be missed);
4. reads the box's status: every link, its VNIs and counters;
5. changes the loss of every "wan" link with one update (request/reply: the reply is the ack);
6. reads one batch of link telemetry;
7. dematerializes (unless --keep) and says what it did, in one line per step.

    python examples/engine.py --nats nats://127.0.0.1:4222 --host box1 \\
        --node 10.0.0.11 --node 10.0.0.12 --node 10.0.0.13 --vni 5000

Exit status: 0 when every step went as expected, 1 otherwise (the line says which step).
A box without sch_fq (loss-only) takes this experiment: it asks for loss only.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

import schemas
from moa_bus.engine import Feed, MoaClient, MoaError


def experiment(mid: str, nodes: list[str], vni: int, loss: float) -> schemas.Materialize:
    """A chain of point-to-point links node i -- node i+1 (tag "wan", `loss` each) and a LAN
    of every node; VNIs from `vni` up, one per endpoint."""
    links = []
    for i in range(len(nodes) - 1):
        links.append(schemas.Link(
            id=f"wan{i}", tags=["wan"], emulation=schemas.Emulation(loss=loss),
            endpoints=[schemas.Endpoint(vni=vni + 2 * i, remote=nodes[i]),
                       schemas.Endpoint(vni=vni + 2 * i + 1, remote=nodes[i + 1])]))
    first = vni + 2 * (len(nodes) - 1)
    if len(nodes) >= 3:
        links.append(schemas.Link(id="lan", endpoints=[
            schemas.Endpoint(vni=first + k, remote=node) for k, node in enumerate(nodes)]))
    # Checked here as the box will check it: a mistake is found before anything is sent.
    return schemas.validate(schemas.Materialize(id=mid, links=links))


async def ack_of(acks: Feed[schemas.Ack], mid: str, op: str, timeout: float) -> schemas.Ack:
    """The next ack of `op` on `mid` (other engines' acks on the same box are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ack = await acks.next(timeout=max(deadline - loop.time(), 0.001))
        if ack.id == mid and ack.op == op:
            return ack


async def realize(args: argparse.Namespace) -> int:
    m = experiment(args.id, args.node, args.vni, args.loss)
    async with await MoaClient.connect(args.nats, args.host, timeout=args.timeout) as box:
        plan = await box.plan(m)
        print(f"plan: {len(plan)} operation(s) to realize {len(m.links)} link(s) of {m.id}")

        async with box.acks() as acks:
            seq = await box.send_event("materialize", m)
            ack = await ack_of(acks, m.id, "materialize", args.timeout)
        if not ack.ok:
            print(f"materialize: refused: {ack.error}")
            return 1
        print(f"materialize: event {seq} acked ok, generation {ack.generation}, "
              f"{ack.elapsed_ms} ms")

        status = await box.status(m.id)
        (held,) = status.materializations
        vnis = sorted(v for link in held.links for v in link.vnis)
        print(f"status: {len(held.links)} link(s), VNIs {vnis[0]}-{vnis[-1]}, generation "
              f"{held.generation}, {'converged' if held.error is None else held.error}")
        if held.generation != ack.generation or held.error is not None:
            return 1

        update = schemas.Update(id=m.id, links=[schemas.LinkUpdate(
            tag="wan", emulation=schemas.EmulationPatch(loss=args.new_loss))])
        ack = await box.update(update)
        if not ack.ok:
            print(f"update: refused: {ack.error}")
            return 1
        status = await box.status(m.id)
        losses = {link.id: link.emulation.loss for link in status.materializations[0].links}
        print(f"update: ok, generation {ack.generation}; loss now {losses}")

        async with box.link_stats() as stats:
            batch = await stats.next(timeout=args.timeout)
        mine = [s for s in batch.links if s.materialization == m.id]
        print(f"telemetry: {len(mine)} counter(s) of {m.id} from {batch.host}, "
              f"{sum(s.packets for s in mine)} packet(s), "
              f"{sum(sum(s.drops.values()) for s in mine)} drop(s)")

        if not args.keep:
            ack = await box.dematerialize(m.id)
            print(f"dematerialize: {'ok' if ack.ok else ack.error}, generation {ack.generation}")
            if not ack.ok:
                return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nats", default=None, help="NATS URL (default nats://127.0.0.1:4222)")
    p.add_argument("--host", default=None, help="the box's id (default: MOA_HOST or hostname)")
    p.add_argument("--node", action="append", required=True, metavar="ADDR",
                   help="an experiment node's VTEP address (give it 2 or more times)")
    p.add_argument("--vni", type=int, default=5000, help="the first VNI to use (5000)")
    p.add_argument("--id", default="example-engine", help="the materialization id")
    p.add_argument("--loss", type=float, default=0.01, help="loss of the wan links at first")
    p.add_argument("--new-loss", type=float, default=0.05, help="loss after the update")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per step")
    p.add_argument("--keep", action="store_true", help="leave the experiment on the box")
    args = p.parse_args(argv)
    if len(args.node) < 2:
        p.error("give --node at least twice")
    try:
        return asyncio.run(realize(args))
    except (MoaError, ConnectionError, schemas.InvalidMessage) as e:
        print(f"engine: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
