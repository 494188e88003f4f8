#!/usr/bin/env bash
# Multi-node NUMA test bed: boots a throw-away Linux guest with an uneven
# NUMA topology under QEMU TCG and runs a test command inside it.  The host
# has a single NUMA node, so this is the only place node binding, migration
# and per-node accounting can really be exercised.
#
#   run.sh [--timeout SECS] [BIN... -- CMD [ARGS...]]
#
# Each BIN (host executable) is copied into the guest's /bin together with
# the shared libraries it links against; CMD runs in the guest as the suite.
# Without BIN/CMD: target/release/{hostmem,numa-suite}, qemu-system-x86_64 (with the
# firmware -machine pc reads) and /bin/numa-suite.
# Exit status: 0 only if the guest reported `NUMA-VM: suite exit 0`.
set -Eeuo pipefail
# Whatever fails without a message of its own still says what failed and where (once:
# not again in each command substitution it happened in).
trap 'rc=$?; ((BASH_SUBSHELL)) || echo "NUMA-VM: error: ${0##*/} line $LINENO: \`$BASH_COMMAND\` failed (exit $rc)" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=$ROOT/target/numa-vm
TIMEOUT=240

# Host-side messages share stdout with the guest console so logs keep order.
die() { echo "NUMA-VM: error: $*" >&2; exit 1; }
note() { echo "NUMA-VM: $*"; }

# ---------------------------------------------------------------- arguments
usage() {
    echo "usage: ${0##*/} [--timeout SECS] [BIN... -- CMD [ARGS...]]" >&2
    exit 2
}
BINS=()
CMD=()
while (($#)); do
    case $1 in
        --timeout)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--timeout needs a positive number of seconds"
            TIMEOUT=$2; shift 2 ;;
        -h|--help) usage ;;
        --) shift; CMD=("$@"); break ;;
        *) BINS+=("$1"); shift ;;
    esac
done
# The default QEMU is added once `need` below has installed it where it was missing.
WITH_QEMU=
if ((${#BINS[@]} == 0 && ${#CMD[@]} == 0)); then
    BINS=("$ROOT/target/release/hostmem" "$ROOT/target/release/numa-suite")
    CMD=(/bin/numa-suite)
    WITH_QEMU=1
fi
((${#CMD[@]})) || die "no guest command given after --"
for b in "${BINS[@]}"; do
    [[ -f $b && -x $b ]] || die "$b is not an executable file (build it first: cargo build --release --workspace)"
done

# ---------------------------------------------------------------- host tools
# apt helpers, the kernel download and busybox: shared with tests/qmp's virtio-mem guest.
# shellcheck source=tests/lib/guest-kernel.sh
. "$ROOT/tests/lib/guest-kernel.sh"
need qemu-system-x86_64 qemu-system-x86
need cpio cpio
need numactl numactl
[[ -z $WITH_QEMU ]] || BINS+=("$(command -v qemu-system-x86_64)")
need_busybox_static

mkdir -p "$CACHE"

# ---------------------------------------------------------------- kernel
# No modules: everything this guest needs is built in (checked below).
guest_kernel "$CACHE"
for opt in CONFIG_NUMA CONFIG_ACPI_NUMA CONFIG_DEVTMPFS CONFIG_TMPFS CONFIG_HUGETLBFS \
           CONFIG_SERIAL_8250_CONSOLE CONFIG_BLK_DEV_INITRD CONFIG_RD_GZIP; do
    grep -qx "$opt=y" "$KCONFIG" || die "$KPKG: $opt is not built in; the module-less guest cannot work"
done

# ---------------------------------------------------------------- initramfs
STAGE=$CACHE/initramfs
INITRD=$CACHE/initramfs.cpio.gz
rm -rf "$STAGE" "$INITRD"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,etc}

# copy_exe HOSTPATH: into the guest's /bin, with every library `ldd` lists
# (and the dynamic loader) at the same absolute path it has on the host.
copy_exe() {
    local exe=$1 dst=$STAGE/bin/${1##*/} out lib
    rm -f "$dst"
    cp -L "$exe" "$dst"
    # ldd exits non-zero for static executables: nothing to copy then.
    out=$(ldd "$exe" 2>&1) || return 0
    if grep -q 'not found' <<<"$out"; then
        die "$exe: missing shared libraries:"$'\n'"$out"
    fi
    # Lines: "libx.so => /path (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)", vdso.
    while read -r lib; do
        [[ -e $STAGE$lib ]] && continue
        mkdir -p "$STAGE${lib%/*}"
        cp -L "$lib" "$STAGE$lib"
    done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out")
}
for b in "${BINS[@]}"; do copy_exe "$b"; done
# A QEMU in the guest (suite module vm.rs) reads these two files at -machine pc
# start-up, at the paths Debian's build searches (found with strace; it dlopens no
# module for tcg with -display none).
if [[ -e $STAGE/bin/qemu-system-x86_64 ]]; then
    for f in /usr/share/seabios/bios-256k.bin /usr/share/qemu/kvmvapic.bin; do
        mkdir -p "$STAGE${f%/*}"
        cp -L "$f" "$STAGE$f"
    done
fi
copy_exe "$(command -v numactl)"

stage_busybox "$STAGE"

# Quote the guest command for the init script (busybox ash reads it).
squote() { local s=${1//\'/\'\\\'\'}; printf "'%s' " "$s"; }
GUEST_CMD=$(for a in "${CMD[@]}"; do squote "$a"; done)

# No `set -e` here: whatever fails, init must reach poweroff.  Should init
# die anyway, the kernel panics, and panic=-1 + -no-reboot ends QEMU.
cat >"$STAGE/init" <<EOF
#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages
exec </dev/console >/dev/console 2>&1
echo "NUMA-VM: booted"
set -- $GUEST_CMD
# stdin is /dev/null: a suite that reads stdin must not wait for the timeout.
"\$@" </dev/null
echo "NUMA-VM: suite exit \$?"
poweroff -f
# poweroff -f cannot really fail, but never leave the guest idling.
echo o >/proc/sysrq-trigger
EOF
chmod 755 "$STAGE/init"

(cd "$STAGE" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$INITRD"

# ---------------------------------------------------------------- boot
# Topology, as the guest numbers it (see README.md):
#   node0 640M cpu0 | node1 512M cpu1 | node2 512M cpu2
#   node3 no memory, cpu3 (memoryless) | node4 384M, no CPU (memory-only)
# Sizes differ on purpose so a test can tell nodes apart by MemTotal.
# Linux numbers ACPI proximity domains in the order the SRAT names them, and
# QEMU lists all CPU entries before memory entries, so a memory-only node is
# always numbered after every node with a CPU: declaring it as node 4 keeps
# QEMU's node ids equal to the guest's.
# nokaslr: with KASLR the kernel image (~37 MB) lands on a random node, so
# per-node MemTotal would change from run to run.
# -display none, not -nographic: with -nographic SeaBIOS mirrors its screen
# to the serial port, terminal-reset escapes included.
# shellcheck disable=SC2054 # the commas are QEMU's, not array separators
QEMU=(qemu-system-x86_64 -accel tcg -cpu max -smp 4 -m 2G
    -display none -no-reboot -nodefaults -serial stdio
    -object memory-backend-ram,id=m0,size=640M
    -object memory-backend-ram,id=m1,size=512M
    -object memory-backend-ram,id=m2,size=512M
    -object memory-backend-ram,id=m4,size=384M
    -numa node,nodeid=0,memdev=m0,cpus=0
    -numa node,nodeid=1,memdev=m1,cpus=1
    -numa node,nodeid=2,memdev=m2,cpus=2
    -numa node,nodeid=3,cpus=3
    -numa node,nodeid=4,memdev=m4
    -kernel "$VMLINUZ" -initrd "$INITRD"
    -append "console=ttyS0 panic=-1 quiet rdinit=/init nokaslr")

LOG=$CACHE/console.log
FIFO=$CACHE/console.fifo
rm -f "$FIFO" "$LOG"
mkfifo "$FIFO"

QPID=
cleanup() {
    # timeout(1) forwards the signal to QEMU, which then quits promptly.
    if [[ -n $QPID ]]; then
        kill -TERM "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null || true
    fi
    rm -f "$FIFO"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

note "booting $KPKG (timeout ${TIMEOUT} s): ${CMD[*]}"
T0=$EPOCHREALTIME
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$FIFO" &
QPID=$!

T_BOOT='' T_DONE='' SUITE_RC='' PANIC=''
# Stream the console as it comes, keep a copy, and timestamp the markers.
while IFS= read -r line || [[ -n $line ]]; do
    line=${line%$'\r'}
    printf '%s\n' "$line"
    printf '%s\n' "$line" >>"$LOG"
    # Markers are matched at the end of a line: whatever was printed before
    # without a newline (the suite's last words, say) may share it.
    if [[ -z $T_BOOT && $line == *"NUMA-VM: booted" ]]; then
        T_BOOT=$EPOCHREALTIME
    elif [[ -z $SUITE_RC && $line =~ NUMA-VM:\ suite\ exit\ ([0-9]+)$ ]]; then
        SUITE_RC=${BASH_REMATCH[1]}; T_DONE=$EPOCHREALTIME
    elif [[ $line == *"Kernel panic"* ]]; then
        PANIC=1
    fi
done <"$FIFO"
QRC=0
wait "$QPID" || QRC=$?
QPID=

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
if [[ -n $T_BOOT ]]; then
    msg="boot $(secs "$T0" "$T_BOOT") s"
    [[ -n $T_DONE ]] && msg+=", suite $(secs "$T_BOOT" "$T_DONE") s"
    note "$msg"
fi

if ((QRC == 124 || QRC == 137)); then
    note "TIMEOUT after $TIMEOUT s"
    exit 1
fi
[[ -n $PANIC ]] && note "guest kernel panicked (see $LOG)"
if [[ -z $T_BOOT ]]; then
    note "FAIL: guest never reached init (qemu exit $QRC, see $LOG)"
    exit 1
fi
if [[ -z $SUITE_RC ]]; then
    note "FAIL: no 'NUMA-VM: suite exit' line (qemu exit $QRC, see $LOG)"
    exit 1
fi
if ((SUITE_RC != 0)); then
    note "FAIL: suite exited $SUITE_RC"
    exit 1
fi
note "PASS"
