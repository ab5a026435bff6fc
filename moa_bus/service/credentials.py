"""NATS credentials: the embedded nats-server's own (an nkey generated at first start into the
state directory, readable by root only, which the local `moa` CLI finds by itself), and the
checks of files that hold a secret (group- or world-readable is refused).

The embedded server knows only the public key (its configuration file holds no secret); a
client proves it holds the seed by signing the server's nonce, so the seed never crosses the
connection and never appears in a command line.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/moa"
LOCAL_SEED_NAME = "local.nk"  # <state-dir>/local.nk: the embedded server's only user
STATE_DIR_ENV = "MOA_STATE_DIR"


class CredentialError(ValueError):
    """A secret in a file others may read, or a credential file that cannot be used: `moa serve`
    says it in one line and exits 2."""


def state_dir(given: str | None = None) -> Path:
    """The state directory: `given`, else MOA_STATE_DIR, else /var/lib/moa."""
    return Path(given or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def local_seed_path(state: str | Path | None = None) -> Path:
    """Where the embedded nats-server's credential lives: <state-dir>/local.nk."""
    return state_dir(str(state) if state is not None else None) / LOCAL_SEED_NAME


def readable_by_others(path: str | Path) -> str | None:
    """'group', 'others' or 'group and others' when the file's mode lets them read it, else
    None."""
    mode = os.stat(path).st_mode
    who = [name for bit, name in ((stat.S_IRGRP, "group"), (stat.S_IROTH, "others"))
           if mode & bit]
    return " and ".join(who) or None


def check_private(path: str | Path, what: str) -> None:
    """A file holding a secret must be readable by its owner only: else a CredentialError naming
    the file, its mode and the fix."""
    try:
        who = readable_by_others(path)
    except FileNotFoundError:
        raise CredentialError(f"{what}: {path} does not exist") from None
    except OSError as e:
        raise CredentialError(f"{what}: cannot read {path} ({e.strerror or e})") from None
    if who is not None:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        raise CredentialError(
            f"{what}: {path} holds a secret but is readable by {who} (mode {mode:04o}): "
            f"chmod 600 {path}")


def read_secret(path: str | Path, what: str) -> str:
    """The secret in a password or token file: its first line, without the line end."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CredentialError(f"{what}: cannot read {path} ({e.strerror or e})") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise CredentialError(f"{what}: {path} is empty (the secret goes on its first line)")
    return lines[0]


def new_user_seed() -> bytes:
    """A fresh nkey user seed (S...)."""
    import nkeys  # here, not at the top: every `moa` command imports this module

    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)


def public_key(seed: bytes) -> str:
    """The public key (U...) of an nkey user seed; ValueError when it is not one."""
    import nkeys

    try:
        kp = nkeys.from_seed(bytearray(seed.strip()))
    except Exception as e:  # nkeys raises its own error types, and binascii's
        raise ValueError(f"not an nkey seed ({type(e).__name__})") from None
    try:
        key = kp.public_key.decode()
    finally:
        kp.wipe()
    if not key.startswith("U"):
        raise ValueError("not an nkey user seed")
    return key


def ensure_local_credential(state: str | Path) -> tuple[Path, str]:
    """The embedded server's credential under `state`: (seed file, public key). Made at first
    start (mode 0600, owned by this process's user); an existing one is used as it is, after
    checking that no one else can read it. A CredentialError says what to fix."""
    path = local_seed_path(state)
    what = "the embedded nats-server's credential"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(new_user_seed() + b"\n")
            f.flush()
            os.fsync(f.fileno())
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"{what}: {path} is not a regular file: remove it (a new one is "
                              "made at the next start)")
    if st.st_uid != os.geteuid():
        raise CredentialError(f"{what}: {path} belongs to uid {st.st_uid}, not to the service's "
                              f"uid {os.geteuid()}: remove it (a new one is made at the next "
                              "start)")
    check_private(path, what)
    try:
        key = public_key(path.read_bytes())
    except ValueError as e:
        raise CredentialError(f"{what}: {path} is {e}: remove it (a new one is made at the next "
                              "start)") from None
    return path, key


def server_config(public_keys: list[str]) -> str:
    """A nats-server configuration that admits only these nkey users (no secret in it)."""
    users = ", ".join(f'{{nkey: "{k}"}}' for k in public_keys)
    return ("# written by moa at every start: only the holder of the seed in "
            f"{LOCAL_SEED_NAME} may connect\nauthorization {{ users = [{users}] }}\n")
