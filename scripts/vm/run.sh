#!/usr/bin/env bash
# Boots Debian's 6.1 kernel once under qemu, runs CMDFILE inside (bash, in a writable overlay of
# the host's /), and exits with CMDFILE's exit code.
#
#   scripts/vm/run.sh CMDFILE OUTDIR
#
# OUTDIR (created if missing) is shared with the VM at the same absolute path; afterwards it holds
# cmd.sh (a copy of CMDFILE), cmd.log (its stdout+stderr), rc, boot_s and end_s (guest uptime when
# cmd.sh started / ended), console.log (the kernel console), plus whatever CMDFILE wrote there.
# A VM that does not reach cmd.sh is a boot failure: exit 125 and the console's tail on stderr.
#
# Environment: MOA_VM_TIMEOUT (s, default 900), MOA_VM_KVM=1 (try KVM; default TCG, since KVM
# cannot boot a stock kernel on these machines), MOA_VM_MEM (default 1G), MOA_VM_SMP (default 2),
# MOA_VM_APPEND (extra kernel command line), MOA_VM_CACHE (see prepare.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BOOT_FAILURE=125

[[ $# -eq 2 ]] || { echo "usage: $0 CMDFILE OUTDIR" >&2; exit 2; }
CMDFILE="$1"
mkdir -p "$2"
OUT="$(cd "$2" && pwd)"
[[ -f "$CMDFILE" ]] || { echo "run.sh: no such file: $CMDFILE" >&2; exit 2; }

eval "$("$HERE/prepare.sh" --print)"

if [[ "$(realpath "$CMDFILE")" != "$OUT/cmd.sh" ]]; then
  cp "$CMDFILE" "$OUT/cmd.sh"
fi
rm -f "$OUT/rc" "$OUT/boot_s" "$OUT/end_s" "$OUT/cmd.log" "$OUT/console.log"

APPEND="console=ttyS0 panic=-1 loglevel=4 rdinit=/init moa.kdir=$MOA_VM_KDIR moa.ver=$MOA_VM_VERSION moa.out=$OUT ${MOA_VM_APPEND:-}"
((${#APPEND} < 2000)) || { echo "run.sh: kernel command line too long (${#APPEND})" >&2; exit 2; }

boot() { # ACCEL: tcg or kvm
  local accel
  if [[ "$1" == kvm ]]; then
    accel=(-accel kvm -cpu host)
  else
    # tb-size: a bigger translation cache, fewer retranslations of hot kernel code.
    accel=(-accel tcg,tb-size=256 -cpu max)
  fi
  echo "$1" >"$OUT/accel"
  timeout --kill-after=10 "${MOA_VM_TIMEOUT:-900}" qemu-system-x86_64 \
    "${accel[@]}" -M pc -m "${MOA_VM_MEM:-1G}" -smp "${MOA_VM_SMP:-2}" \
    -nodefaults -no-user-config -display none -monitor none -no-reboot \
    -serial "file:$OUT/console.log" \
    -device virtio-rng-pci \
    -kernel "$MOA_VM_KERNEL" -initrd "$MOA_VM_INITRD" -append "$APPEND" \
    -virtfs local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$OUT,mount_tag=out,security_model=none" \
    </dev/null >"$OUT/qemu.log" 2>&1
}

# Progress on stderr while qemu runs (a boot plus a batch takes minutes under TCG): the phase,
# the batch's latest step and the elapsed time. On when stderr is a terminal or
# MOA_VM_PROGRESS=1; never in the files the batch is judged by.
progress() {
  set +e +o pipefail  # a background ticker: nothing it reads (a missing steps/) may end it
  local t0=$SECONDS phase step
  while sleep 2; do
    if [[ -f "$OUT/rc" ]]; then
      phase="powering off"
    elif [[ -f "$OUT/boot_s" ]]; then
      step=$(ls -t "$OUT/steps" 2>/dev/null | head -n 1)
      phase="running $(basename "$CMDFILE")${step:+: ${step%.*}}"
    else
      phase="booting Linux $MOA_VM_VERSION under qemu ($([[ -f "$OUT/accel" ]] && cat "$OUT/accel"))"
    fi
    printf '\rVM: %-70s %4ds' "$phase" $((SECONDS - t0)) >&2
  done
}
if [[ -t 2 || "${MOA_VM_PROGRESS:-0}" == 1 ]]; then
  progress &
  ticker=$!
  trap 'kill "$ticker" 2>/dev/null || true; echo >&2' EXIT  # errexit holds in traps too
fi

start=$(date +%s.%N)
set +e
qrc=1
if [[ "${MOA_VM_KVM:-0}" == "1" ]]; then
  # KVM only where it works: on these machines it cannot boot a stock kernel (docs/environment.md).
  MOA_VM_TIMEOUT="${MOA_VM_KVM_TIMEOUT:-120}" boot kvm
  qrc=$?
  [[ -f "$OUT/rc" ]] || echo "run.sh: KVM boot failed (qemu exit $qrc), falling back to TCG" >&2
fi
if [[ ! -f "$OUT/rc" ]]; then
  boot tcg
  qrc=$?
fi
set -e
end=$(date +%s.%N)
echo "$start $end" | awk '{printf "%.2f\n", $2 - $1}' >"$OUT/wall_s"

if [[ ! -f "$OUT/rc" ]]; then
  {
    echo "run.sh: BOOT FAILURE: the VM did not run cmd.sh (qemu exit $qrc; 124 = timeout)"
    echo "--- qemu.log"; tail -n 20 "$OUT/qemu.log" 2>/dev/null
    echo "--- console.log (tail)"; tail -n 40 "$OUT/console.log" 2>/dev/null
  } >&2
  exit $BOOT_FAILURE
fi
exit "$(cat "$OUT/rc")"
