"""`moa serve`'s exit status, run as a real process: 2 and one line saying what to change for every
settings error, checked before the embedded nats-server or the datapath starts (nothing is left
behind); 1 and one line for a runtime failure (a NATS server without JetStream, NATS unreachable).
An unexpected error is logged with its traceback and exits 1 (serve() in this process, with a
datapath that raises). Every key of --config is checked against its ServeSettings field's type.

The box is a real network namespace with two veth devices (each with its peer there too; this
kernel has no dummy devices): `up0` with an IPv4 address and `bare0` without one.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from moa_bus.cli import serve as serve_cli
from moa_bus.lab.host_testbed import sh, unique_tag
from moa_bus.service.box_checks import ScratchNetns
from moa_bus.service.embedded_nats import NatsServer, free_port
from moa_bus.service.serve_loop import serve
from moa_bus.service.settings import _FIELD_TYPES, ServeSettings, SettingsError, _allowed
from tests.fixtures.nats import nats_server, nats_server_without_jetstream  # noqa: F401

pytestmark = [pytest.mark.netns, pytest.mark.nats]

ROOT = Path(__file__).resolve().parent.parent
UPLINK = "up0"
BARE = "bare0"  # a device without an IPv4 address
ADDR = "10.203.0.1"


@dataclass
class Box:
    netns: str
    pin_root: str  # handed to moa serve; must never be created by a refused start


@pytest.fixture
def netns_box() -> Iterator[Box]:
    """The namespace with up0 (an address) and bare0 (none); afterwards neither it nor a pin
    directory is left."""
    tag = unique_tag("mx")
    b = Box(netns=f"{tag}box", pin_root=f"/sys/fs/bpf/{tag}")
    try:
        sh("ip", "netns", "add", b.netns)
        for dev in (UPLINK, BARE):
            sh("ip", "-n", b.netns, "link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")
            for end in (dev, f"{dev}p"):
                sh("ip", "-n", b.netns, "link", "set", end, "up")
        sh("ip", "-n", b.netns, "addr", "add", f"{ADDR}/24", "dev", UPLINK)
        yield b
    finally:
        sh("ip", "netns", "del", b.netns, check=False)
        shutil.rmtree(b.pin_root, ignore_errors=True)
    assert not os.path.exists(f"/var/run/netns/{b.netns}")
    assert not os.path.exists(b.pin_root)


@dataclass
class Exit:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def moa_serve(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Exit:
    """`moa serve ARGS` as a child process: stdin closed, no MOA_* settings from the environment
    but those in `env`."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MOA_")}, **(env or {})}
    r = subprocess.run([sys.executable, "-m", "moa_bus.cli", "serve", *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=ROOT)
    return Exit(r.returncode, r.stdout, r.stderr)


def kill_started_by(marker: str) -> list[int]:
    """SIGKILL every process whose command line holds `marker` (a path only this test uses): an
    embedded nats-server that a `moa serve` started would outlive it (its own session). The pids."""
    killed = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if marker.encode() not in (d / "cmdline").read_bytes():
                continue
            os.kill(int(d.name), signal.SIGKILL)
        except OSError:  # gone meanwhile
            continue
        killed.append(int(d.name))
    return killed


def kernel_has_fq() -> bool:
    with ScratchNetns() as ns:
        return ns.try_("tc", "qdisc", "add", "dev", "lo", "root", "fq")[0]


@dataclass
class Case:
    id: str
    args: list[str]  # "{tmp}" stands for the test's tmp_path
    says: list[str]  # what the one line must contain
    toml: str | None = None  # given with --config when set
    files: dict[str, tuple[str, int]] | None = None  # {tmp}/name: (content, mode), made first


CASES = [
    Case("missing uplink", [], ["--uplink DEV is required"]),
    Case("uplink does not exist", ["--uplink", "nosuch0"],
         ["--uplink nosuch0", "no such device", "network namespace"]),
    Case("uplink without IPv4", ["--uplink", BARE], [f"--uplink {BARE}", "no IPv4", "--local"]),
    Case("bad --local", ["--uplink", UPLINK, "--local", "box-a"], ["--local box-a", "not an IP"]),
    Case("invalid --host", ["--uplink", UPLINK, "--host", "a.b"], ["--host", "'a.b'", "token"]),
    Case("--netns that does not exist", ["--netns", "moa-nosuch-ns", "--uplink", UPLINK],
         ["--netns moa-nosuch-ns", "no such network namespace"]),
    Case("wrong type: allow_loss_only", [], ["allow_loss_only", "boolean", '"false"',
                                             "write allow_loss_only = false"],
         toml='allow_loss_only = "false"\n'),
    Case("wrong type: embedded_port", [], ["embedded_port", "integer", '"x"'],
         toml='embedded_port = "x"\n'),
    Case("wrong type: stats_interval", [], ["stats_interval", "float", '"fast"'],
         toml='stats_interval = "fast"\n'),
    Case("wrong type: uplink", [], ["uplink = 5", "string"], toml="uplink = 5\n"),
    Case("unknown key", [], ["unknown key 'colour'"], toml='colour = "blue"\n'),
    Case("malformed TOML", [], ["moa.toml", "not valid TOML"], toml=f'uplink = "{UPLINK}\n'),
    Case("missing --config file", ["--config", "{tmp}/absent.toml"],
         ["absent.toml", "cannot read"]),
    Case("port out of range", ["--uplink", UPLINK, "--embedded-port", "70000"],
         ["--embedded-port", "70000", "1 to 65535"]),
    Case("replicas out of range", [], ["stream_replicas", "not 7"], toml="stream_replicas = 7\n"),
    Case("max_links out of range", ["--uplink", UPLINK, "--max-links", "0"],
         ["--max-links", "max_links in --config", "1 to 16777216", "not 0"]),
    Case("interval not above 0", ["--uplink", UPLINK, "--drop-interval", "0"],
         ["--drop-interval", "above 0"]),
    Case("missing TLS file", ["--uplink", UPLINK, "--nats", "nats://127.0.0.1:1", "--nats-ca",
                              "{tmp}/ca.pem"], ["--nats-ca", "ca.pem", "does not exist"]),
    # trust: no secret in a command line, none in a file that others may read
    Case("a secret in --config readable by others", [],
         ["--config (nats_password)", "moa.toml holds a secret", "readable by group and others",
          "mode 0644", "chmod 600"],
         toml='nats = "nats://127.0.0.1:1"\nnats_user = "moa"\nnats_password = "s3cret"\n',
         files={"moa.toml": ("", 0o644)}),
    Case("a token in --config readable by its group", [],
         ["--config (nats_token)", "moa.toml holds", "readable by group (mode 0640)"],
         toml='nats_token = "s3cret"\n', files={"moa.toml": ("", 0o640)}),
    Case("an nkey seed readable by others",
         ["--uplink", UPLINK, "--nats", "nats://127.0.0.1:1", "--nats-nkey", "{tmp}/box1.nk"],
         ["--nats-nkey", "box1.nk", "readable by others (mode 0604)", "chmod 600"],
         files={"box1.nk": ("SUAAAA\n", 0o604)}),
    Case("a password file readable by others",
         ["--uplink", UPLINK, "--nats", "nats://127.0.0.1:1", "--nats-user", "moa",
          "--nats-password-file", "{tmp}/pw"], ["--nats-password-file", "pw", "mode 0644"],
         files={"pw": ("s3cret\n", 0o644)}),
    Case("a creds file that does not exist",
         ["--uplink", UPLINK, "--nats", "nats://127.0.0.1:1", "--nats-creds", "{tmp}/x.creds"],
         ["--nats-creds", "x.creds", "does not exist"]),
    Case("--nats-password on the command line", ["--uplink", UPLINK, "--nats-password", "s3c"],
         ["--nats-password", "`ps`", "MOA_NATS_PASSWORD", "--nats-password-file"]),
    Case("--nats-token on the command line", ["--uplink", UPLINK, "--nats-token", "s3c"],
         ["--nats-token", "`ps`", "MOA_NATS_TOKEN", "--nats-token-file"]),
    Case("credentials in the --nats URL", ["--uplink", UPLINK, "--nats",
                                           "nats://moa:s3c@127.0.0.1:1"],
         ["--nats URL carries credentials", "`ps`"]),
    Case("two ways to authenticate",
         ["--uplink", UPLINK, "--nats", "nats://127.0.0.1:1", "--nats-nkey", "{tmp}/a.nk",
          "--nats-creds", "{tmp}/a.creds"], ["an nkey and a creds file", "use one"],
         files={"a.nk": ("SUAAAA\n", 0o600), "a.creds": ("x\n", 0o600)}),
    Case("a password without a user", ["--uplink", UPLINK, "--nats", "nats://127.0.0.1:1",
                                       "--nats-password-file", "{tmp}/pw"],
         ["password needs a user", "--nats-user"], files={"pw": ("s3cret\n", 0o600)}),
    Case("a password and its file in --config", [], ["nats_password and nats_password_file",
                                                    "keep one"],
         toml='nats_password = "a"\nnats_password_file = "/x"\n', files={"moa.toml": ("", 0o600)}),
    Case("a client credential for the embedded server", ["--uplink", UPLINK, "--nats-nkey",
                                                         "{tmp}/a.nk"],
         ["--nats-nkey", "external NATS server", "embedded nats-server"],
         files={"a.nk": ("SUAAAA\n", 0o600)}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_settings_error_exits_2_with_one_line(netns_box: Box, tmp_path: Path, case: Case) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    for name, (content, mode) in (case.files or {}).items():
        (tmp_path / name).write_text(content)
        (tmp_path / name).chmod(mode)
    if case.toml is not None:
        (tmp_path / "moa.toml").write_text(case.toml)
        args += ["--config", str(tmp_path / "moa.toml")]
    state = tmp_path / "nats"
    try:
        r = moa_serve("--netns", netns_box.netns, "--pin-root", netns_box.pin_root,
                      "--allow-loss-only", "--state-dir", str(state),
                      "--embedded-port", str(free_port()), *args)
    finally:
        leftovers = kill_started_by(str(state))
    assert leftovers == []
    assert r.code == 2, r
    assert len(r.lines) == 1, r.stderr
    line = r.lines[0]
    assert line.startswith("moa serve: ") and "Traceback" not in r.stderr, line
    for text in case.says:
        assert text in line, (text, line)
    assert r.stdout == ""
    # checked before anything started: no embedded nats-server (its store), no datapath (pins)
    assert not state.exists()
    assert not os.path.exists(netns_box.pin_root)


def test_no_sch_fq_without_allow_loss_only(netns_box: Box, tmp_path: Path) -> None:
    """Without --allow-loss-only a kernel without sch_fq is a settings error. On a kernel with
    sch_fq the same start passes the check and gets as far as NATS (a dead URL: exit 1)."""
    state = tmp_path / "nats"
    dead = f"nats://127.0.0.1:{free_port()}"
    try:
        r = moa_serve("--netns", netns_box.netns, "--pin-root", netns_box.pin_root,
                      "--uplink", UPLINK, "--nats", dead, "--connect-timeout", "1",
                      "--state-dir", str(state))
    finally:
        leftovers = kill_started_by(str(state))
    assert leftovers == []
    assert "Traceback" not in r.stderr and len(r.lines) == 1, r.stderr
    if kernel_has_fq():
        assert r.code == 1 and f"cannot connect to NATS at {dead}" in r.lines[0], r
    else:
        assert r.code == 2, r
        assert r.lines[0].startswith("moa serve: this kernel has no sch_fq"), r.lines
        assert "--allow-loss-only" in r.lines[0]
    assert not state.exists()
    assert not os.path.exists(netns_box.pin_root)


def test_nats_without_jetstream_exits_1_with_one_line(
        netns_box: Box, nats_server_without_jetstream: NatsServer) -> None:
    url = nats_server_without_jetstream.url
    r = moa_serve("--nats", url, "--host", "nojs", "--netns", netns_box.netns,
                  "--pin-root", netns_box.pin_root, "--uplink", UPLINK, "--allow-loss-only",
                  "--connect-timeout", "5")
    assert r.code == 1, r
    assert len(r.lines) == 1 and "Traceback" not in r.stderr, r.stderr
    line = r.lines[0]
    assert f"the NATS server at {url} has no JetStream" in line, line
    assert "-js" in line and "jetstream {}" in line, line
    assert not os.path.exists(netns_box.pin_root)  # found out before the datapath started
    assert nats_server_without_jetstream.running  # moa does not stop someone else's server


@pytest.fixture
def nats_server_js_for_one_account(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream for account A (user a) only; account B (user b) has
    none."""
    conf = tmp_path / "accounts.conf"
    conf.write_text(f"""jetstream {{ store_dir: "{tmp_path / 'js'}" }}
accounts {{
  A {{ jetstream: enabled, users: [{{user: a, password: a}}] }}
  B {{ users: [{{user: b, password: b}}] }}
}}
""")
    server = NatsServer(port=free_port(), state_dir=tmp_path / "nats", jetstream=False,
                        extra_args=["-c", str(conf)])
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_account_without_jetstream_exits_1_with_one_line(
        netns_box: Box, nats_server_js_for_one_account: NatsServer) -> None:
    url = nats_server_js_for_one_account.url
    r = moa_serve("--nats", url, "--nats-user", "b", "--host", "acct",
                  "--netns", netns_box.netns, "--pin-root", netns_box.pin_root, "--uplink", UPLINK,
                  "--allow-loss-only", env={"MOA_NATS_PASSWORD": "b"})
    assert r.code == 1, r
    assert len(r.lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"the NATS server at {url} has JetStream, but not for the account" in r.lines[0]
    assert "jetstream: enabled" in r.lines[0]
    assert not os.path.exists(netns_box.pin_root)


def test_nats_unreachable_exits_1_with_one_line(netns_box: Box) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    r = moa_serve("--nats", dead, "--host", "dead", "--netns", netns_box.netns,
                  "--pin-root", netns_box.pin_root, "--uplink", UPLINK, "--allow-loss-only",
                  "--connect-timeout", "1")
    assert r.code == 1, r
    assert len(r.lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot connect to NATS at {dead}" in r.lines[0]
    assert not os.path.exists(netns_box.pin_root)


async def test_unexpected_error_is_logged_with_its_traceback_and_exits_1(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    """serve() itself (the real process's path after the settings checks), with a datapath that
    fails as nothing expects: exit status 1 and the exception's traceback in the log."""

    async def broken_datapath(settings: ServeSettings):
        raise ZeroDivisionError("a bug")

    said: list[str] = []
    settings = ServeSettings(nats=nats_server.url, host=unique_tag("ux"))
    with caplog.at_level(logging.ERROR, logger="moa.bus"):
        rc = await asyncio.wait_for(
            serve(settings, broken_datapath, asyncio.Event(), said.append), 30)
    assert rc == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None, caplog.text
    assert errors[0].exc_info[0] is ZeroDivisionError
    assert "Traceback" in caplog.text and "a bug" in caplog.text


# --config: every key's TOML type against ServeSettings' field type -------------------------------

_WRONG = {bool: ('"true"', "boolean"), int: ('"1"', "integer"), float: ('"x"', "float"),
          str: ("5", "string")}


def _field_type(name: str) -> type:
    return _allowed(_FIELD_TYPES[name])[0]


def test_every_config_key_is_type_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each key of ServeSettings given a value of another TOML type is a SettingsError naming the
    key, the expected type and the value; the right type is taken (an integer for a float too)."""
    for var in ("MOA_NATS_URL", "MOA_HOST", "MOA_UPLINK"):
        monkeypatch.delenv(var, raising=False)
    conf = tmp_path / "moa.toml"
    names = [f.name for f in fields(ServeSettings)]
    assert len(names) >= 20
    for name in names:
        value, kind = _WRONG[_field_type(name)]
        conf.write_text(f"{name} = {value}\n")
        conf.chmod(0o600)  # nats_password and nats_token are secrets: root's eyes only
        with pytest.raises(SettingsError) as e:
            serve_cli.settings_from_args(_serve_args(["--config", str(conf)]))
        message = str(e.value)
        assert f"{name} = {value}" in message and kind in message, message
    good = {bool: "true", int: "3", float: "2", str: '"abc"'}
    # strings with a form of their own (ADDR:PORT, one of two words)
    usable = {"metrics": '"127.0.0.1:9464"', "p2p_mode": '"flow"'}
    for name in names:
        conf.write_text(f"{name} = {usable.get(name, good[_field_type(name)])}\n")
        conf.chmod(0o600)
        s = serve_cli.settings_from_args(_serve_args(["--config", str(conf)]))
        want = tomllib.loads(conf.read_text())[name]
        got = getattr(s, name)
        assert got == want and type(got) is _field_type(name), (name, got)


def _serve_args(argv: list[str]):
    import argparse

    p = argparse.ArgumentParser()
    serve_cli.add_arguments(p)
    return p.parse_args(argv)


def test_systemd_unit_does_not_restart_on_settings_errors() -> None:
    unit = (ROOT / "examples" / "moa.service").read_text().splitlines()
    assert "RestartPreventExitStatus=2" in unit
    assert "Restart=always" in unit  # and so it does restart on 1 (runtime failures)
