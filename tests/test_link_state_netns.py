"""Link state and correlated loss (issue 13) through the whole stack on the host kernel: NATS ->
moa service -> KernelDatapath -> the classifier in a network namespace, with real pings. A link
set `down` drops every frame with the reason link_down and `up` restores it, by a parameter
update alone (no device touched); correlated loss is accepted, shown and run as its chain."""
from __future__ import annotations

import asyncio
import json
import os

import pytest

from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.subjects import Subjects
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.service import box_service
from tests.fixtures.topology import topo  # noqa: F401
from tests.test_bus_fullstack import doc, kernel_state

pytestmark = [pytest.mark.netns, pytest.mark.nats]


def _drops(status: dict, reason: str) -> int:
    (m,) = status["materializations"]
    return sum(c["drops"].get(reason, 0) for c in m["links"][0]["counters"])


async def test_down_drops_everything_with_its_reason_and_up_restores(
        topo: Testbed, nats_server) -> None:
    host = f"state{os.getpid()}"
    s = Subjects(host)
    async with box_service(nats_server, topo, host) as svc, \
            nats_client(nats_server.url) as nc:
        dp = svc.datapath
        a = await asyncio.to_thread(topo.add_endpoint, 1, 100, "192.168.100.1/24")
        b = await asyncio.to_thread(topo.add_endpoint, 2, 101, "192.168.100.2/24")

        async def req(op: str, body: dict | bytes) -> dict:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            return json.loads((await nc.request(s.op(op), data, timeout=30)).data)

        ack = await req("materialize", doc(topo, "st1", (100, 101), {}))
        assert ack["ok"], ack
        up = kernel_state(topo, dp)
        assert await asyncio.to_thread(topo.ping, a, b, 5) == (5, 5)

        ack = await req("update", {"id": "st1", "links": [
            {"link": "a-b", "emulation": {"state": "down"}}]})
        assert ack["ok"], ack
        down = kernel_state(topo, dp)
        assert down["devices"] == up["devices"] and down["pairs"] == up["pairs"]
        assert down["params"] != up["params"]
        assert (await asyncio.to_thread(topo.ping, a, b, 4, 0.2, 1))[1] == 0
        status = await req("status", b"{}")
        assert status["materializations"][0]["links"][0]["emulation"]["state"] == "down"
        assert _drops(status, "link_down") >= 4 and _drops(status, "loss") == 0

        ack = await req("update", {"id": "st1", "links": [
            {"tag": "wan", "emulation": {"state": "up"}}]})
        assert ack["ok"], ack
        assert kernel_state(topo, dp) == up  # the very parameters it had, slots and all
        assert await asyncio.to_thread(topo.ping, a, b, 5) == (5, 5)

        # Correlated loss: accepted, shown, and run as the two-state chain (datapath/emulation.py).
        ack = await req("update", {"id": "st1", "links": [
            {"link": "a-b", "emulation": {"loss": 0.3, "loss_correlation": 0.5}}]})
        assert ack["ok"], ack
        status = await req("status", b"{}")
        emu = status["materializations"][0]["links"][0]["emulation"]
        assert (emu["loss"], emu["loss_correlation"]) == (0.3, 0.5)
        raw = dp.classifier.raw_links([100])[100]
        link = dp.classifier.abi.Link.from_buffer_copy(raw)
        stage = link.stage[0]
        assert stage.loss_model == int(dp.classifier.abi.LossModel.GILBERT_ELLIOTT)
        assert stage.ge.loss_bad == 1 << 32 and stage.ge.loss_good == 0

        # Refused and named; the box stays as it was.
        before = kernel_state(topo, dp)
        ack = await req("update", {"id": "st1", "links": [
            {"link": "a-b", "emulation": {"state": "sideways"}}]})
        assert not ack["ok"] and ack["error"]["field"] == "links[0].emulation.state", ack
        assert "one of: up, down" in ack["error"]["message"]
        assert kernel_state(topo, dp) == before
        assert (await req("dematerialize", {"id": "st1"}))["ok"]
