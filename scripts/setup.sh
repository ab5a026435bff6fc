#!/usr/bin/env bash
# Installs everything moa's build, tests and demo need on a Debian 12 machine, as root.
# Idempotent: a second run only checks. Used by `make setup` (and so by `make test`/`make demo`).
set -euo pipefail

DEB_PACKAGES=(
  clang llvm libbpf-dev libbpf1 bpftool        # BPF build and inspection
  iproute2 iputils-ping iperf3 ethtool socat tcpdump  # plumbing and traffic
  systemd                                      # systemd-analyze checks the example unit
  qemu-system-x86 busybox-static cpio kmod     # the VM fidelity tier
  python3-venv
  prometheus                                   # the metrics tests scrape moa with a real one
  chromium                                     # ... and render the dashboard's panels (a PNG)
)

APT_ENSURE_TAG=setup "$(dirname "$0")/apt-ensure.sh" "${DEB_PACKAGES[@]}"

# bpffs: pinned maps live under /sys/fs/bpf/moa.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mount -t bpf bpf /sys/fs/bpf
fi

# Debian 12's own nats-server (2.9), for tests/test_bus_roles.py only, which runs moa's example
# server configuration on it too: unpacked here, not installed, because the package would start a
# server of its own on 127.0.0.1:4222, the port of moa's embedded server.
DEBIAN_NATS_DIR=/var/cache/moa-tests/debian-nats-server
if [[ ! -x "$DEBIAN_NATS_DIR/usr/sbin/nats-server" ]]; then
  echo "setup: unpacking Debian's nats-server into $DEBIAN_NATS_DIR (not installed)" >&2
  deb_tmp=$(mktemp -d)
  chmod 755 "$deb_tmp"  # apt-get download fetches as the _apt user where it can
  (cd "$deb_tmp" && { apt-get download -qq nats-server 2>/dev/null \
                      || { apt-get update -qq && apt-get download -qq nats-server; }; })
  mkdir -p "$DEBIAN_NATS_DIR"
  dpkg-deb -x "$deb_tmp"/nats-server_*.deb "$DEBIAN_NATS_DIR"
  rm -rf "$deb_tmp"
fi
