"""What the client subcommands (req, materialize, set, status, show, watch) share: the NATS and
host options (`moa serve` takes the same NATS options), a bounded connection, and requests whose
reply decides the exit status."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import sys
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client

import schemas
from moa_bus import engine
from moa_bus.cli import environment
from moa_bus.service import connection, credentials
from moa_bus.service.subjects import Subjects, check_host, default_host


class _NoSecretInArgv(argparse.Action):
    """--nats-password, --nats-token: refused, since a command line is visible to every user in
    `ps`; the message says where the secret goes instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        env, option = {"--nats-password": ("MOA_NATS_PASSWORD", "--nats-password-file"),
                       "--nats-token": ("MOA_NATS_TOKEN", "--nats-token-file")}[option_string]
        parser.exit(2, f"{parser.prog}: {option_string} would put the secret in the command "
                       f"line, where `ps` shows it to every user: set {env}, or give "
                       f"{option} FILE (readable by you only)\n")


class _Url(argparse.Action):
    """--nats URL: a URL carrying a user, password or token (user:pass@host) is refused for the
    same reason; MOA_NATS_URL may carry one."""

    def __call__(self, parser, namespace, values, option_string=None):
        if "@" in values:
            parser.exit(2, f"{parser.prog}: the --nats URL carries credentials (...@host), "
                           "which `ps` shows to every user: give the URL without them and the "
                           "credential by MOA_NATS_USER/MOA_NATS_PASSWORD, MOA_NATS_TOKEN, "
                           "--nats-nkey or --nats-creds\n")
        setattr(namespace, self.dest, values)


def add_nats_arguments(parser: argparse.ArgumentParser) -> None:
    """The NATS client options every `moa` subcommand takes (env: MOA_NATS_URL, ...). No option
    takes a secret: passwords and tokens come from a file or the environment."""
    env = os.environ.get
    g = parser.add_argument_group(
        "NATS", "Without a credential, a client connecting to this machine (the default URL) "
        "uses the embedded nats-server's, <state-dir>/local.nk, when it may read it (root).")
    g.add_argument("--nats", metavar="URL", default=env("MOA_NATS_URL"), action=_Url,
                   help=f"NATS server URL, or a comma-separated list of a cluster's servers "
                        f"(env MOA_NATS_URL; default {connection.DEFAULT_URL})")
    g.add_argument("--nats-user", metavar="NAME", default=env("MOA_NATS_USER"),
                   help="user name (env MOA_NATS_USER); its password: MOA_NATS_PASSWORD or "
                        "--nats-password-file")
    g.add_argument("--nats-password-file", metavar="FILE",
                   help="file whose first line is the password (or env MOA_NATS_PASSWORD)")
    g.add_argument("--nats-token-file", metavar="FILE",
                   help="file whose first line is the token (or env MOA_NATS_TOKEN)")
    g.add_argument("--nats-nkey", metavar="SEED_FILE", default=env("MOA_NATS_NKEY"),
                   help="nkey seed file (env MOA_NATS_NKEY)")
    g.add_argument("--nats-creds", metavar="FILE", default=env("MOA_NATS_CREDS"),
                   help="NATS creds file: user JWT and nkey seed (env MOA_NATS_CREDS)")
    g.add_argument("--nats-inbox-prefix", metavar="PREFIX", default=env("MOA_NATS_INBOX_PREFIX"),
                   help="subject prefix of this client's reply inboxes, when the server's "
                        "permissions give it one (env MOA_NATS_INBOX_PREFIX; default _INBOX)")
    for option in ("--nats-password", "--nats-token"):  # refused: see _NoSecretInArgv
        g.add_argument(option, action=_NoSecretInArgv, dest="_refused", help=argparse.SUPPRESS)
    g.add_argument("--nats-ca", metavar="FILE",
                   help="CA bundle to verify the server's TLS certificate")
    g.add_argument("--nats-cert", metavar="FILE", help="client TLS certificate")
    g.add_argument("--nats-key", metavar="FILE", help="client TLS key")
    # default None, not 5: `moa serve` layers flags over its --config file, and a default here
    # would always win over the file's connect_timeout.
    g.add_argument("--connect-timeout", type=float, default=None, metavar="S",
                   help="give up connecting after S seconds "
                        f"(default {connection.NatsOptions.connect_timeout:g})")


def _secret(path: str | None, env: str, option: str) -> str | None:
    """A password or token: from the file `path` when given, else the environment."""
    if path:
        return credentials.read_secret(path, option)
    return os.environ.get(env) or None


def nats_options(args: argparse.Namespace, url: str | None = None) -> connection.NatsOptions:
    """The connection options of add_nats_arguments' flags (and the environment's secrets);
    without any credential, the embedded server's when the URL is this machine's."""
    # A variable set to nothing (MOA_NATS_NKEY=) is not set.
    opts = connection.NatsOptions(
        url=url or args.nats or connection.DEFAULT_URL,
        user=args.nats_user or None,
        password=_secret(args.nats_password_file, "MOA_NATS_PASSWORD", "--nats-password-file"),
        token=_secret(args.nats_token_file, "MOA_NATS_TOKEN", "--nats-token-file"),
        nkey_seed_file=args.nats_nkey or None,
        creds_file=args.nats_creds or None,
        inbox_prefix=args.nats_inbox_prefix or None,
        tls_ca=args.nats_ca,
        tls_cert=args.nats_cert,
        tls_key=args.nats_key,
        connect_timeout=(connection.NatsOptions.connect_timeout if args.connect_timeout is None
                         else args.connect_timeout),
    )
    use_local_credential(opts)
    return opts


def _is_local(url: str) -> bool:
    """Every server of `url` is on this machine (a loopback address or localhost)."""
    for server in connection.server_list(url):
        host = urlsplit(server if "://" in server else f"nats://{server}").hostname or ""
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return True


def use_local_credential(opts: connection.NatsOptions) -> None:
    """A client given no credential, connecting to this machine, authenticates with the
    embedded nats-server's (<state-dir>/local.nk) when it may read it; otherwise what it found
    is kept for the message of a refused connection."""
    if any((opts.user, opts.password, opts.token, opts.nkey_seed_file, opts.creds_file)):
        return
    if not _is_local(opts.url):
        return
    path = credentials.local_seed_path()
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        opts.auth_hint = (f"no credential given, and none at {path} (the embedded nats-server's, "
                          "made by `moa serve`; MOA_STATE_DIR names another state directory)")
        return
    except OSError as e:
        opts.auth_hint = (f"the embedded nats-server's credential {path} is not readable by this "
                          f"user ({e.strerror}): run as root, or connect with a credential of "
                          "your own (--nats-nkey, --nats-creds, MOA_NATS_USER/MOA_NATS_PASSWORD)")
        return
    opts.nkey_seed_file = str(path)


def add_arguments(parser: argparse.ArgumentParser, timeout: float = 5.0) -> None:
    """The options of a client subcommand: NATS's, the box's host id, the reply's timeout."""
    add_nats_arguments(parser)
    parser.epilog = environment.epilog(serve=False)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--host", default=None, metavar="ID",
                        help="the box's id in subjects (env MOA_HOST; default: this hostname)")
    parser.add_argument("--timeout", type=float, default=timeout, metavar="S",
                        help=f"seconds to wait for a reply (default {timeout:g})")


def subjects(args: argparse.Namespace) -> Subjects:
    return Subjects(check_host(args.host) if args.host else default_host())


async def _say_refusals(e: BaseException) -> None:
    """The server refused a publish or a subscription (its permissions for this user): say so at
    once; otherwise a refused request would look like a service that does not answer."""
    text = str(e)
    if "ermissions violation" in text:
        print(f"moa: the NATS server refused: {text.removeprefix('nats: ')}", file=sys.stderr)


@contextlib.asynccontextmanager
async def connected(args: argparse.Namespace) -> AsyncIterator[Client]:
    nc = await connection.connect(nats_options(args), error_cb=_say_refusals)
    try:
        yield nc
    finally:
        await nc.close()


Reply = engine.Reply  # a reply as it came (moa req prints it)


async def request(nc: Client, subject: str, data: bytes, timeout: float,
                  headers: dict[str, str] | None = None) -> Reply:
    msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    return Reply(msg.data, msg.headers)


def run_request(args: argparse.Namespace, subject_of, payload: bytes,
                headers: dict[str, str] | None = None, show=None) -> int:
    """Connect, send one request, print the reply; 0 on success, 1 on an error reply or timeout."""
    async def go() -> int:
        async with connected(args) as nc:
            subject = subject_of(subjects(args)) if callable(subject_of) else subject_of
            try:
                reply = await request(nc, subject, payload, args.timeout, headers)
            except nats.errors.NoRespondersError:
                print(f"moa: no service answers on {subject} (is `moa serve` running with this "
                      "--host?)", file=sys.stderr)
                return 1
            except nats.errors.TimeoutError:
                print(f"moa: no reply on {subject} within {args.timeout:g} s", file=sys.stderr)
                return 1
        (show or print_reply)(reply)
        return 1 if reply.is_error else 0
    return run_async(go())


def run_engine(args: argparse.Namespace, call, show, settle=None) -> int:
    """Connect (as `connected`), make one call of the engine client (moa_bus/engine.py) the
    verbs are built on, `show(result)` and return its exit status. Nobody answering is one line
    and 1; an error Ack the call raised (engine.Refused) is printed as a reply and 1.
    `settle()` runs before anything is printed (a spinner making way)."""
    settle = settle or (lambda: None)

    async def go() -> int:
        async with connected(args) as nc:
            box = engine.MoaClient(nc, subjects(args).host, timeout=args.timeout)
            try:
                result = await call(box)
            except engine.Unavailable as e:
                settle()
                print(f"moa: {e}", file=sys.stderr)
                return 1
            except engine.Refused as e:
                settle()
                return print_ack(e.ack)
        settle()
        return show(result)
    return run_async(go())


def print_ack(ack: schemas.Ack) -> int:
    """An Ack as `moa req` prints a reply; the exit status it means (1 when not ok)."""
    print_reply(Reply(schemas.encode(ack), None))
    return 0 if ack.ok else 1


def print_reply(reply: Reply) -> None:
    obj = reply.json
    if obj is None:
        sys.stdout.write(reply.data.decode(errors="replace") + "\n")
    else:
        print(json.dumps(obj, indent=2 if sys.stdout.isatty() else None))
    if reply.is_error and isinstance(obj, dict) and obj.get("error"):
        err = obj["error"]
        where = f" at {err['field']}" if err.get("field") else ""
        print(f"moa: {err.get('code')}{where}: {err.get('message')}", file=sys.stderr)


def run_async(coro) -> int:
    """Run a client coroutine; a connection failure is one clear line and exit status 1, a
    credential that cannot be used one line and exit status 2."""
    try:
        return asyncio.run(coro)
    except connection.BusConnectError as e:
        print(f"moa: {e}", file=sys.stderr)
        return 1
    except credentials.CredentialError as e:
        print(f"moa: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def read_payload(arg: str | None) -> bytes:
    """JSON text, @FILE, or @- for stdin; nothing is an empty body."""
    if arg is None:
        return b""
    if arg.startswith("@"):
        path = arg[1:]
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    return arg.encode()
