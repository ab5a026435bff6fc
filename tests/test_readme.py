"""README.md says only what works: its `moa req` lines run, in order, against a real `moa serve`
(real datapath in namespaces, loss-only host kernel) and a real nats-server, with the outcome the
README states; its JSON examples decode as moa's messages; examples/moa.toml is what
`moa serve --config` reads."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import msgspec
import nats
import pytest

import schemas
from moa_bus.cli import serve as serve_cli
from moa_bus.lab.host_testbed import UPLINK, Testbed
from moa_bus.service.box_checks import ScratchNetns
from moa_bus.service.embedded_nats import NatsServer, free_port
from tests.fixtures.moabox import vni_keys
from moa_bus.service.settings import ServeSettings
from tests.fixtures.nats import nats_server  # noqa: F401
from tests.fixtures.processes import run_moa, stop
from tests.fixtures.topology import topo  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLE_TOML = ROOT / "examples" / "moa.toml"
HOST = "box1"  # the README's host id


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block."""
    return re.findall(r"^```([^\n]*)\n(.*?)^```", text, flags=re.S | re.M)


def req_lines() -> list[str]:
    return [line for _, body in code_blocks(README) for line in body.splitlines()
            if line.startswith("moa req ")]


def expectation(line: str) -> tuple[str, str | None]:
    """("ok", None), ("needs_fq", None) or ("error", CODE), from the line's trailing comment."""
    if "# needs sch_fq" in line:
        return "needs_fq", None
    if m := re.search(r"# exit 1: (\w+)", line):
        return "error", m.group(1)
    return "ok", None


def kernel_has_fq() -> bool:
    with ScratchNetns() as ns:
        return ns.try_("tc", "qdisc", "add", "dev", "lo", "root", "fq")[0]


def moa_devices(t: Testbed) -> list[str]:
    links = json.loads(subprocess.run(["ip", "-n", t.box, "-j", "link", "show"],
                                      capture_output=True, text=True, check=True).stdout)
    return sorted(d["ifname"] for d in links if (d.get("ifalias") or "").startswith("moa"))


def test_readme_has_the_lines_it_promises() -> None:
    lines = req_lines()
    assert len(lines) >= 10
    ops = {shlex.split(line, comments=True)[2].split(".")[-1] for line in lines}
    assert {"materialize", "update", "status", "dematerialize", "moa"} <= ops
    assert any("events." in line for line in lines)
    kinds = [expectation(line)[0] for line in lines]
    assert "needs_fq" in kinds and "error" in kinds
    for cmd in ("make demo", "make test", "moa doctor", "moa watch", "moa show",
                "--allow-loss-only", "examples/moa.toml", "examples/moa.service", "nsenter --net",
                "flow_limit"):
        assert cmd in README, cmd


async def test_readme_req_lines_against_a_real_service(topo: Testbed,
                                                       nats_server: NatsServer) -> None:
    has_fq = await asyncio.to_thread(kernel_has_fq)
    # The README's hypervisors (10.0.0.x) sit behind the box's uplink, as on a testbed: every
    # remote must be routed through it (docs/contract.md).
    subprocess.run(["ip", "-n", topo.box, "route", "add", "10.0.0.0/24", "dev", UPLINK], check=True)
    env = {**os.environ, "MOA_NATS_URL": "", "MOA_HOST": "", "MOA_UPLINK": ""}
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moa_bus.cli", "serve", "--nats", nats_server.url, "--host", HOST,
        "--uplink", UPLINK, "--netns", topo.box, "--pin-root", topo.pin_root,
        "--state-dir", topo.state_dir, *([] if has_fq else ["--allow-loss-only"]),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)
    nc = None
    try:
        nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
        for _ in range(300):
            try:
                await nc.request(f"moa.{HOST}.status", b"{}", timeout=0.5)
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                assert serve.returncode is None, "moa serve exited"
                await asyncio.sleep(0.1)
        acks = await nc.subscribe(f"moa.{HOST}.acks")
        ran = []
        for line in req_lines():
            argv = shlex.split(line, comments=True)
            assert argv[:2] == ["moa", "req"], line
            rc, out, err = await run_moa(*argv[1:], "--nats", nats_server.url, env=env)
            reply = json.loads(out)
            kind, code = expectation(line)
            if kind == "needs_fq" and not has_fq:
                kind, code = "error", "unsupported"
            where = f"{line}\n-> rc {rc}: {out} {err}"
            if kind == "ok":
                assert rc == 0, where
            else:
                assert rc == 1 and reply["ok"] is False, where
                assert reply["error"]["code"] == code, where
            subject = argv[2]
            if subject.startswith("$SRV.PING"):
                assert reply["name"] == "moa" and reply["metadata"]["host"] == HOST, where
            if ".events." in subject:  # a JetStream publish: the stream's ack, then moa's Ack
                assert reply["stream"] == f"MOA_EVENTS_{HOST}" and reply["seq"] >= 1, where
                while True:
                    ack = json.loads((await acks.next_msg(timeout=15)).data)
                    if ack["op"] == "update":
                        break
                assert ack["ok"] is True, ack
            if subject.endswith(".materialize") and kind == "ok":
                # moa serve's default mode: the LAN's 3 VTEPs and bridge, the p2p link as
                # two flow entries
                assert len(moa_devices(topo)) >= 4, where
                assert len(vni_keys(topo.pin_root, "moa_flow")) == 2, where
            ran.append((subject, kind))
        # The README's sequence left the box as it found it.
        assert moa_devices(topo) == []
        st = json.loads((await nc.request(f"moa.{HOST}.status", b"{}", timeout=5)).data)
        assert st["materializations"] == []
        assert len(ran) == len(req_lines())
    finally:
        if nc is not None:
            await nc.close()
        serr = await stop(serve)
    assert serve.returncode == 0, serr


def test_readme_json_examples_are_moas_messages() -> None:
    kinds = (schemas.Materialize, schemas.Update, schemas.Ack, schemas.DropBatch,
             schemas.LinkStatsBatch, schemas.StatusReply)
    blocks = [body for info, body in code_blocks(README) if info.strip() == "json"]
    assert len(blocks) >= 4
    for body in blocks:
        decoded = []
        for kind in kinds:
            try:
                decoded.append(schemas.decode(kind, body.encode()))
            except (schemas.InvalidMessage, msgspec.ValidationError, msgspec.DecodeError):
                pass
        assert decoded, body


def _serve_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    serve_cli.add_arguments(p)
    return p.parse_args(argv)


def test_example_toml_documents_and_sets_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MOA_NATS_URL", "MOA_HOST", "MOA_UPLINK"):
        monkeypatch.delenv(var, raising=False)
    s = serve_cli.settings_from_args(_serve_args(["--config", str(EXAMPLE_TOML)]))
    assert (s.uplink, s.host, s.allow_loss_only, s.pin_root, s.nats) == (
        "eth1", "box1", False, "/sys/fs/bpf/moa", None)
    assert (s.embedded_port, s.state_dir, s.stream_replicas, s.ack_wait, s.stats_interval,
            s.drop_interval, s.connect_timeout) == (4222, "/var/lib/moa", 1, 30.0, 1.0, 0.25,
                                                    5.0)
    text = EXAMPLE_TOML.read_text()
    documented = {f.name for f in fields(ServeSettings)}
    for name in documented:
        assert re.search(rf"^#? ?{name} = ", text, flags=re.M), f"{name} not in examples/moa.toml"
    # Every commented-out example is valid too: uncommented, the file still parses.
    full = re.sub(r"^# ([a-z_]+ = )", r"\1", text, flags=re.M)
    conf = tomllib.loads(full)
    assert set(conf) == documented
    assert all(hasattr(s, k) for k in conf)


def test_moa_serve_reads_the_example_toml(tmp_path: Path) -> None:
    """The real command with the example file: settings accepted (exit 1 at connecting to a dead
    NATS, not 2), while an unknown key is a settings error (exit 2). The file's uplink (eth1) and
    its sch_fq requirement are checked against this machine before NATS: here the uplink is `lo`
    (it has 127.0.0.1) and, on a kernel without sch_fq, loss-only is allowed."""
    dead = f"nats://127.0.0.1:{free_port()}"
    env = {**os.environ, "MOA_NATS_URL": "", "MOA_HOST": "", "MOA_UPLINK": ""}
    machine = ["--uplink", "lo", *([] if kernel_has_fq() else ["--allow-loss-only"])]
    r = subprocess.run([sys.executable, "-m", "moa_bus.cli", "serve", "--config", str(EXAMPLE_TOML),
                        *machine, "--nats", dead, "--connect-timeout", "1"], capture_output=True,
                       text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    assert f"cannot connect to NATS at {dead}" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE_TOML.read_text() + '\nuplnk = "eth2"\n')
    r = subprocess.run([sys.executable, "-m", "moa_bus.cli", "serve", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 2 and "unknown key 'uplnk'" in r.stderr
