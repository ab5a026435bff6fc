"""The environment variables moa's commands read, said once: `moa serve --help` and every client
verb's --help list them, and README.md's "Environment variables" has each of them (with those of
the tests and the VM scripts; tests/test_bus_auth.py checks both against the code)."""
from __future__ import annotations

import textwrap

# name -> what it stands for. Secrets come from here or from files, never from a command line.
CLIENT = {
    "MOA_NATS_URL": "NATS server URL, or a comma-separated list of a cluster's (--nats)",
    "MOA_HOST": "the box's id in subjects (--host; default: the short hostname)",
    "MOA_NATS_USER": "NATS user name (--nats-user)",
    "MOA_NATS_PASSWORD": "NATS password, with a user (or --nats-password-file FILE)",
    "MOA_NATS_TOKEN": "NATS token (or --nats-token-file FILE)",
    "MOA_NATS_NKEY": "nkey seed file (--nats-nkey)",
    "MOA_NATS_CREDS": "NATS creds file: user JWT and seed (--nats-creds)",
    "MOA_NATS_INBOX_PREFIX": "inbox prefix the server's permissions give this user "
                             "(--nats-inbox-prefix)",
    "MOA_STATE_DIR": "state directory (--state-dir of moa serve; default /var/lib/moa): clients "
                     "find the embedded nats-server's credential there (local.nk)",
}
SERVE = {
    "MOA_UPLINK": "the device carrying VXLAN traffic (--uplink)",
    "MOA_LIBBPF": "path of libbpf.so.1 to load (default: the system's)",
    "MOA_FAILPOINTS": "for tests only: failpoints to arm (datapath/faults.py)",
}


def epilog(serve: bool) -> str:
    """The environment section of a --help."""
    names = {**CLIENT, **SERVE} if serve else CLIENT
    width = max(len(n) for n in names)
    lines = [textwrap.fill(text, 98, initial_indent=f"  {name:<{width}}  ",
                           subsequent_indent=" " * (width + 4), break_on_hyphens=False)
             for name, text in names.items()]
    precedence = ("the command line wins over the environment, which wins over --config"
                  if serve else "the command line wins over the environment")
    head = textwrap.fill(f"environment ({precedence}; a secret comes from the environment or a "
                         "file, never from the command line):", 98)
    return head + "\n" + "\n".join(lines)
