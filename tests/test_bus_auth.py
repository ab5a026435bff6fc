"""Trust by default: the embedded nats-server admits only the holder of the credential `moa serve`
makes at its first start (<state-dir>/local.nk, 0600), root's `moa` commands use it without a
flag, another user cannot connect; no secret is ever in a command line (`ps`); the external
server's credentials (password and token from the environment or a file, nkey seed, creds file)
work and are refused when others may read them; every MOA_* variable is documented.

Real nats-servers, a real box (the testbed's namespaces, or a namespace of its own for the
flagless run, which needs 127.0.0.1:4222 and /var/lib/moa to itself: a private network and mount
namespace with a tmpfs on /var/lib and a bpffs of its own).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nkeys
import pytest

from moa_bus.cli import environment
from moa_bus.lab.host_testbed import Testbed, unique_tag
from moa_bus.service import credentials
from moa_bus.service.box import open_kernel_box
from moa_bus.service.connection import BusConnectError, NatsOptions, connect
from moa_bus.service.embedded_nats import NatsServer, free_port
from moa_bus.service.serve_loop import serve
from tests.fixtures.docs import materialize_doc
from tests.fixtures.processes import stop
from tests.fixtures.service import box_settings, kernel_holds, until_serving
from tests.fixtures.topology import topo  # noqa: F401

pytestmark = pytest.mark.nats

ROOT = Path(__file__).resolve().parent.parent
# The caller's moa settings must not reach the commands these tests run.
MOA_VARS = [*environment.CLIENT, *environment.SERVE]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MOA_VARS}
    return {**env, **extra}


def moa(*argv: str, env: dict[str, str] | None = None, timeout: float = 60,
        prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "moa_bus.cli", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env if env is not None else clean_env(), stdin=subprocess.DEVNULL)


def cmdlines() -> dict[int, bytes]:
    """pid -> command line of every process (what `ps` shows any user)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = (d / "cmdline").read_bytes()
            except OSError:
                pass
    return out


def seed_file(path: Path) -> tuple[Path, str]:
    """A fresh nkey user seed in `path` (0600): (path, its public key)."""
    seed = credentials.new_user_seed()
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return path, credentials.public_key(seed)


# --- the embedded server ------------------------------------------------------------------------

@pytest.mark.netns
async def test_embedded_server_admits_only_the_generated_credential(topo: Testbed) -> None:
    """First start: local.nk made 0600, root's; the server's configuration holds its public key
    and not the seed; no credential, a wrong one: refused; the file's: served. A restart keeps
    the credential; one that others may read stops the start (2) before the server starts."""
    host = unique_tag("au")
    port = free_port()
    settings = box_settings(topo, host, None, embedded_port=port)
    seed_path = Path(topo.state_dir) / "local.nk"
    url = f"nats://127.0.0.1:{port}"
    assert not seed_path.exists()

    async def run_once() -> tuple[list[str], asyncio.Task[int], asyncio.Event]:
        said: list[str] = []
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, open_kernel_box, stop, said.append))
        await until_serving(said, task)
        return said, task, stop

    said, task, stop = await run_once()
    try:
        st = os.stat(seed_path)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid() == 0
        seed = seed_path.read_bytes().strip()
        assert seed.startswith(b"SU")
        public = credentials.public_key(seed)
        conf = (Path(topo.state_dir) / "nats" / "auth.conf").read_text()
        assert public in conf and seed.decode() not in conf
        assert any(str(seed_path) in line and "embedded nats-server" in line for line in said)
        # nothing, a stranger's nkey, a user/password: refused by the server
        for opts in (NatsOptions(url=url, connect_timeout=1),
                     NatsOptions(url=url, connect_timeout=1, user="moa", password="moa")):
            with pytest.raises(BusConnectError, match="uthorization"):
                await connect(opts)
        with pytest.raises(nats.errors.Error):  # nats-py's own client, no reconnect
            nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False,
                                    max_reconnect_attempts=0)
            await nc.close()
        stranger, _ = seed_file(Path(topo.state_dir) / "stranger.nk")
        with pytest.raises(BusConnectError, match="uthorization"):
            await connect(NatsOptions(url=url, nkey_seed_file=str(stranger), connect_timeout=1))
        # the credential's holder: a real materialize, held by the kernel
        nc = await connect(NatsOptions(url=url, nkey_seed_file=str(seed_path)))
        try:
            doc = materialize_doc("auth1", 100)
            ack = json.loads((await nc.request(f"moa.{host}.materialize",
                                               json.dumps(doc).encode(), timeout=30)).data)
            assert ack["ok"] is True, ack
            await kernel_holds(nc, host, topo, doc)
        finally:
            await nc.close()
        # no process shows the seed in its command line
        assert not [pid for pid, line in cmdlines().items() if seed in line]
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0

    # a restart: the same credential, still the only one admitted
    said, task, stop = await run_once()
    try:
        assert seed_path.read_bytes().strip() == seed
        nc = await connect(NatsOptions(url=url, nkey_seed_file=str(seed_path)))
        st = json.loads((await nc.request(f"moa.{host}.status", b"{}", timeout=10)).data)
        await nc.close()
        assert [m["id"] for m in st["materializations"]] == ["auth1"]
        with pytest.raises(BusConnectError, match="uthorization"):
            await connect(NatsOptions(url=url, connect_timeout=1))
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0

    # a credential others may read: exit 2, one line, and no server started
    seed_path.chmod(0o644)
    said = []
    rc = await asyncio.wait_for(serve(settings, open_kernel_box, asyncio.Event(), said.append), 30)
    assert rc == 2, said
    assert len(said) == 1 and "readable by group and others (mode 0644)" in said[0], said
    assert f"chmod 600 {seed_path}" in said[0]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


# --- the CLI without flags, as root and as another user -------------------------------------------

class PrivateMachine:
    """A network and mount namespace of its own, held by a `sleep`: loopback up, a veth `up0`
    with an address (the box's uplink) and a route through it to the hypervisors' addresses
    that materialize_doc uses (moa refuses a remote routed elsewhere), a tmpfs on /var/lib (so
    /var/lib/moa is its own) and a bpffs of its own on /sys/fs/bpf. `run()` runs a command inside
    (as root, or as nobody); `close()` ends every process in it."""

    SETUP = ("set -e; mount -t tmpfs tmpfs /var/lib; mount -t bpf bpf /sys/fs/bpf; "
             "ip link set lo up; ip link add up0 type veth peer name up0p; ip link set up0 up; "
             "ip link set up0p up; ip addr add 10.204.0.1/24 dev up0; "
             "ip route add 10.201.0.0/24 dev up0; echo ready; exec sleep 900")

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c",
             self.SETUP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        assert line == "ready", (line, self.holder.stderr.read() if self.holder.stderr else "")
        self.netns = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        assert self.netns != os.readlink("/proc/self/ns/net")

    def enter(self, as_nobody: bool = False) -> list[str]:
        cmd = ["nsenter", "--target", str(self.holder.pid), "--mount", "--net",
               f"--wdns={ROOT}"]
        if as_nobody:
            cmd += ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        return cmd

    def pids(self) -> list[int]:
        """Every process in this network namespace but the holder."""
        found = []
        for pid in cmdlines():
            try:
                if pid != self.holder.pid and os.readlink(f"/proc/{pid}/ns/net") == self.netns:
                    found.append(pid)
            except OSError:
                pass
        return found

    def close(self) -> list[int]:
        """Kill what is left inside (by pid), then the holder; the pids that were left."""
        left = self.pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.holder.kill()
        self.holder.wait(10)
        return left


@pytest.fixture
def private_machine() -> Iterator[PrivateMachine]:
    m = PrivateMachine()
    try:
        yield m
    finally:
        left = m.close()
    assert left == [], f"processes left in the private namespace: {left}"


@pytest.mark.netns
def test_cli_without_flags_as_root_and_refused_for_another_user(
        private_machine: PrivateMachine, tmp_path: Path) -> None:
    """`moa serve --uplink up0` with nothing about NATS (the embedded server on 127.0.0.1:4222,
    /var/lib/moa) in a machine of its own; then the commands a root user types, without a flag,
    work; as nobody they are refused, saying why. No process shows a secret in its
    command line."""
    m = private_machine
    env = clean_env(PYTHONUNBUFFERED="1")
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        server = subprocess.Popen(
            [*m.enter(), sys.executable, "-m", "moa_bus.cli", "serve", "--uplink", "up0",
             "--allow-loss-only"], stdout=f, stderr=subprocess.STDOUT, env=env,
            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while b"serving host" not in log.read_bytes():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        said = log.read_text()
        assert "nats://127.0.0.1:4222" in said and "/var/lib/moa/local.nk" in said, said

        r = moa("req", "$SRV.PING.moa", prefix=m.enter(), env=env)
        assert r.returncode == 0, r.stderr
        host = json.loads(r.stdout)["metadata"]["host"]
        r = moa("status", prefix=m.enter(), env=env)
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["host"] == host and st["materializations"] == [], st
        doc = tmp_path / "m.json"
        doc.write_text(json.dumps(materialize_doc("flagless", 700)))
        doc.chmod(0o644)
        r = moa("materialize", str(doc), prefix=m.enter(), env=env)
        assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True, r.stderr
        r = moa("show", prefix=m.enter(), env={**env, "COLUMNS": "200"})
        assert r.returncode == 0 and "flagless" in r.stdout, r.stdout + r.stderr

        # another user: cannot read the credential, so cannot connect, and is told why
        r = moa("status", "--connect-timeout", "2", prefix=m.enter(as_nobody=True), env=env)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "cannot connect to NATS at nats://127.0.0.1:4222" in r.stderr, r.stderr
        assert "Authorization" in r.stderr and "/var/lib/moa/local.nk" in r.stderr, r.stderr
        assert "not readable by this user" in r.stderr, r.stderr
        r = moa("req", f"moa.{host}.materialize", json.dumps(materialize_doc("intruder", 800)),
                "--connect-timeout", "2", prefix=m.enter(as_nobody=True), env=env)
        assert r.returncode == 1 and "Authorization" in r.stderr, r.stderr

        # still only what root materialized; then root removes it
        r = moa("status", prefix=m.enter(), env=env)
        assert [x["id"] for x in json.loads(r.stdout)["materializations"]] == ["flagless"]
        r = moa("dematerialize", "flagless", prefix=m.enter(), env=env)
        assert r.returncode == 0, r.stderr

        seed = subprocess.run([*m.enter(), "cat", "/var/lib/moa/local.nk"], capture_output=True,
                              check=True).stdout.strip()
        assert seed.startswith(b"SU")
        mode = subprocess.run([*m.enter(), "stat", "-c", "%a %U", "/var/lib/moa/local.nk"],
                              capture_output=True, text=True, check=True).stdout.split()
        assert mode == ["600", "root"]
        inside = m.pids()
        assert len(inside) >= 2  # moa serve, nats-server
        assert not [pid for pid, line in cmdlines().items() if seed in line]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, log.read_text()


# --- an external server's credentials -------------------------------------------------------------

@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with a user `moa` (password in its configuration file, not its command
    line) and a responder on moatest.echo."""
    conf = tmp_path / "users.conf"
    conf.write_text('authorization { users = [ {user: moa, password: "pw-s3cret"} ] }\n')
    server = NatsServer(port=free_port(), state_dir=tmp_path / "n", jetstream=False,
                        extra_args=["-c", str(conf)])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _echo(url: str, **kw: object):
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1, **kw)

    async def answer(m) -> None:
        await m.respond(b'{"echo": true}')
    await nc.subscribe("moatest.echo", cb=answer)
    await nc.flush()
    return nc


async def _moa_async(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(moa, *argv, env=env)


async def test_password_from_the_environment_or_a_file_never_the_command_line(
        password_server: NatsServer, tmp_path: Path) -> None:
    url = password_server.url
    echo = await _echo(url, user="moa", password="pw-s3cret")
    try:
        env = clean_env(MOA_NATS_USER="moa", MOA_NATS_PASSWORD="pw-s3cret")
        r = await _moa_async("req", "moatest.echo", "{}", "--nats", url, env=env)
        assert r.returncode == 0 and json.loads(r.stdout) == {"echo": True}, r.stderr
        pw = tmp_path / "pw"
        pw.write_text("pw-s3cret\n")
        pw.chmod(0o600)
        r = await _moa_async("req", "moatest.echo", "{}", "--nats", url, "--nats-user", "moa",
                             "--nats-password-file", str(pw), env=clean_env())
        assert r.returncode == 0, r.stderr
        # wrong password: refused by the server
        r = await _moa_async("req", "moatest.echo", "{}", "--nats", url, "--connect-timeout", "1",
                             env=clean_env(MOA_NATS_USER="moa", MOA_NATS_PASSWORD="wrong"))
        assert r.returncode == 1 and "Authorization" in r.stderr, r.stderr
        # the secret on the command line: refused before anything, one line saying where it goes
        for argv, says in (
                (["--nats-user", "moa", "--nats-password", "pw-s3cret"], "MOA_NATS_PASSWORD"),
                (["--nats-token", "pw-s3cret"], "MOA_NATS_TOKEN"),
                (["--nats", url.replace("nats://", "nats://moa:pw-s3cret@")], "MOA_NATS_USER")):
            r = await _moa_async("req", "moatest.echo", "{}", "--nats", url, *argv,
                                 env=clean_env())
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, r.stderr
            assert "`ps`" in lines[0] and says in lines[0], lines
    finally:
        await echo.close()


async def test_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    conf = tmp_path / "token.conf"
    conf.write_text('authorization { token: "tok-s3cret" }\n')
    server = NatsServer(port=free_port(), state_dir=tmp_path / "n", jetstream=False,
                        extra_args=["-c", str(conf)])
    server.start()
    try:
        echo = await _echo(server.url, token="tok-s3cret")
        try:
            token = tmp_path / "token"
            token.write_text("tok-s3cret\n")
            r = await _moa_async("req", "moatest.echo", "--nats", server.url,
                                 "--nats-token-file", str(token), env=clean_env())
            assert r.returncode == 0, r.stderr
            r = await _moa_async("req", "moatest.echo", "--nats", server.url,
                                 env=clean_env(MOA_NATS_TOKEN="tok-s3cret"))
            assert r.returncode == 0, r.stderr
            r = await _moa_async("req", "moatest.echo", "--nats", server.url,
                                 "--connect-timeout", "1", env=clean_env())
            assert r.returncode == 1 and "Authorization" in r.stderr, r.stderr
        finally:
            await echo.close()
    finally:
        server.stop()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict, signer: nkeys.KeyPair) -> str:
    """A NATS JWT (ed25519-nkey) of `claims`, signed by `signer`, as nsc would write it."""
    body = {**claims, "iat": int(time.time()), "iss": signer.public_key.decode()}
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()
                                   ).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body).encode())
    return f"{head}.{payload}.{_b64(signer.sign(f'{head}.{payload}'.encode()))}"


def _keypair(prefix: int) -> tuple[bytes, nkeys.KeyPair]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed, nkeys.from_seed(bytearray(seed))


async def test_creds_file_of_an_operator_mode_server(tmp_path: Path) -> None:
    """--nats-creds / MOA_NATS_CREDS: a user JWT and its seed, against a server in operator mode
    (operator, account and user made here as nsc makes them)."""
    _, op = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, acct = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user = _keypair(nkeys.PREFIX_BYTE_USER)
    op_pub, acct_pub = op.public_key.decode(), acct.public_key.decode()
    op_jwt = _jwt({"name": "op", "sub": op_pub, "nats": {"type": "operator", "version": 2}}, op)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                 "wildcards": True, "conn": -1, "leaf": -1}
    acct_jwt = _jwt({"name": "moa", "sub": acct_pub, "nats": {
        "type": "account", "version": 2, "limits": unlimited}}, op)
    user_jwt = _jwt({"name": "box1", "sub": user.public_key.decode(), "nats": {
        "type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1,
        "payload": -1}}, acct)
    conf = tmp_path / "op.conf"
    conf.write_text(f"operator: {op_jwt}\nresolver: MEMORY\n"
                    f"resolver_preload: {{ {acct_pub}: {acct_jwt} }}\n")
    creds = tmp_path / "box1.creds"
    creds.write_text(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
                     f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n"
                     "------END USER NKEY SEED------\n")
    creds.chmod(0o600)
    server = NatsServer(port=free_port(), state_dir=tmp_path / "n", jetstream=False,
                        extra_args=["-c", str(conf)])
    server.start()
    try:
        echo = await _echo(server.url, user_credentials=str(creds))
        try:
            r = await _moa_async("req", "moatest.echo", "--nats", server.url, "--nats-creds",
                                 str(creds), env=clean_env())
            assert r.returncode == 0 and json.loads(r.stdout) == {"echo": True}, r.stderr
            r = await _moa_async("req", "moatest.echo", "--nats", server.url,
                                 env=clean_env(MOA_NATS_CREDS=str(creds)))
            assert r.returncode == 0, r.stderr
            nc = await connect(NatsOptions(url=server.url, creds_file=str(creds)))
            assert (await nc.request("moatest.echo", b"", timeout=2)).data == b'{"echo": true}'
            await nc.close()
            r = await _moa_async("req", "moatest.echo", "--nats", server.url,
                                 "--connect-timeout", "1", env=clean_env())
            assert r.returncode == 1 and "cannot connect" in r.stderr, r.stderr
        finally:
            await echo.close()
    finally:
        server.stop()


@pytest.mark.netns
async def test_serve_password_from_the_environment_is_in_no_command_line(
        topo: Testbed, tmp_path: Path) -> None:
    """`moa serve` given its password by MOA_NATS_PASSWORD connects (a server with JetStream and
    user/password), and the password is in no process's command line."""
    conf = tmp_path / "js-users.conf"
    conf.write_text(f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
                    'authorization { users = [ {user: moa, password: "pw-js-s3cret"} ] }\n')
    server = NatsServer(port=free_port(), state_dir=tmp_path / "njs", jetstream=False,
                        extra_args=["-c", str(conf)])
    server.start()
    host = unique_tag("pw")
    env = clean_env(MOA_NATS_USER="moa", MOA_NATS_PASSWORD="pw-js-s3cret", PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moa_bus.cli", "serve", "--nats", server.url, "--host", host,
        "--uplink", "up0", "--netns", topo.box, "--pin-root", topo.pin_root,
        "--state-dir", topo.state_dir, "--allow-loss-only", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        nc = await nats.connect(server.url, user="moa", password="pw-js-s3cret",
                                connect_timeout=2, max_reconnect_attempts=1)
        try:
            for _ in range(300):
                try:
                    await nc.request(f"moa.{host}.status", b"{}", timeout=0.5)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    assert proc.returncode is None
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("moa serve did not answer")
            assert not [pid for pid, line in cmdlines().items() if b"pw-js-s3cret" in line]
        finally:
            await nc.close()
    finally:
        try:
            err = await stop(proc)
        finally:
            server.stop()
    assert proc.returncode == 0, err.decode()


# --- the environment, documented ------------------------------------------------------------------

_READ = re.compile(r"""(?:environ(?:\.get)?\(|environ\[|getenv\(|\benv\(|_?ENV\s*=\s*)"""
                   r"""\s*["'](MOA_[A-Z0-9_]+)["']""")
_SHELL = re.compile(r"\$\{?(MOA_[A-Z0-9_]+)")


def variables_read(paths: list[Path]) -> set[str]:
    found: set[str] = set()
    for base in paths:
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        for f in files:
            if f.suffix == ".py":
                found |= set(_READ.findall(f.read_text()))
            elif f.suffix == ".sh" or f.name in ("Makefile", "run"):
                found |= set(_SHELL.findall(f.read_text()))
    return found


def test_every_moa_variable_is_documented() -> None:
    """Every MOA_* variable the code reads is in README.md's table; those `moa serve` and the
    clients read are in their --help (environment.py, checked against the code)."""
    runtime = variables_read([ROOT / "moa_bus" / "service", ROOT / "moa_bus" / "cli",
                              ROOT / "datapath"])
    assert {"MOA_NATS_URL", "MOA_HOST", "MOA_UPLINK", "MOA_NATS_PASSWORD", "MOA_NATS_TOKEN",
            "MOA_NATS_NKEY", "MOA_NATS_CREDS", "MOA_STATE_DIR", "MOA_LIBBPF",
            "MOA_FAILPOINTS"} <= runtime
    assert runtime == set(environment.CLIENT) | set(environment.SERVE)
    everything = runtime | variables_read([ROOT / "scripts", ROOT / "tests" / "conftest.py",
                                           ROOT / "Makefile", ROOT / ".ci" / "run",
                                           ROOT / "moa_bus" / "lab"])
    assert {"MOA_REQUIRE_ALL", "MOA_VM_TIMEOUT", "MOA_VM_CACHE"} <= everything
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Environment variables"):readme.index("## Subjects")]
    assert [v for v in sorted(everything) if f"`{v}`" not in table] == []
    serve_help = moa("serve", "--help").stdout
    status_help = moa("status", "--help").stdout
    for var in runtime:
        assert var in serve_help, var
    for var in environment.CLIENT:
        assert var in status_help, var


def test_the_install_lines_make_the_settings_file_root_only() -> None:
    """README's install line and the unit's comment install moa.toml 0600 (it may hold a secret,
    which moa refuses in a file others may read); the state directory is root's only."""
    readme = (ROOT / "README.md").read_text()
    unit = (ROOT / "examples" / "moa.service").read_text()
    line = "install -D -m 600 examples/moa.toml /etc/moa/moa.toml"
    assert line in readme and line in unit
    assert not re.search(r"install .*-m 6[4-7][4-7] .*moa\.toml", readme + unit)
    assert "StateDirectoryMode=0700" in unit.splitlines()
