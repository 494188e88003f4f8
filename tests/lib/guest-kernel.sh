# Sourced (bash) by the scripts that boot a throw-away Linux guest under QEMU TCG
# (tests/numa-vm/run.sh, tests/qmp/virtio_mem_guest.sh): Debian's 6.12 kernel fetched
# with `apt-get download` into a cache shared by both (one 100 MB download, not one
# per suite), the modules a guest needs unpacked from the same package, a static
# busybox, and the apt helpers that install what is missing.
#
# The caller defines die MESSAGE and note MESSAGE (its own prefix) before sourcing.
#
#   guest_kernel CACHE [MODULE...]  sets KPKG, KDIR, VMLINUZ, KCONFIG; each MODULE
#                                   (e.g. virtio_mem) ends up as $KDIR/modules/MODULE.ko
#   need COMMAND PACKAGE            installs PACKAGE unless COMMAND exists
#   need_busybox_static             installs busybox-static unless /bin/busybox is it
#   stage_busybox STAGE             busybox, its applet links and /dev/console in STAGE

# apt-get waits for the dpkg lock instead of failing: another job may be
# installing at the same time.
APT=(apt-get -y -q -o DPkg::Lock::Timeout=900)
APT_UPDATED=
apt_update() {
    [[ -n $APT_UPDATED ]] && return 0
    note "apt-get update"
    "${APT[@]}" update >&2 || die "apt-get update failed"
    APT_UPDATED=1
}
# need COMMAND PACKAGE: install PACKAGE unless COMMAND exists.  The package
# lists are refreshed only when the first try fails (fresh machines may have
# stale or empty lists, but updating every run is slow).
need() {
    command -v "$1" >/dev/null && return 0
    note "installing $2"
    if ! DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "$2" >&2; then
        apt_update
        DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "$2" >&2 \
            || die "cannot install $2"
    fi
    command -v "$1" >/dev/null || die "$2 installed but $1 still missing"
}
# busybox-static, specifically: the guest has no libc of its own to offer a
# dynamically linked busybox, and Debian's plain `busybox` package is dynamic.
BUSYBOX=/bin/busybox
need_busybox_static() {
    if [[ ! -x $BUSYBOX ]] || ldd "$BUSYBOX" >/dev/null 2>&1; then
        note "installing busybox-static"
        DEBIAN_FRONTEND=noninteractive "${APT[@]}" install busybox-static >&2 \
            || { apt_update; DEBIAN_FRONTEND=noninteractive "${APT[@]}" install busybox-static >&2; } \
            || die "cannot install busybox-static"
    fi
}

# Debian's 6.12 kernel has NUMA, ACPI SRAT, 8250 console, devtmpfs, tmpfs, hugetlbfs,
# virtio-pci and memory hotplug built in; of its modules only those asked for are kept.
# The generic flavour only: cloud lacks bits we want, rt changes scheduling.
# Prints nothing when apt knows no such package (empty or old lists): awk, not grep,
# filters, as grep would fail the pipeline on no match.
newest_kernel_pkg() {
    apt-cache search --names-only '^linux-image-6\.12\..*-amd64-unsigned$' \
        | awk '$1 !~ /-(cloud|rt)-amd64-unsigned$/ {print $1}' | sort -V | tail -n1
}

# kernel_deb CACHE: sets DEB to the package's .deb in CACHE, downloaded when missing.
kernel_deb() {
    local cache=$1
    DEB=$(compgen -G "$cache/${KPKG}_*.deb" | head -n1 || true)
    if [[ -z $DEB ]]; then
        note "downloading $KPKG"
        # Older kernels are 100+ MB each; keep only the one in use (its unpacked
        # boot/ too, when only the .deb went missing).
        find "$cache" -maxdepth 1 -name 'linux-image-6.12.*' ! -name "$KPKG" \
            -exec rm -rf {} +
        # Sandbox user root: _apt cannot write into the cache dir.  Stale
        # package lists point at files the mirror no longer has: update once.
        dl() { (cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$KPKG" >&2); }
        dl || { apt_update; dl; } || die "apt-get download $KPKG failed"
        DEB=$(compgen -G "$cache/${KPKG}_*.deb" | head -n1) || die "download of $KPKG left no .deb"
    fi
}

guest_kernel() {
    local cache=$1 m ko
    shift
    mkdir -p "$cache"
    KPKG=$(newest_kernel_pkg) || die "apt-cache search for the kernel package failed (above)"
    if [[ -z $KPKG ]]; then
        note "apt-cache finds no linux-image-6.12.*-amd64-unsigned: updating the package lists"
        apt_update
        KPKG=$(newest_kernel_pkg) || die "apt-cache search for the kernel package failed (above)"
    fi
    if [[ -z $KPKG ]]; then
        # Offline or lists gone: a kernel fetched earlier is as good as any.
        KPKG=$(find "$cache" -maxdepth 1 -type d -name 'linux-image-6.12.*' ! -name '*.tmp' -printf '%f\n' | sort -V | tail -n1)
        [[ -n $KPKG ]] || die "no linux-image-6.12.*-amd64-unsigned package found by apt-cache (is bookworm-security or bookworm-backports configured?)"
        note "apt-cache finds no 6.12 kernel; using cached $KPKG"
    fi
    KDIR=$cache/$KPKG
    if ! compgen -G "$KDIR/boot/vmlinuz-*" >/dev/null; then
        kernel_deb "$cache"
        # Only boot/ is needed; the modules would be ~400 MB of disk for nothing.
        rm -rf "$KDIR.tmp"
        mkdir -p "$KDIR.tmp"
        dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$KDIR.tmp" --wildcards './boot/*' \
            || die "cannot unpack boot/ of $DEB (above); delete it to download it again"
        mv "$KDIR.tmp" "$KDIR"
    fi
    VMLINUZ=$(compgen -G "$KDIR/boot/vmlinuz-*" | head -n1) || die "no boot/vmlinuz-* in $KDIR"
    KCONFIG=$(compgen -G "$KDIR/boot/config-*" | head -n1) || die "no boot/config-* in $KPKG"
    for m in "$@"; do
        ko=$KDIR/modules/$m.ko
        [[ -s $ko ]] && continue
        kernel_deb "$cache"
        need xz xz-utils
        mkdir -p "$KDIR/modules"
        # Unpacked xz-decompressed, so busybox insmod needs no decompressor; the
        # module's signature is appended before compression, so it stays.
        dpkg-deb --fsys-tarfile "$DEB" | tar -x -O --wildcards "./lib/modules/*/$m.ko.xz" \
            | xz -dc >"$ko.tmp" && [[ -s $ko.tmp ]] \
            || die "no module $m (lib/modules/*/$m.ko.xz) in $DEB"
        mv "$ko.tmp" "$ko"
    done
}

# stage_busybox STAGE: busybox as STAGE/bin/busybox with a link for every applet that
# nothing in STAGE has the name of yet (call it after copying the payload, so a payload
# binary wins a name clash and cp never writes through a link into busybox itself),
# and the /dev/console node the kernel opens for init before anything is mounted
# (without it init would start with no stdin/stdout at all).
stage_busybox() {
    local stage=$1 applet
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev}
    cp "$BUSYBOX" "$stage/bin/busybox"
    for applet in $("$BUSYBOX" --list-full); do
        [[ -e $stage/$applet || -L $stage/$applet ]] || ln -s /bin/busybox "$stage/$applet"
    done
    mknod -m 600 "$stage/dev/console" c 5 1
}
