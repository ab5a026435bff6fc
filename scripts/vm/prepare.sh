#!/usr/bin/env bash
# Prepares everything the VM fidelity tier boots: Debian 12's 6.1 kernel (unpacked, never
# installed: /boot stays untouched), its modules with depmod, an uncompressed vmlinux, and a busybox
# initramfs whose /init is scripts/vm/init.sh. Idempotent: a second run only checks (about 0.1 s).
#
#   scripts/vm/prepare.sh            # prepare (installs missing Debian packages with apt-get)
#   scripts/vm/prepare.sh --print    # prepare, then print KEY=VALUE lines for run.sh / moa_bus.lab.vm
#
# Cache: $MOA_VM_CACHE, default <repo>/vm-cache (gitignored). Delete it to start over.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${MOA_VM_CACHE:-$REPO/vm-cache}"
KDIR="$CACHE/kernel"           # dpkg-deb -x target: boot/ and lib/modules/VERSION
INITRD="$CACHE/initramfs.cpio.gz"
# Modules the initramfs needs before the host's / is mounted (9p root, overlay on top of it).
EARLY_MODULES=(virtio_pci virtio_rng 9p 9pnet_virtio overlay)

log() { echo "vm-prepare: $*" >&2; }
die() { echo "vm-prepare: ERROR: $*" >&2; exit 1; }

# 1. Debian packages the tier uses (host side and, through the shared root, inside the VM).
#    iputils-ping: busybox's ping has no sub-second interval.
DEB_PACKAGES=(qemu-system-x86 busybox-static cpio kmod iproute2 iperf3 iputils-ping clang xz-utils)
APT_ENSURE_TAG=vm-prepare "$HERE/../apt-ensure.sh" "${DEB_PACKAGES[@]}"

mkdir -p "$CACHE"

# 2. The kernel: the exact package linux-image-amd64 currently depends on, unpacked into $KDIR.
if [[ ! -f "$CACHE/kernel.version" ]]; then
  pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-6\.1\./ {print $2; exit}')"
  if [[ -z "$pkg" ]]; then
    apt-get update -qq
    pkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6\.1\./ {print $2; exit}')"
  fi
  [[ -n "$pkg" ]] || die "no linux-image-6.1.*-amd64 package found (apt-cache depends linux-image-amd64)"
  log "downloading $pkg"
  tmp="$(mktemp -d "$CACHE/dl.XXXXXX")"
  chmod 777 "$tmp"   # apt-get download fetches as user _apt
  (cd "$tmp" && apt-get download -q "$pkg" >/dev/null) || die "apt-get download $pkg failed"
  rm -rf "$KDIR"
  dpkg-deb -x "$tmp"/"$pkg"_*.deb "$KDIR"
  rm -rf "$tmp"
  version="$(ls "$KDIR/lib/modules" | head -n1)"
  [[ -f "$KDIR/boot/vmlinuz-$version" ]] || die "package $pkg has no boot/vmlinuz-$version"
  log "depmod $version"
  depmod -b "$KDIR" "$version"
  echo "$version" >"$CACHE/kernel.version"
fi
VERSION="$(cat "$CACHE/kernel.version")"
VMLINUZ="$KDIR/boot/vmlinuz-$VERSION"

# 3. Uncompressed vmlinux: boots about 5 s faster under TCG than the bzImage (docs/environment.md).
#    Same idea as the kernel's extract-vmlinux script: find the compressed payload by magic.
VMLINUX="$CACHE/vmlinux-$VERSION"
if [[ ! -s "$VMLINUX" ]]; then
  log "extracting vmlinux"
  python3 - "$VMLINUZ" "$VMLINUX.tmp" <<'EOF'
import lzma, sys, zlib
data = open(sys.argv[1], "rb").read()
def try_xz(off):
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
def try_gz(off):
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[off:])
for magic, fn in ((b"\xfd7zXZ\x00", try_xz), (b"\x1f\x8b\x08", try_gz)):
    off = data.find(magic)
    while off >= 0:
        try:
            out = fn(off)
        except Exception:
            out = b""
        if out[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(out)
            sys.exit(0)
        off = data.find(magic, off + 1)
sys.exit("no ELF payload found in " + sys.argv[1])
EOF
  mv "$VMLINUX.tmp" "$VMLINUX"
fi

# 4. The initramfs: static busybox, /init, and the early modules (in dependency order).
#    Rebuilt when init.sh or this script is newer than it.
if [[ ! -s "$INITRD" || "$HERE/init.sh" -nt "$INITRD" || "$0" -nt "$INITRD" ]]; then
  log "building initramfs"
  stage="$(mktemp -d "$CACHE/initramfs.XXXXXX")"
  mkdir -p "$stage"/{bin,dev,proc,sys,newroot,lower,upper,modules}
  cp /bin/busybox "$stage/bin/busybox"
  ln -s busybox "$stage/bin/sh"
  mknod -m 600 "$stage/dev/console" c 5 1
  mknod -m 666 "$stage/dev/null" c 1 3
  cp "$HERE/init.sh" "$stage/init"
  chmod 755 "$stage/init"
  : >"$stage/modules/order"
  modprobe -d "$KDIR" -S "$VERSION" --show-depends -a "${EARLY_MODULES[@]}" |
    awk '$1 == "insmod" {print $2}' | while read -r ko; do
      name="$(basename "$ko")"
      case "$name" in
        *.ko.xz) xz -dc "$ko" >"$stage/modules/${name%.xz}"; name="${name%.xz}" ;;
        *) cp "$ko" "$stage/modules/$name" ;;
      esac
      grep -qx "$name" "$stage/modules/order" || echo "$name" >>"$stage/modules/order"
    done
  [[ -s "$stage/modules/order" ]] || die "could not resolve early modules ${EARLY_MODULES[*]}"
  (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$stage"
fi

if [[ "${1:-}" == "--print" ]]; then
  echo "MOA_VM_VERSION=$VERSION"
  echo "MOA_VM_KERNEL=$VMLINUX"
  echo "MOA_VM_INITRD=$INITRD"
  echo "MOA_VM_KDIR=$KDIR"
fi
