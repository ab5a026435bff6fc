#!/bin/sh
# /init of the VM fidelity tier's initramfs (busybox sh, PID 1). Built into the initramfs by
# prepare.sh; run.sh boots it. It:
#   1. mounts the host's / (9p tag "root", read-only) under a tmpfs overlay, so the host's tools,
#      venv and built files are usable and every path is writable without touching the host;
#   2. links /lib/modules/VERSION to the unpacked Debian kernel's modules (moa.kdir=) and loads
#      the modules the tier needs;
#   3. mounts the output share (9p tag "out") at the same absolute path as on the host (moa.out=),
#      runs moa.out/cmd.sh with bash in the new root, its output in cmd.log, its exit code in rc;
#   4. powers off. Any failure before cmd.sh leaves no rc file: run.sh reports a boot failure.
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sys /sys
busybox mount -t devtmpfs dev /dev
busybox --install -s /bin
exec </dev/console >/dev/console 2>&1

fail() {
    echo "moa-init: FAILED: $*"
    sync
    poweroff -f
}

arg() { # value of kernel command line parameter $1
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1="*) echo "${w#*=}"; return ;; esac
    done
}
KDIR="$(arg moa.kdir)"
VER="$(arg moa.ver)"
OUT="$(arg moa.out)"
ROOTTAG="$(arg moa.root)"; ROOTTAG="${ROOTTAG:-root}"
echo "moa-init: start $(cut -d' ' -f1 /proc/uptime)s kernel $(uname -r)"

for m in $(cat /modules/order); do
    insmod "/modules/$m" || fail "insmod $m"
done

# msize 512 KiB: fewer 9p round trips for Python imports; cache=loose: the lower is read-only.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose "$ROOTTAG" /lower ||
    fail "mount 9p $ROOTTAG"
mount -t tmpfs -o mode=755 upper /upper || fail "tmpfs upper"
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot ||
    fail "overlay root"

R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t bpf bpf $R/sys/fs/bpf || fail "bpffs"
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
# Fresh, empty writable paths (the overlay would show the host's contents there: its network
# namespaces, pids, sockets). Not /root: the host's Python (pyenv) and the venv's interpreter
# link may live there. Not /tmp: a checkout cloned under /tmp (CI's may be) holds the venv and
# the code the VM runs; through the overlay it is visible and writable like the rest of /.
for d in /run /var/tmp /var/log; do
    mkdir -p $R$d
    mount -t tmpfs tmpfs $R$d
done
chmod 1777 $R/var/tmp
mkdir -p $R/run/netns $R/run/lock

[ -n "$KDIR" ] && [ -n "$VER" ] || fail "moa.kdir= / moa.ver= missing on the kernel command line"
mkdir -p $R/lib/modules
ln -sfn "$KDIR/lib/modules/$VER" "$R/lib/modules/$VER"
# The kernel's module autoloader (tc asking for "sch_clsact", ...) runs in PID 1's root, the
# initramfs: hand it to the new root's modprobe.
printf '#!/bin/sh\nexec chroot /newroot /sbin/modprobe "$@"\n' >/bin/modprobe-newroot
chmod 755 /bin/modprobe-newroot
echo /bin/modprobe-newroot >/proc/sys/kernel/modprobe

[ -n "$OUT" ] || fail "moa.out= missing"
mkdir -p "$R$OUT"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out "$R$OUT" || fail "mount 9p out"
[ -f "$R$OUT/cmd.sh" ] || fail "no cmd.sh in the output share"

hostname moa-vm
# Global (not per namespace): let iperf3 -w give UDP receivers a buffer that rides out the
# moments a vCPU is not scheduled, so the receiver does not drop what the shaper let through.
echo 8388608 >/proc/sys/net/core/rmem_max
echo 8388608 >/proc/sys/net/core/wmem_max
chroot $R /sbin/ip link set lo up
for m in sch_fq sch_netem sch_prio sch_tbf sch_ingress bonding vxlan cls_bpf cls_u32 veth bridge; do
    chroot $R /sbin/modprobe "$m" || echo "moa-init: modprobe $m failed"
done

cut -d' ' -f1 /proc/uptime >"$R$OUT/boot_s"
echo "moa-init: running cmd.sh at $(cat "$R$OUT/boot_s")s"
chroot $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 MOA_VM=1 MOA_VM_OUT="$OUT" \
    /bin/bash -c 'cd "$MOA_VM_OUT" && exec /bin/bash ./cmd.sh' >"$R$OUT/cmd.log" 2>&1
rc=$?
cut -d' ' -f1 /proc/uptime >"$R$OUT/end_s"
echo "$rc" >"$R$OUT/rc"
echo "moa-init: cmd.sh exited $rc at $(cat "$R$OUT/end_s")s"
sync
umount "$R$OUT"
poweroff -f
