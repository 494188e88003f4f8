#!/usr/bin/env bash
# The guest of tests/qmp/test_virtio_mem.py: Debian's 6.12 kernel (the NUMA bed's, from
# the same cache: tests/lib/guest-kernel.sh) and an initramfs with a static busybox
# and the virtio_mem module, which init loads at boot. Memory the device plugs is
# onlined by the kernel itself: the test boots it with memhp_default_state=online_movable
# (ZONE_MOVABLE, so the guest can also give blocks back). Init then prints the guest's
# MemTotal on the console whenever it changes, for the test to read the guest's own
# view beside QEMU's.
#
#   virtio_mem_guest.sh     prints VMLINUZ=PATH and INITRD=PATH on stdout
#
# Messages go to stderr; exit 1 with the reason when something cannot be had.
set -Eeuo pipefail
trap 'rc=$?; ((BASH_SUBSHELL)) || echo "virtio-mem guest: error: ${0##*/} line $LINENO: \`$BASH_COMMAND\` failed (exit $rc)" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
die() { echo "virtio-mem guest: error: $*" >&2; exit 1; }
note() { echo "virtio-mem guest: $*" >&2; }
# shellcheck source=tests/lib/guest-kernel.sh
. "$ROOT/tests/lib/guest-kernel.sh"

need cpio cpio
need_busybox_static
# The NUMA bed's cache: one kernel download serves both.
guest_kernel "$ROOT/target/numa-vm" virtio_mem
# Built in, or the guest cannot see the device or take memory: virtio-pci, memory
# hotplug and hot-remove (virtio-mem unplugs by offlining), the console, the initramfs.
for opt in CONFIG_VIRTIO_PCI CONFIG_MEMORY_HOTPLUG CONFIG_MEMORY_HOTREMOVE CONFIG_DEVTMPFS \
           CONFIG_SERIAL_8250_CONSOLE CONFIG_BLK_DEV_INITRD CONFIG_RD_GZIP; do
    grep -qx "$opt=y" "$KCONFIG" || die "$KPKG: $opt is not built in"
done
grep -qx 'CONFIG_VIRTIO_MEM=[my]' "$KCONFIG" || die "$KPKG has no virtio-mem driver (CONFIG_VIRTIO_MEM)"

OUT=$ROOT/target/virtio-mem-guest
STAGE=$OUT/initramfs
INITRD=$OUT/initramfs.cpio.gz
rm -rf "$STAGE" "$INITRD"
mkdir -p "$STAGE"/{proc,sys,tmp,lib/modules}
# The module's modinfo: depends= is empty (virtio and virtio-pci are built in), so it
# alone is enough.
cp "$KDIR/modules/virtio_mem.ko" "$STAGE/lib/modules/"
stage_busybox "$STAGE"

# Lines the test reads start with VMEM-GUEST:. No `set -e`: init must not die.
cat >"$STAGE/init" <<'INIT'
#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo "VMEM-GUEST: auto_online_blocks $(cat /sys/devices/system/memory/auto_online_blocks)"
insmod /lib/modules/virtio_mem.ko || echo "VMEM-GUEST: insmod virtio_mem failed"
bound=$(ls /sys/bus/virtio/drivers/virtio_mem 2>/dev/null | grep '^virtio' | tr '\n' ' ')
echo "VMEM-GUEST: virtio_mem bound to: ${bound:-nothing}"
echo "VMEM-GUEST: ready"
# The guest's own view of its memory, whenever it changes (a once-a-second look: this
# is the guest reporting, the test waits for the line it expects with a deadline).
last=
while :; do
    now=$(grep MemTotal /proc/meminfo)
    [ "$now" != "$last" ] && echo "VMEM-GUEST: $now" && last=$now
    sleep 1
done
INIT
chmod 755 "$STAGE/init"
(cd "$STAGE" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$INITRD"
echo "VMLINUZ=$VMLINUZ"
echo "INITRD=$INITRD"
