"""The `moa` client commands and `moa serve`, as a user runs them, against a real nats-server
and the real box: the testbed's box namespace and the real KernelDatapath (loss-only: this host
has no sch_fq), opened as `moa serve` opens it (tests/fixtures/service.py). What the commands
change is checked in the kernel."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from pathlib import Path

import nats
import pytest

import schemas
from moa_bus.cli import serve as serve_cli
from moa_bus.cli import set as set_verb
from moa_bus.cli import show
from moa_bus.lab.host_testbed import Testbed
from moa_bus.service.box import open_kernel_box
from moa_bus.service.embedded_nats import NatsServer, free_port
from moa_bus.service.serve_loop import serve
from moa_bus.service.settings import SettingsError
from tests.fixtures.docs import materialize, materialize_doc, with_loss
from tests.fixtures.moabox import moa_devices, vni_keys
from tests.fixtures.nats import nats_client, nats_server  # noqa: F401
from tests.fixtures.processes import run_moa
from tests.fixtures.service import box_service, box_settings, kernel_holds
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = pytest.mark.nats


def _host() -> str:
    return f"clitest{os.getpid()}"


async def moa(*argv: str, stdin: bytes | None = None, env: dict | None = None,
              timeout: float = 60) -> tuple[int, str, str]:
    return await run_moa(*argv, stdin=b"" if stdin is None else stdin, timeout=timeout,
                         env={**os.environ, **(env or {})})


@pytest.mark.netns
async def test_req_prints_reply_and_exits_1_on_error_ack(nats_server: NatsServer, topo: Testbed,
                                                         tmp_path: Path) -> None:
    host = _host()
    base = ("--nats", nats_server.url, "--host", host)
    doc = materialize_doc("c1", 100)
    async with box_service(nats_server, topo, host):
        f = tmp_path / "m.json"
        f.write_text(json.dumps(doc))
        rc, out, err = await moa("req", f"moa.{host}.materialize", f"@{f}", *base)
        assert rc == 0, err
        ack = json.loads(out)
        assert ack["ok"] is True and ack["generation"] == 1, ack
        async with nats_client(nats_server.url) as nc:
            await kernel_holds(nc, host, topo, doc)
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


@pytest.mark.netns
async def test_client_commands_round_trip(nats_server: NatsServer, topo: Testbed,
                                          tmp_path: Path) -> None:
    host = _host()
    base = ("--nats", nats_server.url, "--host", host)
    doc = materialize_doc("c2", 200, n_links=2, tags=["wan"])
    async with box_service(nats_server, topo, host) as svc, nats_client(nats_server.url) as nc:
        f = tmp_path / "m.json"
        f.write_text(json.dumps(doc))
        plan = await svc.datapath.plan(materialize(doc))
        rc, out, err = await moa("materialize", str(f), "--dry-run", *base)
        assert rc == 0, err
        # the box's own plan, numbered, and nothing applied
        assert [line.split(None, 1)[1] for line in out.splitlines()[:-1]] == plan, out
        assert f"{len(plan)} operation(s); nothing applied (dry run)" in out
        assert await asyncio.to_thread(moa_devices, topo.box) == {}
        assert vni_keys(topo.pin_root) == set() and svc.desired.get("c2") is None

        rc, out, err = await moa("materialize", str(f), *base)
        assert rc == 0 and json.loads(out)["generation"] == 1, err
        await kernel_holds(nc, host, topo, doc)

        rc, out, err = await moa("set", "l1", "loss", "0.2", *base)  # a link, found by id
        assert rc == 0 and json.loads(out)["generation"] == 2, err
        now = with_loss(doc, 0.2, ["l1"])
        await kernel_holds(nc, host, topo, now)

        # latency on a loss-only box: refused, exit 1, nothing changes
        rc, out, err = await moa("set", "l0", "latency", "50ms", *base)
        assert rc == 1 and json.loads(out)["error"]["code"] == "unsupported", (out, err)
        assert "unsupported at links[0].emulation.latency" in err
        await kernel_holds(nc, host, topo, now)

        rc, out, err = await moa("set", "wan", "loss", "0.05", *base)  # a tag, one id held
        assert rc == 0 and json.loads(out)["generation"] == 3, err
        now = with_loss(doc, 0.05)
        await kernel_holds(nc, host, topo, now)

        rc, out, err = await moa("status", "c2", *base)
        assert rc == 0, err
        (st,) = json.loads(out)["materializations"]
        assert st["id"] == "c2" and st["generation"] == 3
        assert [(link["id"], link["emulation"]["loss"]) for link in st["links"]] == [
            ("l0", 0.05), ("l1", 0.05)]
        rc, out, err = await moa("show", *base, env={"COLUMNS": "200"})
        assert rc == 0 and "c2" in out and "l1" in out and "0.05" in out, (out, err)
        # one direction of l1 on its own, shown as a row of its own, then back to the link's
        vni = st["links"][1]["vnis"][1]
        rc, out, err = await moa("set", "l1", "--endpoint", str(vni), "loss", "0.5", *base)
        assert rc == 0 and json.loads(out)["generation"] == 4, (out, err)
        rc, out, err = await moa("status", "c2", *base)
        (link,) = [x for x in json.loads(out)["materializations"][0]["links"] if x["id"] == "l1"]
        assert link["emulation"]["loss"] == 0.05, link
        assert [(d["vni"], d["emulation"]["loss"]) for d in link["directions"]] == [(vni, 0.5)]
        rc, out, err = await moa("show", *base, env={"COLUMNS": "200"})
        assert rc == 0 and f"to {vni}" in out and "0.5 " in out, (out, err)
        rc, out, err = await moa("set", "l1", "--endpoint", str(vni), "loss", "inherit", *base)
        assert rc == 0 and json.loads(out)["generation"] == 5, (out, err)
        rc, out, err = await moa("status", "c2", *base)
        assert all(x["directions"] == [] for x in json.loads(out)["materializations"][0]["links"])
        await kernel_holds(nc, host, topo, now)
        rc, out, err = await moa("dematerialize", "c2", *base)
        assert rc == 0 and json.loads(out)["op"] == "dematerialize", err
        assert json.loads(out)["generation"] == 6
        await kernel_holds(nc, host, topo)  # nothing of moa's left
        rc, out, err = await moa("dematerialize", "c2", *base)
        assert rc == 1 and json.loads(out)["error"]["code"] == "not_found"


async def test_materialize_rejects_bad_file_locally(nats_server: NatsServer,
                                                    tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(materialize_doc("b", 16777216)))
    rc, _, err = await moa("materialize", str(f), "--nats", nats_server.url, "--host", _host())
    assert rc == 1
    assert "links[0].endpoints[0].vni" in err


@pytest.mark.netns
async def test_watch_prints_acks(nats_server: NatsServer, topo: Testbed) -> None:
    host = _host()
    base = ("--nats", nats_server.url, "--host", host)
    async with box_service(nats_server, topo, host):
        watcher = asyncio.create_task(moa("watch", "--acks", "--count", "1", *base))
        await asyncio.sleep(1.5)  # let it subscribe (it says so on stderr)
        rc, _, _ = await moa("req", f"moa.{host}.materialize",
                             json.dumps(materialize_doc("w", 300)), *base)
        assert rc == 0
        rc, out, err = await watcher
        assert rc == 0, err
        assert out.startswith("ack    materialize w ok gen=1")


async def test_bounded_connect_failure_message() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    rc, _, err = await moa("status", "--nats", url, "--connect-timeout", "1", timeout=30)
    assert rc == 1
    assert f"cannot connect to NATS at {url} within 1 s" in err


@pytest.mark.netns
async def test_serve_embedded_server_start_and_stop(topo: Testbed) -> None:
    """No NATS URL: serve starts nats-server (JetStream, store under the state dir), says so,
    answers over it with the real box, and on stop takes the server down and leaves the box's
    kernel state in place."""
    port = free_port()
    host = _host()
    said: list[str] = []
    stop = asyncio.Event()
    settings = box_settings(topo, host, None, embedded_port=port)
    task = asyncio.create_task(serve(settings, open_kernel_box, stop,
                                               said.append))
    try:
        for _ in range(600):
            if any("serving" in s for s in said) or task.done():
                break
            await asyncio.sleep(0.05)
        assert any("embedded nats-server on nats://127.0.0.1:" + str(port) in s for s in said), said
        doc = materialize_doc("e1", 100)
        # the embedded server admits the holder of its credential only (tests/test_bus_auth.py)
        nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=2,
                                max_reconnect_attempts=1,
                                nkeys_seed=str(Path(topo.state_dir) / "local.nk"))
        try:
            ping = json.loads((await nc.request("$SRV.PING.moa", b"", timeout=2)).data)
            assert ping["metadata"]["host"] == host
            streams = await nc.jetstream().streams_info()
            # the events stream, and the object store of documents larger than a message
            assert sorted(s.config.name for s in streams) == [
                f"MOA_EVENTS_{host}", f"OBJ_MOA_DOCS_{host}"]
            ack = json.loads((await nc.request(f"moa.{host}.materialize",
                                               json.dumps(doc).encode(), timeout=30)).data)
            assert ack["ok"] is True and ack["generation"] == 1, ack
            await kernel_holds(nc, host, topo, doc)
        finally:
            await nc.close()
        assert (Path(topo.state_dir) / "nats" / "jetstream").is_dir()
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    # the datapath was closed, not torn down: the kernel keeps the link
    assert await asyncio.to_thread(moa_devices, topo.box) == {"mv100": "moa:e1:l0",
                                                              "mv101": "moa:e1:l0"}
    assert vni_keys(topo.pin_root) == {100, 101}
    with pytest.raises(OSError):  # the embedded server went away with it
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
    serve_cli.add_arguments(p)
    return p.parse_args(argv)


def test_serve_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "moa.toml"
    conf.write_text('host = "fromfile"\nuplink = "eth9"\nallow_loss_only = true\n'
                    'stats_interval = 2.5\nnats = "nats://10.1.2.3:4222"\n'
                    'connect_timeout = 0.7\n')
    monkeypatch.delenv("MOA_NATS_URL", raising=False)
    monkeypatch.delenv("MOA_HOST", raising=False)
    monkeypatch.setenv("MOA_UPLINK", "eth7")
    s = serve_cli.settings_from_args(
        _serve_args(["--config", str(conf), "--stats-interval", "0.5"]))
    assert (s.host, s.uplink, s.allow_loss_only, s.stats_interval, s.nats) == (
        "fromfile", "eth7", True, 0.5, "nats://10.1.2.3:4222")
    assert s.connect_timeout == 0.7  # no flag given: the file's value, not the flag's default
    s = serve_cli.settings_from_args(
        _serve_args(["--config", str(conf), "--connect-timeout", "2"]))
    assert s.connect_timeout == 2.0
    conf.write_text('colour = "blue"\n')
    with pytest.raises(SettingsError, match="unknown key 'colour'"):
        serve_cli.settings_from_args(_serve_args(["--config", str(conf)]))
    with pytest.raises(SettingsError, match="one NATS subject token"):
        serve_cli.settings_from_args(_serve_args(["--host", "a.b"]))


def test_set_parses_pairs_and_picks_targets() -> None:
    assert set_verb.parse_params(["latency", "50ms", "loss", "0.01", "queue", "none",
                                 "capacity", "1000", "reorder", "on"]) == {
        "latency": "50ms", "loss": 0.01, "queue": None, "capacity": 1000, "reorder": True}
    assert set_verb.parse_params(["state", "DOWN", "loss", "0.1", "loss_correlation", "0.25"]) == {
        "state": "down", "loss": 0.1, "loss_correlation": 0.25}
    assert set_verb.parse_params(["distribution", "pareto", "delay_correlation", "0.5"]) == {
        "distribution": "pareto", "delay_correlation": 0.5}
    assert set_verb.parse_params(["aqm", "codel", "target", "5ms", "ecn", "on", "loss", "0"]) == {
        "loss": 0.0, "aqm": {"kind": "codel", "target": "5ms", "ecn": True}}
    with pytest.raises(set_verb.UsageError, match="give up or down"):
        set_verb.parse_params(["state", "off"])
    with pytest.raises(set_verb.UsageError, match="no value"):
        set_verb.parse_params(["latency"])
    with pytest.raises(set_verb.UsageError, match="unknown parameter 'delay'"):
        set_verb.parse_params(["delay", "5ms"])
    status = {"materializations": [
        {"id": "a", "links": [{"id": "x"}, {"id": "y"}]}, {"id": "b", "links": [{"id": "y"}]}]}
    assert set_verb.pick_target(status, "x", None) == ("a", {"link": "x"})
    assert set_verb.pick_target(status, "wan", "b") == ("b", {"tag": "wan"})
    with pytest.raises(set_verb.UsageError, match="--id"):
        set_verb.pick_target(status, "y", None)
    with pytest.raises(set_verb.UsageError, match="--id"):
        set_verb.pick_target(status, "wan", None)


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
    console.print(show.build_table(status(300, 260_000), show.totals(before), 2.0))
    text = console.export_text()
    assert "10ms" in text and "300" in text and "100" in text  # 200 packets / 2 s
    assert "1mbps" in text  # 250,000 bytes * 8 / 2 s


def test_show_says_a_link_is_down_and_its_distributions() -> None:
    status = schemas.StatusReply(host="h", fq_memory_bytes=0, materializations=[
        schemas.MaterializationStatus(id="m", generation=1, links=[schemas.LinkStatus(
            id="l", kind="p2p", vnis=[5, 6], counters=[], emulation=schemas.Emulation(
                loss=0.1, loss_correlation=0.25, state="down", latency=20_000_000,
                jitter=5_000_000, distribution="normal", delay_correlation=0.5))])])
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(show.build_table(status))
    text = console.export_text()
    assert "p2p (down)" in text and "0.1 (corr 0.25)" in text
    assert "5ms normal (corr 0.5)" in text


def test_show_has_netems_reorder_and_duplicate_and_the_copies_sent() -> None:
    c = schemas.LinkStats(materialization="m", link="l", vni=5, stage="egress", packets=1000,
                          bytes=10_000, drops={}, duplicated=12)
    status = schemas.StatusReply(host="h", fq_memory_bytes=0, materializations=[
        schemas.MaterializationStatus(id="m", generation=1, links=[schemas.LinkStatus(
            id="l", kind="p2p", vnis=[5, 6], counters=[c], emulation=schemas.Emulation(
                latency=10_000_000, duplicate=0.01, duplicate_correlation=0.3,
                reorder_early=schemas.ReorderEarly(probability=0.25, gap=5)))])])
    from rich.console import Console
    console = Console(width=240, record=True)
    console.print(show.build_table(status))
    text = console.export_text()
    assert "dup 0.01 (corr 0.3) early 0.25 gap 5" in text and "1,000 (+12 dup)" in text
    assert set_verb.parse_params(["duplicate", "0.01", "duplicate_correlation", "0.3"]) == {
        "duplicate": 0.01, "duplicate_correlation": 0.3}


def test_show_names_the_aqm() -> None:
    status = schemas.StatusReply(host="h", fq_memory_bytes=0, materializations=[
        schemas.MaterializationStatus(id="m", generation=1, links=[schemas.LinkStatus(
            id="l", kind="p2p", vnis=[5, 6], counters=[], emulation=schemas.Emulation(
                capacity=20_000_000, aqm=schemas.Aqm(kind="codel", ecn=True)))])])
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(show.build_table(status))
    assert "20mbps codel+ecn" in console.export_text()


def test_show_names_the_slots() -> None:
    ms = 1_000_000
    status = schemas.StatusReply(host="h", fq_memory_bytes=0, materializations=[
        schemas.MaterializationStatus(id="m", generation=1, links=[
            schemas.LinkStatus(id="l", kind="p2p", vnis=[5, 6], counters=[],
                               emulation=schemas.Emulation(slot=schemas.Slot(
                                   min=ms, max=3 * ms, packets=4))),
            schemas.LinkStatus(id="k", kind="p2p", vnis=[7, 8], counters=[],
                               emulation=schemas.Emulation(capacity=10**7, slot=schemas.Slot(
                                   distribution="normal", delay=10 * ms, jitter=2 * ms,
                                   bytes=9000)))])])
    from rich.console import Console
    console = Console(width=250, record=True)
    console.print(show.build_table(status))
    text = console.export_text()
    assert "unlimited slot 1ms-3ms 4p" in text
    assert "10mbps slot normal 10ms±2ms 9000B" in text
    assert show.netem_lines(status) == ["m l netem slot 1ms 3ms packets 4",
                                        "m k netem rate 10mbit slot distribution normal 10ms 2ms "
                                        "bytes 9000"]


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
    assert show.totals(status) == {("m", "lan", 7): (48, 4800, 3)}


def test_show_prints_a_row_per_direction_when_they_differ() -> None:
    """An access link 20/2 Mbit/s: the link's row for the VNI that follows it, and a row `to`
    the endpoint whose direction has parameters of its own, with that VNI's counters."""
    def stats(vni: int, packets: int) -> schemas.LinkStats:
        return schemas.LinkStats(materialization="m", link="acc", vni=vni, stage="egress",
                                 packets=packets, bytes=packets * 1000, drops={"loss": vni - 5})
    up = schemas.Emulation(capacity=2_000_000, loss=0.25)
    status = schemas.StatusReply(host="h", fq_memory_bytes=0, materializations=[
        schemas.MaterializationStatus(id="m", generation=1, links=[schemas.LinkStatus(
            id="acc", kind="p2p", vnis=[5, 6], emulation=schemas.Emulation(capacity=20_000_000),
            counters=[stats(5, 700), stats(6, 90)],
            directions=[schemas.DirectionStatus(vni=6, emulation=up)])])])
    assert show.totals(status) == {("m", "acc", 5): (700, 700_000, 0),
                                   ("m", "acc", 6): (90, 90_000, 1)}
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(show.build_table(status))
    lines = [line for line in console.export_text().splitlines() if "acc" in line]
    assert len(lines) == 2
    assert "20mbps" in lines[0] and " 5 " in lines[0] and "700" in lines[0]
    assert "2mbps" in lines[1] and "to 6" in lines[1] and "0.25" in lines[1] and "90" in lines[1]
    # one direction that has its own parameters equal to nothing else: still one row per VNI set
    status.materializations[0].links[0].directions = []
    assert len(show.rows(status.materializations[0].links[0])) == 1


def test_set_targets_one_direction() -> None:
    assert set_verb.link_update({"link": "acc"}, {"capacity": "2mbps"}, 101, []) == {
        "link": "acc", "endpoint": 101, "emulation": {"capacity": "2mbps"}}
    assert set_verb.link_update({"link": "acc"}, {}, 101, ["capacity", "queue"]) == {
        "link": "acc", "endpoint": 101, "inherit": ["capacity", "queue"], "emulation": {}}
    assert set_verb.split_inherit(["capacity", "inherit", "loss", "0.1", "queue", "inherit"]) == (
        ["loss", "0.1"], ["capacity", "queue"])
    with pytest.raises(set_verb.UsageError, match="unknown parameter 'delay'"):
        set_verb.split_inherit(["delay", "inherit"])
    with pytest.raises(set_verb.UsageError, match="needs --endpoint"):
        set_verb.link_update({"link": "acc"}, {}, None, ["capacity"])
    with pytest.raises(set_verb.UsageError, match="is a tag here"):
        set_verb.link_update({"tag": "wan"}, {"loss": 0.1}, 101, [])
    with pytest.raises(set_verb.UsageError, match="at least one"):
        set_verb.link_update({"link": "acc"}, {}, 101, [])
    with pytest.raises(set_verb.UsageError, match="unknown parameter 'delay'"):
        set_verb.link_update({"link": "acc"}, {}, 101, ["delay"])


def test_show_caption_has_the_box_counters_that_are_not_zero() -> None:
    status = schemas.StatusReply(host="h", fq_memory_bytes=2_000_000, materializations=[],
                                 datapath={"non_vxlan": 0, "unknown_vni": 12_345, "ringbuf_fail": 0,
                                           "handover": 0, "port_held": 30_141,
                                           "events_suppressed": 7})
    text = show.caption(status)
    assert "sch_fq worst-case memory: 2MB" in text
    assert "frames held at LAN ports: 30,141" in text and "VNI of no link: 12,345" in text
    assert "not VXLAN" not in text and "drop events lost" not in text
    assert show.caption(schemas.StatusReply(host="h", fq_memory_bytes=0,
                                                materializations=[])) is None


@pytest.mark.netns
async def test_set_netem_words_through_the_service(nats_server: NatsServer, topo: Testbed) -> None:
    """`moa set LINK netem loss P CORR` reaches the kernel through the real service (a loss-only
    box: delays are shown with --dry-run, which sends nothing), `moa show --netem` prints it back
    in netem's words, and a word moa does not implement is refused, exit 2, nothing sent."""
    host = _host()
    base = ("--nats", nats_server.url, "--host", host)
    doc = materialize_doc("n1", 400)
    async with box_service(nats_server, topo, host), nats_client(nats_server.url) as nc:
        rc, out, err = await moa("req", f"moa.{host}.materialize", json.dumps(doc), *base)
        assert rc == 0 and json.loads(out)["generation"] == 1, (out, err)
        rc, out, err = await moa("set", "l0", "netem", "loss", "20%", "25%", *base)
        assert rc == 0 and json.loads(out)["generation"] == 2, (out, err)
        now = with_loss(doc, 0.2)
        now["links"][0]["emulation"]["loss_correlation"] = 0.25
        await kernel_holds(nc, host, topo, now)
        rc, out, err = await moa("show", "--netem", *base)
        assert (rc, out) == (0, "n1 l0 netem loss 20% 25%\n"), (out, err)
        # delays through the CLI, not applied: the Update it would send
        rc, out, err = await moa("set", "l0", "netem", "delay", "100ms", "20ms", "distribution",
                                 "normal", "loss", "gemodel", "1%", "10%", "--dry-run", *base)
        assert rc == 0 and "nothing sent (dry run)" in err, (out, err)
        assert json.loads(out) == {"id": "n1", "links": [{"link": "l0", "emulation": {
            "latency": 100_000_000, "jitter": 20_000_000, "delay_correlation": 0.0,
            "distribution": "normal", "distribution_table": None, "loss": 0.0,
            "loss_correlation": 0.0,
            "burst": {"p": 0.01, "r": 0.1, "loss_bad": 1.0, "loss_good": 0.0}}}]}
        # refused before anything is sent: the generation stays, the kernel holds the same
        rc, out, err = await moa("set", "l0", "netem", "loss", "1%", "seed", "42", *base)
        assert (rc, out) == (2, ""), err
        assert "netem word 'seed' is not supported by moa" in err
        rc, out, err = await moa("status", "n1", *base)
        assert json.loads(out)["materializations"][0]["generation"] == 2, out
        await kernel_holds(nc, host, topo, now)
        # one direction in netem's words: its own line, its own loss in the kernel
        rc, out, err = await moa("set", "l0", "--endpoint", "401", "netem", "loss", "50%", *base)
        assert rc == 0 and json.loads(out)["generation"] == 3, (out, err)
        rc, out, err = await moa("show", "--netem", *base)
        assert (rc, out) == (0, "n1 l0 netem loss 20% 25%\n"
                                "n1 l0 --endpoint 401 netem loss 50%\n"), (out, err)
        now["links"][0]["endpoints"][1]["emulation"] = {"loss": 0.5, "loss_correlation": 0.0,
                                                         "burst": None}
        await kernel_holds(nc, host, topo, now)
        rc, out, err = await moa("dematerialize", "n1", *base)
        assert rc == 0, (out, err)
        await kernel_holds(nc, host, topo)


def test_show_has_the_sojourn_quantiles_and_the_backlog() -> None:
    """p50 and p99 are the buckets that hold them (their upper bounds); the backlog the longest
    of the row's egress stages as time, their bytes summed. Ingress stages are not the row's
    queue."""
    # 90 frames below 1.024 us, 9 in [2^19, 2^20) ns (bucket 10), 1 in [2^20, 2^21) ns.
    hist = [90] + [0] * 9 + [9, 1]
    assert show.quantile_bucket(hist, 0.5) == 0 and show.quantile_bucket(hist, 0.99) == 10
    assert show.quantile_bucket(hist, 1.0) == 11 and show.quantile_bucket([], 0.5) is None
    assert show.quantile_bucket([0, 0, 5], 0.01) == 2
    assert show.bucket_label(0) == "<1.02us" and show.bucket_label(10) == "<1.05ms"
    assert show.bucket_label(schemas.SOJOURN_BUCKETS - 1) == ">=1.07s"

    def stats(vni: int, stage: str, backlog_ns: int, backlog_bytes: int) -> schemas.LinkStats:
        return schemas.LinkStats(materialization="m", link="l", vni=vni, stage=stage, packets=100,
                                 bytes=100_000, drops={}, sojourn=hist, backlog_ns=backlog_ns,
                                 backlog_bytes=backlog_bytes)
    link = schemas.LinkStatus(id="l", kind="lan", vnis=[5, 6], emulation=schemas.Emulation(
        capacity=8_000_000), counters=[stats(5, "egress", 3_000_000, 3000),
                                       stats(6, "egress", 1_000_000, 1000),
                                       stats(6, "ingress", 9_000_000, 9000)])
    assert show.queue(link, [5, 6]) == ["<1.02us <1.05ms", "3ms 4KB"]
    status = schemas.StatusReply(host="h", fq_memory_bytes=0, materializations=[
        schemas.MaterializationStatus(id="m", generation=1, links=[link])])
    from rich.console import Console
    console = Console(width=240, record=True)
    console.print(show.build_table(status))
    text = console.export_text()
    assert "sojourn p50 p99" in text and "<1.02us <1.05ms" in text and "3ms" in text
