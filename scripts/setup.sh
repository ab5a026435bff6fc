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
