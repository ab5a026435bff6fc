"""`moa serve`'s settings: the fields, where each comes from, and the checks of their values.

Settings come from the command line, then the environment (MOA_NATS_URL, MOA_NATS_USER,
MOA_NATS_NKEY, MOA_NATS_CREDS, MOA_NATS_INBOX_PREFIX through the command line's defaults;
MOA_HOST, MOA_UPLINK, MOA_STATE_DIR, MOA_NATS_PASSWORD, MOA_NATS_TOKEN here), then --config FILE
(TOML, keys named like the long options: nats, host, uplink, local, allow_loss_only, state_dir,
embedded_port, stats_interval, drop_interval, netns, pin_root, nats_user, nats_password_file,
nats_token_file, nats_nkey, nats_creds, nats_inbox_prefix, nats_ca, nats_cert, nats_key,
connect_timeout, stream_replicas, ack_wait, horizon, fq_memory_max, metrics, p2p_mode, max_links;
and nats_password, nats_token, which have no option: a secret never goes in a command line),
then defaults. A --config file that holds a secret must be readable by its owner only. A NATS URL
may be a comma-separated list of a cluster's servers. A value that cannot be used is a SettingsError
saying what to change (`moa serve` prints it and exits 2).
"""
from __future__ import annotations

import argparse
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields

import schemas
from datapath import limits
from moa_bus.service import connection, credentials
from moa_bus.service.credentials import DEFAULT_STATE_DIR, CredentialError
from moa_bus.service.embedded_nats import DEFAULT_PORT
from moa_bus.service.subjects import check_host, default_host

MAX_LINKS_DEFAULT = 65536  # ClassifierConfig.max_links
MAX_LINKS_MAX = 1 << 24

# Keys of --config that hold a secret: the file must then be readable by its owner only.
SECRET_KEYS = ("nats_password", "nats_token")
# A secret and the file holding it are one setting: a layer that sets one clears the other.
SECRET_PAIRS = (("nats_password", "nats_password_file"), ("nats_token", "nats_token_file"))
# The options of a NATS client: meaningless for the embedded server, which has its own credential.
CLIENT_KEYS = ("nats_user", "nats_password", "nats_password_file", "nats_token",
               "nats_token_file", "nats_nkey", "nats_creds", "nats_inbox_prefix", "nats_ca",
               "nats_cert", "nats_key")


@dataclass
class ServeSettings:
    nats: str | None = None  # None: embedded nats-server
    host: str = ""
    uplink: str | None = None
    local: str | None = None  # VTEP source address; default: the uplink's first IPv4 address
    allow_loss_only: bool = False
    state_dir: str = DEFAULT_STATE_DIR  # desired/<host>/: the desired state; nats/: embedded store
    embedded_port: int = DEFAULT_PORT
    stats_interval: float = 1.0
    drop_interval: float = 0.25
    netns: str | None = None
    pin_root: str = "/sys/fs/bpf/moa"
    nats_user: str | None = None
    nats_password: str | None = None  # --config or MOA_NATS_PASSWORD only (never argv)
    nats_password_file: str | None = None  # its first line is the password
    nats_token: str | None = None  # --config or MOA_NATS_TOKEN only (never argv)
    nats_token_file: str | None = None
    nats_nkey: str | None = None  # an nkey seed file
    nats_creds: str | None = None  # a NATS .creds file (user JWT and seed)
    nats_inbox_prefix: str | None = None  # the inbox the server's permissions give this user
    nats_ca: str | None = None
    nats_cert: str | None = None
    nats_key: str | None = None
    connect_timeout: float = 5.0
    stream_replicas: int = 1  # replicas of the JetStream events stream moa creates (3 on a cluster)
    ack_wait: float = 30.0  # s JetStream waits for an ack before redelivering an event
    metrics: str | None = None  # ADDR:PORT of the Prometheus endpoint; None: off
    # s: no departure further ahead (classifier and sch_fq); a link that would need more is
    # refused, and at start it is raised to what the desired state holds (datapath/limits.py)
    horizon: float = limits.DEFAULT_HORIZON_NS / limits.NSEC
    # bytes: the worst-case sch_fq memory a change may bring the box to (on the command line a
    # size such as 8GiB); default: half of the machine's memory (MemTotal)
    fq_memory_max: int | None = None
    # how point-to-point links are made: "vtep" (two VXLAN devices joined by a redirect pair) or
    # "flow" (moa_flow entries on the uplink, no device; docs/architecture.md, "Flow mode")
    p2p_mode: str = "flow"
    # VNIs (endpoints) the classifier's maps hold: a point-to-point link takes two. 262,144
    # holds 100,000 flow-mode links; changing it on a box whose maps are pinned needs the pins
    # removed (the load refuses a pinned map of another size)
    max_links: int = MAX_LINKS_DEFAULT

    def nats_options(self, url: str, local_seed: str | None = None) -> connection.NatsOptions:
        """How to connect to `url`: with the embedded server's credential `local_seed`, else with
        these settings (password and token files read now; CredentialError if one cannot be)."""
        name = f"moa-serve-{self.host}"
        if local_seed is not None:
            return connection.NatsOptions(url=url, nkey_seed_file=local_seed, name=name,
                                          connect_timeout=self.connect_timeout)
        password, token = self.nats_password, self.nats_token
        if self.nats_password_file:
            password = credentials.read_secret(self.nats_password_file,
                                               setting_name("nats_password_file"))
        if self.nats_token_file:
            token = credentials.read_secret(self.nats_token_file, setting_name("nats_token_file"))
        return connection.NatsOptions(
            url=url, user=self.nats_user, password=password, token=token,
            nkey_seed_file=self.nats_nkey, creds_file=self.nats_creds,
            inbox_prefix=self.nats_inbox_prefix, tls_ca=self.nats_ca, tls_cert=self.nats_cert,
            tls_key=self.nats_key, connect_timeout=self.connect_timeout, name=name)


class SettingsError(ValueError):
    """A setting to change: `moa serve` says it in one line and exits 2."""


def resolve(config: str | None, given: Mapping[str, object]) -> ServeSettings:
    """The settings from `given` (the command line's values by field name; None or "" is not
    given) > MOA_HOST, MOA_UPLINK, MOA_STATE_DIR, MOA_NATS_PASSWORD, MOA_NATS_TOKEN > the TOML
    file `config` > built-in defaults."""
    s = ServeSettings()
    names = {f.name for f in fields(ServeSettings)}
    if config:
        try:
            with open(config, "rb") as f:
                conf = tomllib.load(f)
        except OSError as e:
            raise SettingsError(
                f"--config {config}: cannot read it ({e.strerror or e})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SettingsError(f"--config {config} is not valid TOML: {e}") from None
        secrets = [key for key in SECRET_KEYS if key in conf]
        if secrets:
            try:
                credentials.check_private(config, f"--config ({', '.join(secrets)})")
            except CredentialError as e:
                raise SettingsError(str(e)) from None
        for key, value in conf.items():
            if key not in names:
                raise SettingsError(f"--config {config}: unknown key {key!r} "
                                    f"(known: {', '.join(sorted(names))})")
            setattr(s, key, _checked_toml_value(config, key, value))
        for pair in SECRET_PAIRS:
            if all(key in conf for key in pair):
                raise SettingsError(f"--config {config}: {pair[0]} and {pair[1]} are the same "
                                    "setting: keep one")
    env = {"host": os.environ.get("MOA_HOST"), "uplink": os.environ.get("MOA_UPLINK"),
           "state_dir": os.environ.get(credentials.STATE_DIR_ENV),
           "nats_password": os.environ.get("MOA_NATS_PASSWORD"),
           "nats_token": os.environ.get("MOA_NATS_TOKEN")}
    for layer in (env, given):
        for key, value in layer.items():
            if key not in names:
                raise ValueError(f"{key!r} is no setting of moa serve")
            if value is not None and value != "":  # MOA_NATS_URL= (empty) means "not set"
                _set_layered(s, key, value)
    try:
        s.host = check_host(s.host) if s.host else default_host()
    except ValueError as e:
        raise SettingsError(f"--host (host in --config, MOA_HOST): {e}") from None
    check_ranges(s)
    return s


def _set_layered(s: ServeSettings, key: str, value: object) -> None:
    """Set `key`; a secret given one way replaces the same secret given the other way by a
    lower layer (MOA_NATS_PASSWORD over the file's nats_password_file)."""
    setattr(s, key, value)
    for pair in SECRET_PAIRS:
        if key in pair:
            other = pair[1 - pair.index(key)]
            setattr(s, other, None)


# The field types of ServeSettings, against which every value of --config is checked (its
# annotations are strings, `from __future__ import annotations`: resolved here once).
_FIELD_TYPES: dict[str, object] = typing.get_type_hints(ServeSettings)


def _allowed(tp: object) -> tuple[type, ...]:
    """The types a field accepts, None left out (TOML has no null: a key is set or absent)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)  # type: ignore[return-value]


def _toml(value: object) -> str:
    """`value` as it would be written in TOML (enough for a message)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _toml_kind(value: object) -> str:
    for tp, kind in ((bool, "a boolean"), (int, "an integer"), (float, "a float"),
                     (str, "a string"), (list, "an array"), (dict, "a table")):
        if isinstance(value, tp):
            return kind
    return "a date/time"


_KIND = {bool: "a boolean (true or false, without quotes)", int: "an integer (without quotes)",
         float: "a number (float, without quotes)", str: "a string (in quotes)"}


def _example(key: str, want: type, value: object) -> str:
    """A correct line for `key`: the value meant, when it can be guessed, else the default."""
    if isinstance(value, str):
        text = value.strip()
        if want is bool and text.lower() in ("true", "false"):
            return f"{key} = {text.lower()}"
        try:
            if want is int:
                return f"{key} = {int(text)}"
            if want is float:
                return f"{key} = {float(text)!r}"
        except ValueError:
            pass
    default = next(f.default for f in fields(ServeSettings) if f.name == key)
    if default is None or default is MISSING:
        default = {bool: False, int: 1, float: 1.0, str: "..."}[want]
    return f"{key} = {_toml(want(default))}"


def _checked_toml_value(path: str, key: str, value: object) -> object:
    """`value` if its TOML type fits the field `key` of ServeSettings (an integer fits a float
    field and becomes a float), else a SettingsError naming the key, the type and the value."""
    allowed = _allowed(_FIELD_TYPES[key])
    for want in allowed:
        if want is bool and isinstance(value, bool):
            return value
        if want is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if want is str and isinstance(value, str):
            return value
    want = allowed[0]
    raise SettingsError(
        f"--config {path}: {key} = {_toml(value)} is {_toml_kind(value)}, but {key} must be "
        f"{_KIND[want]}: write {_example(key, want, value)}")


def setting_name(name: str) -> str:
    """How a message names a setting: its option and its key in --config."""
    if name in SECRET_KEYS:  # no option: a secret never goes in a command line
        return f"{name} (in --config, or MOA_{name.upper()})"
    return f"--{name.replace('_', '-')} ({name} in --config)"


def parse_listen(text: str) -> tuple[str, int]:
    """"ADDR:PORT" (IPv6 in brackets: "[::1]:9464"; ":PORT" is every IPv4 address) as (host,
    port); ValueError saying what is wrong. Port 0 lets the kernel pick one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:9464, [::1]:9464, :9464)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port {port} is outside 0..65535")
    return host or "0.0.0.0", int(port)


def check_ranges(s: ServeSettings) -> None:
    """Numbers that the types allow but the service cannot use."""
    for name in ("stats_interval", "drop_interval", "connect_timeout", "ack_wait"):
        value = getattr(s, name)
        if not value > 0:  # NaN too
            raise SettingsError(
                f"{setting_name(name)} must be a number of seconds above 0, not {value:g}")
    if not 1 <= s.embedded_port <= 65535:
        raise SettingsError(f"{setting_name('embedded_port')} must be a TCP port (1 to 65535), "
                            f"not {s.embedded_port}")
    if s.metrics is not None:
        try:
            parse_listen(s.metrics)
        except ValueError as e:
            raise SettingsError(f"{setting_name('metrics')}: {e}") from None
    if not 0.001 <= s.horizon <= limits.MAX_HORIZON_NS / limits.NSEC:  # NaN too
        raise SettingsError(f"{setting_name('horizon')} must be 0.001 to "
                            f"{limits.MAX_HORIZON_NS // limits.NSEC} seconds (sch_fq's horizon "
                            f"is a 32-bit number of µs), not {s.horizon:g}")
    if s.fq_memory_max is not None and not s.fq_memory_max > 0:
        raise SettingsError(f"{setting_name('fq_memory_max')} must be a number of bytes above "
                            f"0, not {s.fq_memory_max}")
    if s.p2p_mode not in ("vtep", "flow"):
        raise SettingsError(f"{setting_name('p2p_mode')} must be \"vtep\" or \"flow\", not "
                            f"{s.p2p_mode!r}")
    if not 1 <= s.max_links <= MAX_LINKS_MAX:
        raise SettingsError(f"{setting_name('max_links')} must be 1 to {MAX_LINKS_MAX} VNIs, "
                            f"not {s.max_links}")
    if not 1 <= s.stream_replicas <= 5:
        raise SettingsError(f"{setting_name('stream_replicas')} must be 1 to 5 (JetStream's "
                            f"limit), not {s.stream_replicas}")


def check_nats(s: ServeSettings) -> None:
    """The NATS client settings against each other and the files they name (moa serve checks
    them before it starts anything): no client option with the embedded server, at most one way
    to authenticate, and every file holding a secret readable by its owner only."""
    if s.nats is None:
        given = [setting_name(k) for k in CLIENT_KEYS if getattr(s, k)]
        if given:
            raise SettingsError(
                f"{given[0]} is for an external NATS server (--nats URL, nats in --config, "
                "MOA_NATS_URL); without one moa starts its embedded nats-server, whose clients "
                "use the credential it keeps in the state directory")
        return
    ways = [name for name, on in (
        ("a password", s.nats_password or s.nats_password_file), ("a token", s.nats_token or
        s.nats_token_file), ("an nkey", s.nats_nkey), ("a creds file", s.nats_creds)) if on]
    if len(ways) > 1:
        raise SettingsError(f"NATS authentication: {' and '.join(ways)} given; use one")
    if (s.nats_password or s.nats_password_file) and not s.nats_user:
        raise SettingsError(f"a NATS password needs a user: {setting_name('nats_user')} "
                            "(or MOA_NATS_USER)")
    for name in ("nats_password_file", "nats_token_file", "nats_nkey", "nats_creds"):
        path = getattr(s, name)
        if path is not None:
            try:
                credentials.check_private(path, setting_name(name))
            except CredentialError as e:
                raise SettingsError(str(e)) from None
    for name in ("nats_ca", "nats_cert", "nats_key"):
        path = getattr(s, name)
        if path is not None and not os.path.isfile(path):
            raise SettingsError(f"{setting_name(name)}: {path} does not exist")


def horizon_ns(s: ServeSettings) -> int:
    return round(s.horizon * limits.NSEC)


def fq_memory_max_bytes(s: ServeSettings) -> int:
    """--fq-memory-max in bytes; without it, half of the machine's memory (MemTotal)."""
    return s.fq_memory_max if s.fq_memory_max is not None else _mem_total() // 2


def size_argument(text: str) -> int:
    """`--fq-memory-max` on the command line: bytes, or a size with a unit (moa's: 8GiB)."""
    text = text.strip()
    try:
        return schemas.parse_size(int(text) if text.isdigit() else text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (a size such as 8GiB, or bytes)") from None


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise SettingsError("cannot read MemTotal from /proc/meminfo: give --fq-memory-max")
