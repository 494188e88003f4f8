#!/usr/bin/env bash
# libvirt's own memory objects (tests/qemuxmlconfdata/*.args of the newest libvirt
# source package apt can get) run through QEMU 10 and through hostmem; fails when
# QEMU accepts an object set that hostmem refuses (or the other way round) or when a
# read-back value differs. See tests/libvirt/README.md.
#
#   tests/libvirt/run.sh [--phases cli,qmp] [--json FILE]
#
# Environment: HOSTMEM_BIN (default: cargo build --release -p hostmem-cli, then
# target/release/hostmem), LIBVIRT_CACHE (default target/libvirt-src; delete it to
# fetch again), LIBVIRT_VERSION (a source version apt knows; default the newest). Needs root for the hugetlbfs mounts and huge page pools, and for
# apt-get the first time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
cache=${LIBVIRT_CACHE:-$repo/target/libvirt-src}
data=$cache/qemuxmlconfdata

say() { echo "== $*"; }
fail() { echo "tests/libvirt: $*" >&2; exit 2; }

# ---- QEMU 10.0 (Debian bookworm-backports), the reference
qemu_major() {
    qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p'
}
if [ "$(qemu_major)" != 10 ]; then
    [ "$(id -u)" = 0 ] || fail "needs qemu-system-x86_64 10.x (apt-get install -t bookworm-backports qemu-system-x86, as root)"
    say "installing qemu-system-x86 10 from bookworm-backports"
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat >/etc/apt/sources.list.d/bookworm-backports.sources <<'EOF'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
    [ "$(qemu_major)" = 10 ] || fail "qemu-system-x86_64 is still $(qemu-system-x86_64 --version | head -1)"
fi

# ---- hostmem
if [ -z "${HOSTMEM_BIN:-}" ]; then
    say "cargo build --release -p hostmem-cli"
    cargo build --release -q -p hostmem-cli
fi
hostmem=${HOSTMEM_BIN:-$repo/target/release/hostmem}
[ -x "$hostmem" ] || fail "no hostmem binary at $hostmem"

# ---- libvirt's test data, fetched once and cached (only the *.args files are kept)
# (apt-cache's output is read whole: an early-exiting reader would SIGPIPE it under pipefail)
showsrc() { apt-cache showsrc libvirt 2>/dev/null || true; }

source_records() { showsrc | grep '^Package: libvirt$' >/dev/null; }

newest_version() {
    local best="" v
    for v in $(showsrc | sed -n 's/^Version: //p'); do
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
    done
    echo "$best"
}

# sha256 of FILE as the Sources index of VERSION lists it
indexed_sha256() {
    showsrc | awk -v ver="$1" -v f="$2" '
        /^Package: / { v = "" } /^Version: / { v = $2 }
        /^Checksums-Sha256:/ { s = 1; next } /^[^ ]/ { s = 0 }
        s && v == ver && $3 == f && !done { print $1; done = 1 }'
}

fetch() {
    command -v apt-get >/dev/null || fail "apt-get is needed to fetch libvirt's source package"
    [ "$(id -u)" = 0 ] || fail "fetching the libvirt source needs root once (apt-get); or set LIBVIRT_CACHE to a filled cache"
    export DEBIAN_FRONTEND=noninteractive
    if ! source_records; then
        say "adding deb-src for bookworm (/etc/apt/sources.list.d/bookworm-src.sources)"
        [ -e /etc/apt/sources.list.d/bookworm-src.sources ] || \
            cat >/etc/apt/sources.list.d/bookworm-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt-get update -qq
    fi
    command -v dpkg-source >/dev/null || apt-get install -y -qq dpkg-dev >/dev/null
    local dl=$cache/download ver orig tries
    rm -rf "$dl" && mkdir -p "$dl"
    for tries in 1 2; do
        ver=${LIBVIRT_VERSION:-$(newest_version)}
        if [ -n "$ver" ]; then
            say "apt-get source libvirt=$ver"
            (cd "$dl" && apt-get source -qq --download-only "libvirt=$ver" 2>&1 \
                | grep -v '^W: Download is performed unsandboxed' || true)
            orig=$(find "$dl" -maxdepth 1 -name 'libvirt_*.orig.tar.*' ! -name '*.asc' | sort | sed -n 1p)
            [ -n "$orig" ] && break
        fi
        [ "$tries" = 1 ] || fail "apt-get source libvirt found nothing (even after apt-get update)"
        say "apt-get source found nothing: apt-get update and once more"
        apt-get update -qq
    done
    ls "$dl"/*.dsc >/dev/null 2>&1 || say "apt-get fetched $(basename "$orig") but not the rest (errors above): using the tarball"
    local upstream=${ver%-*} tree how
    upstream=${upstream#*:}
    rm -rf "$data.new" && mkdir -p "$data.new"
    if ls "$dl"/*.dsc >/dev/null 2>&1 && ls "$dl"/*.debian.tar.* >/dev/null 2>&1; then
        # the whole Debian source package, its patches applied
        (cd "$dl" && dpkg-source -q -x ./*.dsc tree >/dev/null)
        tree=$dl/tree
        how="Debian source package libvirt $ver (dpkg-source -x)"
    else
        # apt fetched the upstream tarball but not the .dsc/debian tarball (a mirror that
        # lags the index): take the tarball, checked against the Sources index's sha256
        local want got
        want=$(indexed_sha256 "$ver" "$(basename "$orig")")
        got=$(sha256sum "$orig" | cut -d' ' -f1)
        [ -n "$want" ] && [ "$want" = "$got" ] || fail "$(basename "$orig"): sha256 $got, the Sources index says '${want}'"
        tar -xf "$orig" -C "$dl" --wildcards "*/tests/qemuxmlconfdata/*.args" \
            "*/tests/qemuxml2argvdata/*.args" 2>/dev/null || true
        tree=$(find "$dl" -mindepth 1 -maxdepth 1 -type d -name 'libvirt-*' | sort | sed -n 1p)
        how="libvirt $upstream upstream tarball of Debian's libvirt $ver (sha256 as in the Sources index; the .dsc was not downloadable, Debian's patches not applied)"
    fi
    # qemuxmlconfdata since libvirt 10.1; qemuxml2argvdata before
    local d
    for d in qemuxmlconfdata qemuxml2argvdata; do
        if compgen -G "$tree/tests/$d/*.args" >/dev/null; then
            cp "$tree/tests/$d/"*.args "$data.new"/
            how="$how, tests/$d"
            break
        fi
    done
    compgen -G "$data.new/*.args" >/dev/null || fail "no tests/qemuxmlconfdata/*.args in $how"
    rm -rf "$data" && mv "$data.new" "$data"
    echo "$how" >"$cache/VERSION"
    rm -rf "$dl"
    say "cached $(ls "$data" | wc -l) .args files in $data"
}

if ! [ -s "$cache/VERSION" ] || ! compgen -G "$data/*.args" >/dev/null; then
    fetch
fi

say "libvirt objects: QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') vs $hostmem"
exec python3 "$here/libvirt_objects.py" --data "$data" --hostmem "$hostmem" \
    --source "$(cat "$cache/VERSION")" "$@"
