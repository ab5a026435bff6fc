"""The `moa` client commands and `moa serve`, as a user runs them, against a real nats-server.

The service side uses RecordingFakeDatapath (these tests are about the CLI's requests, replies and
exit status, not the kernel)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

import schemas
from moa_bus import cmd_serve, cmd_set, cmd_show
from moa_bus.natsserver import NatsServer, free_port
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.test_bus_support import RecordingFakeDatapath, materialize_doc, running_service

pytestmark = pytest.mark.nats


def _host() -> str:
    return f"clitest{os.getpid()}"


async def moa(*argv: str, stdin: bytes | None = None, env: dict | None = None,
              timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moa_bus.cli", *argv,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_req_prints_reply_and_exits_1_on_error_ack(nats_server: NatsServer, tmp_path: Path) -> None:
    host = _host()
    base = ("--nats", nats_server.url, "--host", host)
    async with running_service(nats_server, RecordingFakeDatapath(), host):
        f = tmp_path / "m.json"
        f.write_text(json.dumps(materialize_doc("c1", 100)))
        rc, out, err = await moa("req", f"moa.{host}.materialize", f"@{f}", *base)
        assert rc == 0, err
        assert json.loads(out)["ok"] is True
        rc, out, err = await moa("req", f"moa.{host}.dematerialize", '{"id": "missing"}', *base)
        assert rc == 1
        ack = json.loads(out)
        assert ack["ok"] is False and ack["error"]["code"] == "not_found"
        assert "not_found at id" in err
        rc, out, _ = await moa("req", "$SRV.PING.moa", *base)
        assert rc == 0 and json.loads(out)["name"] == "moa"
    # nobody answers any more: exit 1 with a reason
    rc, _, err = await moa("req", f"moa.{host}.status", "{}", *base, "--timeout", "1")
    assert rc == 1 and ("no service answers" in err or "no reply" in err)


async def test_client_commands_round_trip(nats_server: NatsServer, tmp_path: Path) -> None:
    host, dp = _host(), RecordingFakeDatapath()
    base = ("--nats", nats_server.url, "--host", host)
    async with running_service(nats_server, dp, host):
        f = tmp_path / "m.json"
        f.write_text(json.dumps(materialize_doc("c2", 200, n_links=2, tags=["wan"])))
        rc, out, err = await moa("materialize", str(f), "--dry-run", *base)
        assert rc == 0, err
        assert "set params of vni 200" in out and "nothing applied" in out
        assert dp.changes == []
        rc, out, err = await moa("materialize", str(f), *base)
        assert rc == 0 and json.loads(out)["generation"] == 1, err
        rc, out, err = await moa("set", "l1", "latency", "50ms", "loss", "0.2", *base)
        assert rc == 0, err
        held = dp.held["c2"][0]
        assert held.links[1].emulation.latency == 50_000_000 and held.links[1].emulation.loss == 0.2
        assert held.links[0].emulation.latency == 1_000_000
        rc, out, err = await moa("set", "wan", "capacity", "10mbps", *base)  # a tag, one id held
        assert rc == 0, err
        assert [link.emulation.capacity for link in dp.held["c2"][0].links] == [10**7, 10**7]
        rc, out, err = await moa("status", "c2", *base)
        assert rc == 0 and json.loads(out)["materializations"][0]["id"] == "c2"
        rc, out, err = await moa("show", *base, env={"COLUMNS": "200"})
        assert rc == 0 and "c2" in out and "l1" in out and "50ms" in out, out
        rc, out, err = await moa("dematerialize", "c2", *base)
        assert rc == 0 and json.loads(out)["op"] == "dematerialize"
        rc, out, err = await moa("dematerialize", "c2", *base)
        assert rc == 1
        assert [c[0] for c in dp.changes] == ["materialize", "update", "update", "dematerialize"]


async def test_materialize_rejects_bad_file_locally(nats_server: NatsServer, tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(materialize_doc("b", 16777216)))
    rc, _, err = await moa("materialize", str(f), "--nats", nats_server.url, "--host", _host())
    assert rc == 1
    assert "links[0].endpoints[0].vni" in err


async def test_watch_prints_acks(nats_server: NatsServer) -> None:
    host = _host()
    base = ("--nats", nats_server.url, "--host", host)
    async with running_service(nats_server, RecordingFakeDatapath(), host):
        watcher = asyncio.create_task(moa("watch", "--acks", "--count", "1", *base))
        await asyncio.sleep(1.5)  # let it subscribe (it says so on stderr)
        rc, _, _ = await moa("req", f"moa.{host}.materialize", json.dumps(materialize_doc("w", 300)), *base)
        assert rc == 0
        rc, out, err = await watcher
        assert rc == 0, err
        assert out.startswith("ack    materialize w ok gen=1")


async def test_bounded_connect_failure_message() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    rc, _, err = await moa("status", "--nats", url, "--connect-timeout", "1", timeout=30)
    assert rc == 1
    assert f"cannot connect to NATS at {url} within 1 s" in err


async def test_serve_embedded_server_start_and_stop(tmp_path: Path) -> None:
    """No NATS URL: serve starts nats-server (JetStream, state dir), says so, answers, stops it."""
    port = free_port()
    said: list[str] = []
    stop = asyncio.Event()
    dp = RecordingFakeDatapath()

    async def factory(settings):
        return dp

    settings = cmd_serve.ServeSettings(host=_host(), state_dir=str(tmp_path / "js"), embedded_port=port)
    task = asyncio.create_task(cmd_serve.serve(settings, factory, stop, said.append))
    import nats
    for _ in range(100):
        if any("serving" in s for s in said):
            break
        await asyncio.sleep(0.05)
    assert any("embedded nats-server on nats://127.0.0.1:" + str(port) in s for s in said), said
    nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=2, max_reconnect_attempts=1)
    try:
        ping = json.loads((await nc.request("$SRV.PING.moa", b"", timeout=2)).data)
        assert ping["metadata"]["host"] == _host()
        streams = await nc.jetstream().streams_info()
        assert [s.config.name for s in streams] == [f"MOA_EVENTS_{_host()}"]
    finally:
        await nc.close()
    assert (tmp_path / "js" / "jetstream").is_dir()
    stop.set()
    assert await asyncio.wait_for(task, 20) == 0
    assert dp.closed  # handles released; the fake's state (the "kernel") stays
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


async def test_serve_subprocess_without_uplink_starts_nothing(tmp_path: Path) -> None:
    port = free_port()
    rc, _, err = await moa("serve", "--host", _host(), "--state-dir", str(tmp_path / "js"),
                           "--embedded-port", str(port), env={"MOA_UPLINK": "", "MOA_NATS_URL": ""})
    assert rc == 2  # a settings error (tests/test_serve_exit.py has every one)
    assert "--uplink DEV is required" in err
    assert "embedded nats-server" not in err and not (tmp_path / "js").exists()
    with pytest.raises(OSError):  # no embedded server was started
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def _serve_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cmd_serve.add_arguments(p)
    return p.parse_args(argv)


def test_serve_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "moa.toml"
    conf.write_text('host = "fromfile"\nuplink = "eth9"\nallow_loss_only = true\n'
                    'stats_interval = 2.5\nnats = "nats://10.1.2.3:4222"\n'
                    'connect_timeout = 0.7\n')
    monkeypatch.delenv("MOA_NATS_URL", raising=False)
    monkeypatch.delenv("MOA_HOST", raising=False)
    monkeypatch.setenv("MOA_UPLINK", "eth7")
    s = cmd_serve.resolve(_serve_args(["--config", str(conf), "--stats-interval", "0.5"]))
    assert (s.host, s.uplink, s.allow_loss_only, s.stats_interval, s.nats) == (
        "fromfile", "eth7", True, 0.5, "nats://10.1.2.3:4222")
    assert s.connect_timeout == 0.7  # no flag given: the file's value, not the flag's default
    s = cmd_serve.resolve(_serve_args(["--config", str(conf), "--connect-timeout", "2"]))
    assert s.connect_timeout == 2.0
    conf.write_text('colour = "blue"\n')
    with pytest.raises(cmd_serve.SettingsError, match="unknown key 'colour'"):
        cmd_serve.resolve(_serve_args(["--config", str(conf)]))
    with pytest.raises(cmd_serve.SettingsError, match="one NATS subject token"):
        cmd_serve.resolve(_serve_args(["--host", "a.b"]))


def test_set_parses_pairs_and_picks_targets() -> None:
    assert cmd_set.parse_params(["latency", "50ms", "loss", "0.01", "queue", "none",
                                 "capacity", "1000", "reorder", "on"]) == {
        "latency": "50ms", "loss": 0.01, "queue": None, "capacity": 1000, "reorder": True}
    with pytest.raises(cmd_set.UsageError, match="no value"):
        cmd_set.parse_params(["latency"])
    with pytest.raises(cmd_set.UsageError, match="unknown parameter 'delay'"):
        cmd_set.parse_params(["delay", "5ms"])
    status = {"materializations": [
        {"id": "a", "links": [{"id": "x"}, {"id": "y"}]}, {"id": "b", "links": [{"id": "y"}]}]}
    assert cmd_set.pick_target(status, "x", None) == ("a", {"link": "x"})
    assert cmd_set.pick_target(status, "wan", "b") == ("b", {"tag": "wan"})
    with pytest.raises(cmd_set.UsageError, match="--id"):
        cmd_set.pick_target(status, "y", None)
    with pytest.raises(cmd_set.UsageError, match="--id"):
        cmd_set.pick_target(status, "wan", None)


def test_show_table_has_rates() -> None:
    def status(packets: int, nbytes: int) -> schemas.StatusReply:
        c = schemas.LinkStats(materialization="m", link="l", vni=5, stage="egress",
                              packets=packets, bytes=nbytes, drops={"loss": 1})
        return schemas.StatusReply(host="h", fq_memory_bytes=0, materializations=[
            schemas.MaterializationStatus(id="m", generation=1, links=[schemas.LinkStatus(
                id="l", kind="p2p", vnis=[5, 6], emulation=schemas.Emulation(latency=10_000_000),
                counters=[c])])])
    from rich.console import Console
    console = Console(width=200, record=True)
    before = status(100, 10_000)
    console.print(cmd_show.build_table(status(300, 260_000), cmd_show.totals(before), 2.0))
    text = console.export_text()
    assert "10ms" in text and "300" in text and "100" in text  # 200 packets / 2 s
    assert "1mbps" in text  # 250,000 bytes * 8 / 2 s


def test_show_counts_a_frame_once_though_two_stages_saw_it() -> None:
    def stats(stage: str, packets: int, drops: int) -> schemas.LinkStats:
        return schemas.LinkStats(materialization="m", link="lan", vni=7, stage=stage,
                                 packets=packets, bytes=packets * 100, drops={"queue": drops})
    status = schemas.StatusReply(host="h", fq_memory_bytes=0, materializations=[
        schemas.MaterializationStatus(id="m", generation=1, links=[schemas.LinkStatus(
            id="lan", kind="lan", vnis=[7, 8, 9], emulation=schemas.Emulation(),
            counters=[stats("ingress", 50, 2), stats("egress", 48, 1)])])])
    # 50 frames left the sender's port stage (2 dropped there), 48 passed the receiver's
    # egress stage (1 dropped): 48 frames delivered, 3 lost.
    assert cmd_show.totals(status) == {("m", "lan"): (48, 4800, 3)}


def test_show_caption_has_the_box_counters_that_are_not_zero() -> None:
    status = schemas.StatusReply(host="h", fq_memory_bytes=2_000_000, materializations=[],
                                 datapath={"non_vxlan": 0, "unknown_vni": 12_345, "ringbuf_fail": 0,
                                           "handover": 0, "port_held": 30_141,
                                           "events_suppressed": 7})
    text = cmd_show.caption(status)
    assert "sch_fq worst-case memory: 2MB" in text
    assert "frames held at LAN ports: 30,141" in text and "VNI of no link: 12,345" in text
    assert "not VXLAN" not in text and "drop events lost" not in text
    assert cmd_show.caption(schemas.StatusReply(host="h", fq_memory_bytes=0,
                                                materializations=[])) is None
