"""The box is the truth under faults (issue 10): a fault at every operation index of a plan,
each on a box restarted just before (a fresh process state: nothing remembered, everything
read from the kernel), leaves the box identical to what it was (a deep compare of devices with
their attributes, qdiscs, tc filters, map entries, pair entries, pins), and the ack names the
failed operation. The faults are injected by failpoints (datapath/faults.py) that raise what
the real failure raises (a netlink error, a map update error, sch_fq refused), before the
operation or after it applied; the real ones that can be caused here are tested as well: a
device name taken by someone else (netlink), a full link map (map update). Real kernel,
real KernelDatapath opened as `moa serve` opens it.
"""
from __future__ import annotations

import json
import os

import pytest

import schemas
from datapath import faults
from datapath.api import DatapathConfig, KernelDatapath
from datapath.classifier import ClassifierConfig
from moa_bus.lab.host_testbed import BOX_ADDR, UPLINK, Testbed, sh
from moa_bus.service.applier import Applier
from moa_bus.service.box import OpenedBox, open_kernel_box
from moa_bus.service.desired import DesiredState
from moa_bus.service.status import StatusPages
from tests.fixtures.moabox import box_state, moa_devices, snapshot_diff
from tests.fixtures.service import box_settings
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = pytest.mark.netns

KINDS = ("netlink", "map", "qdisc")


def p2p(link: str, a: int, b: int, remote_b: str = "10.201.0.12", loss: float = 0.0) -> dict:
    return {"id": link, "tags": ["t"], "emulation": {"loss": loss},
            "endpoints": [{"vni": a, "remote": "10.201.0.11"}, {"vni": b, "remote": remote_b}]}


def lan(link: str, vnis: list[int], loss: float = 0.0) -> dict:
    return {"id": link, "emulation": {"loss": loss},
            "endpoints": [{"vni": v, "remote": f"10.201.0.{101 + k}"} for k, v in enumerate(vnis)]}


# Before: four point-to-point links and two LANs. After: one link's loss changed, one link
# gone, one link's VTEP re-created (its remote moved), a LAN member gone and another added, a
# LAN gone, a new link and a new LAN: every kind of operation, teardown and build.
BEFORE = {"id": "a", "links": [
    p2p("keep", 100, 101, loss=0.1), p2p("gone", 102, 103), p2p("moved", 104, 105),
    p2p("same", 108, 109), lan("lan", [200, 201, 202, 203]), lan("lan2", [210, 211, 212])]}
AFTER = {"id": "a", "links": [
    p2p("keep", 100, 101, loss=0.2), p2p("moved", 104, 105, remote_b="10.201.0.99"),
    p2p("same", 108, 109), p2p("new", 106, 107), lan("lan", [200, 201, 202, 204]),
    lan("lan3", [220, 221, 222], loss=0.3)]}


class Box:
    """A box opened as `moa serve` opens it, with the applier the service would run."""

    def __init__(self, topo: Testbed, host: str, **settings: object) -> None:
        self.settings = box_settings(topo, host, **settings)
        self.host = host
        self.opened: OpenedBox | None = None
        self.applier: Applier | None = None

    async def restart(self) -> OpenedBox:
        await self.close()
        self.opened = await open_kernel_box(self.settings)
        self.applier = Applier(self.opened.datapath, self.opened.desired, self.host)
        self.applier.start()
        return self.opened

    async def send(self, op: str, doc: dict) -> schemas.Ack:
        assert self.applier is not None
        outcome = await self.applier.submit(op, json.dumps(doc).encode())
        assert outcome.ack is not None
        return outcome.ack

    async def status(self) -> schemas.StatusReply:
        """What the service's status endpoint answers (one page: this box is small)."""
        assert self.opened is not None and self.applier is not None
        pages = StatusPages(self.opened.desired, self.opened.datapath, self.host,
                            self.applier.unconverged)
        reply = schemas.decode(schemas.StatusReply,
                               await pages.page(schemas.StatusRequest(), 1 << 20))
        assert reply.next is None
        return reply

    async def close(self) -> None:
        if self.applier is not None:
            await self.applier.drain()
            self.applier = None
        if self.opened is not None:
            await self.opened.datapath.close()
            self.opened = None


async def test_a_fault_at_every_operation_leaves_a_restarted_box_as_it_was(topo: Testbed) -> None:
    box = Box(topo, f"faults{os.getpid()}")
    try:
        await box.restart()
        first = await box.send("materialize", BEFORE)
        assert first.ok, first
        opened = await box.restart()
        m_after = schemas.decode(schemas.Materialize, json.dumps(AFTER))
        plan = await opened.datapath.plan(m_after)
        kinds = {" ".join(op.split(" ")[:2]) for op in plan}
        assert {"delete pair", "delete VTEP", "delete bridge", "delete params", "set params",
                "create bridge", "create VTEP", "attach mv204", "create pair"} <= kinds, plan
        reference = box_state(topo.box, topo.pin_root)
        k = 0
        for i, op in enumerate(plan):
            for where in ("before", "after"):
                kind = KINDS[k % len(KINDS)]
                k += 1
                opened = await box.restart()
                assert opened.unconverged == {}
                faults.arm(f"plan.{where}/a/{i}=error:{kind}")
                try:
                    ack = await box.send("materialize", AFTER)
                finally:
                    faults.disarm()
                where_ = f"operation {i} ({op}), {where}, {kind}"
                assert not ack.ok and ack.error is not None, where_
                assert ack.error.code == "apply_failed", (where_, ack)
                assert f"operation {i + 1} ({op}) failed" in ack.error.message, (where_, ack)
                assert "rollback incomplete" not in ack.error.message, (where_, ack)
                diff = snapshot_diff(reference, box_state(topo.box, topo.pin_root))
                assert diff == [], (where_, diff[:10])
                held = box.opened.desired.get("a")  # type: ignore[union-attr]
                assert held is not None and held.generation == first.generation, where_
        # and without a fault the same message converges the box, restarted once more
        await box.restart()
        ack = await box.send("materialize", AFTER)
        assert ack.ok and ack.generation == first.generation + 1, ack
        assert await box.opened.datapath.plan(m_after) == []  # type: ignore[union-attr]
    finally:
        await box.close()


async def test_real_faults_roll_back_on_a_restarted_box(topo: Testbed) -> None:
    """Faults the kernel itself raises: a device name someone else holds (the VTEP's creation
    fails), and a link map too small for the new links (a map update fails)."""
    box = Box(topo, f"realf{os.getpid()}")
    try:
        await box.restart()
        assert (await box.send("materialize", BEFORE)).ok
        await box.restart()
        sh("ip", "-n", topo.box, "link", "add", "mv220", "type", "veth", "peer", "name", "fx220")
        reference = box_state(topo.box, topo.pin_root)
        ack = await box.send("materialize", AFTER)
        assert ack.error is not None and ack.error.code == "apply_failed", ack
        assert "create VTEP mv220" in ack.error.message and "not moa's" in ack.error.message
        assert snapshot_diff(reference, box_state(topo.box, topo.pin_root)) == []
        sh("ip", "-n", topo.box, "link", "del", "fx220")
    finally:
        await box.close()


async def test_a_full_link_map_rolls_back(topo: Testbed) -> None:
    """moa_links sized for 16 VNIs holds BEFORE's 15; AFTER with one more LAN needs 18: a real
    map update error, in the middle of the parameter writes."""
    dp = await KernelDatapath.start(DatapathConfig(
        uplink=UPLINK, local=BOX_ADDR, netns=topo.box, pin_root=topo.pin_root,
        allow_loss_only=True, p2p_mode="vtep", classifier=ClassifierConfig(max_links=16)))
    applier = Applier(dp, DesiredState(), "fullm")
    applier.start()
    try:
        first = await applier.submit("materialize", json.dumps(BEFORE).encode())
        assert first.ok, first.ack
        reference = box_state(topo.box, topo.pin_root)
        bigger = {**AFTER, "links": [*AFTER["links"], lan("lan4", [230, 231, 232])]}
        out = await applier.submit("materialize", json.dumps(bigger).encode())
        assert out.ack is not None and out.ack.error is not None
        assert out.ack.error.code == "apply_failed", out.ack
        assert "no free link slot" in out.ack.error.message, out.ack
        assert snapshot_diff(reference, box_state(topo.box, topo.pin_root)) == []
    finally:
        await applier.drain()
        await dp.teardown()
    assert moa_devices(topo.box) == {}


async def test_an_incomplete_rollback_reads_the_box_again_and_says_what_differs(
        topo: Testbed) -> None:
    """Operation 8 fails and the undoing of operation 3 (a VTEP's deletion) fails too, and with
    it the undoing of its pair: the ack (rollback_incomplete) names what could not be undone
    and what the box, read again, lacks of its previous state; status reports it; sending the
    previous content again repairs the box."""
    box = Box(topo, f"incomp{os.getpid()}")
    try:
        await box.restart()
        first = await box.send("materialize", BEFORE)
        assert first.ok
        reference = box_state(topo.box, topo.pin_root)
        opened = await box.restart()
        plan = await opened.datapath.plan(schemas.decode(schemas.Materialize, json.dumps(AFTER)))
        faults.arm("plan.before/a/8=error:netlink,plan.revert/a/3=error:map")
        try:
            ack = await box.send("materialize", AFTER)
        finally:
            faults.disarm()
        assert ack.error is not None and ack.error.code == "rollback_incomplete", ack
        text = ack.error.message
        assert f"operation 9 ({plan[8]}) failed" in text
        assert f"rollback incomplete: {plan[3]}" in text  # what could not be undone
        assert plan[3].startswith("delete VTEP mv103") and "delete pair" in plan[0], plan[:4]
        assert "Read again, the box differs from its previous state by 2 operation(s): " \
               "create VTEP mv103 VNI 103" in text and "create pair mv102 <-> mv103" in text
        assert snapshot_diff(reference, box_state(topo.box, topo.pin_root)) != []
        (m,) = (await box.status()).materializations
        assert m.generation == first.generation and m.error == text
        # the previous content again: the one missing operation, then the box is as before
        again = await box.send("materialize", BEFORE)
        assert again.ok and again.generation == first.generation, again
        # all as before but the re-made VTEP's MAC: the kernel picked a new one (the old one
        # went with the device that could not be put back)
        diff = snapshot_diff(reference, box_state(topo.box, topo.pin_root))
        assert [d.split(":")[0] for d in diff] == [".devices.mv103.address"], diff
        assert (await box.status()).materializations[0].error is None
    finally:
        await box.close()
