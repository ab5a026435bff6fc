"""The demo's processes, started as a user would start them: nats-server, `moa serve`, the CLI
(`moa req`, `moa set`) and pings. Each is recorded before a signal can unwind (signals.critical),
in a session of its own (Ctrl-C in the terminal reaches the demo only, which then stops its
children in order), and `stop()` ends every one of them.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from moa_bus.lab.demo.output import Output, indent
from moa_bus.lab.demo.signals import critical
from moa_bus.service.credentials import ensure_local_credential
from moa_bus.service.embedded_nats import NatsServer, NatsServerError, free_port

# moa's own environment variables must not leak into the demo's commands: it names everything
# (and gives its commands the credential of its nats-server as MOA_NATS_NKEY)
_CLEAN_ENV = {"MOA_NATS_URL": "", "MOA_HOST": "", "MOA_UPLINK": "", "MOA_STATE_DIR": "",
              "MOA_NATS_USER": "", "MOA_NATS_PASSWORD": "", "MOA_NATS_TOKEN": "",
              "MOA_NATS_NKEY": "", "MOA_NATS_CREDS": "", "MOA_NATS_INBOX_PREFIX": ""}


class DemoError(RuntimeError):
    """A step failed; the message says which and why."""


def _moa_cmd(argv: tuple[str, ...] | list[str], url: str) -> list[str]:
    return [sys.executable, "-m", "moa_bus.cli", *argv, "--nats", url]


@dataclass
class Processes:
    tmp: Path
    out: Output
    nats: NatsServer | None = None
    serve: subprocess.Popen | None = None
    children: list[subprocess.Popen] = field(default_factory=list)

    def start_nats(self) -> NatsServer:
        """nats-server with JetStream on a free loopback port, its store in the demo's folder,
        admitting only the holder of the nkey seed it makes there (as `moa serve`'s embedded
        server does)."""
        credential, _ = ensure_local_credential(self.tmp)
        for attempt in range(3):
            self.nats = NatsServer(port=free_port(), state_dir=self.tmp / "nats",
                                   credential=credential)
            try:
                with critical():  # its process must be recorded before a signal can unwind
                    self.nats.start()
                break
            except NatsServerError:
                if attempt == 2:
                    raise
        return self.nats

    def env(self) -> dict[str, str]:
        """The environment of the demo's moa commands: none of the caller's MOA_* settings, and
        the credential of the demo's nats-server."""
        assert self.nats is not None and self.nats.credential is not None
        return {**os.environ, **_CLEAN_ENV, "MOA_NATS_NKEY": str(self.nats.credential)}

    def start_serve(self, argv: list[str], ready_within: float = 60) -> None:
        """`moa serve ARGV` in the background, shown as a user would type it; returns when it
        says "serving host", with its log printed."""
        assert self.nats is not None
        shown = ["moa", *argv, "--nats", self.nats.url]
        self.out.say("$ " + " ".join(shown) + " &", style="bold")
        env = {**self.env(), "PYTHONUNBUFFERED": "1"}
        log = self.tmp / "serve.log"
        with critical(), open(log, "wb") as f:
            self.serve = subprocess.Popen(_moa_cmd(argv, self.nats.url), stdin=subprocess.DEVNULL,
                                          stdout=f, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
        deadline = time.monotonic() + ready_within
        while b"serving host" not in log.read_bytes():
            if self.serve.poll() is not None:
                raise DemoError(f"moa serve exited with {self.serve.returncode}:\n"
                                f"{indent(log.read_text(errors='replace'))}")
            if time.monotonic() > deadline:
                raise DemoError(f"moa serve did not come up within {ready_within:g} s:\n"
                                f"{indent(log.read_text(errors='replace'))}")
            time.sleep(0.1)
        self.out.say(indent(log.read_text(errors="replace").strip()))

    def moa(self, *argv: str, check: bool = True, show: bool = True,
            timeout: float = 120) -> tuple[int, str]:
        """Run the moa CLI like a user would, printing the command line and its output."""
        assert self.nats is not None
        if show:
            shown = ["moa", *argv, "--nats", self.nats.url]
            self.out.say("$ " + " ".join(shlex.quote(a) for a in shown), style="bold")
        env = self.env()
        with critical():
            p = subprocess.Popen(_moa_cmd(argv, self.nats.url), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            self.children.append(p)
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise DemoError(f"`moa {' '.join(argv)}` took more than {timeout:g} s") from None
        text = (stdout + stderr).strip()
        if show and text:
            self.out.say(indent(text))
        if check and p.returncode != 0:
            raise DemoError(f"`moa {' '.join(argv)}` exited {p.returncode}: {text}")
        return p.returncode, stdout

    def popen(self, cmd: list[str], out: Path) -> subprocess.Popen:
        """`cmd` in the background, its output into the file `out`."""
        with critical(), open(out, "wb") as f:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            self.children.append(p)
        return p

    def stop(self) -> list[str]:
        """Stop the children, then the service (SIGTERM: it drains and exits 0), then
        nats-server. Returns what did not go as it should."""
        problems: list[str] = []
        for p in self.children:
            if p.poll() is None:
                p.kill()
            p.wait()
        if self.serve is not None and self.serve.poll() is None:
            self.serve.terminate()
            try:
                self.serve.wait(timeout=15)
            except subprocess.TimeoutExpired:
                problems.append("moa serve ignored SIGTERM for 15 s: killed")
                self.serve.kill()
                self.serve.wait()
        if self.nats is not None:
            self.nats.stop()
        return problems
