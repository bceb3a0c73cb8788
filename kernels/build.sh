#!/usr/bin/env bash
# Builds kiln's guest kernel (uncompressed vmlinux with the PVH entry point, and
# a bzImage fallback) from Debian's linux-source-6.12 and kiln's own config
# fragment. The result is cached outside the repository under a key made of the
# fragment, this script and the source package version, so a second run takes
# seconds. Prints the output directory on stdout.
set -euo pipefail
source "$(dirname "$0")/../tools/lib/common.sh"

FRAGMENT="$KILN_REPO/kernels/kiln-x86_64.config"
SRC_TARBALL=/usr/src/linux-source-6.12.tar.xz

[ -f "$SRC_TARBALL" ] || die "$SRC_TARBALL missing: apt-get install linux-source-6.12 (or run tools/setup)"
need_cmd make build-essential
need_cmd bc bc
need_cmd flex flex
need_cmd bison bison
SRC_VERSION="$(dpkg-query -W -f='${Version}' linux-source-6.12)"
KEY="$(inputs_hash "$SRC_VERSION" "$FRAGMENT" "$0")"
OUT="$KILN_CACHE_DIR/kernel/$KEY"

if [ -f "$OUT/vmlinux" ] && [ -f "$OUT/bzImage" ]; then
    echo "$OUT"
    exit 0
fi

SRC="$KILN_CACHE_DIR/kernel-src/$SRC_VERSION"
if [ ! -f "$SRC/.kiln-extracted" ]; then
    log "extracting linux-source $SRC_VERSION to $SRC"
    rm -rf "$SRC"
    mkdir -p "$SRC"
    tar -xf "$SRC_TARBALL" -C "$SRC" --strip-components=1
    touch "$SRC/.kiln-extracted"
fi

BUILD="$KILN_CACHE_DIR/kernel-build/$KEY"
mkdir -p "$BUILD"
log "configuring (allnoconfig + $(basename "$FRAGMENT"))"
make -s -C "$SRC" O="$BUILD" KCONFIG_ALLCONFIG="$FRAGMENT" allnoconfig >/dev/null

# Every =y / =number / ="string" line of the fragment must have survived
# dependency resolution; otherwise the kernel is not the one we wrote.
missing=0
while IFS= read -r line; do
    case "$line" in CONFIG_*=*) ;; *) continue ;; esac
    if ! grep -qxF "$line" "$BUILD/.config"; then
        echo "config mismatch: wanted '$line', got '$(grep "^${line%%=*}=" "$BUILD/.config" || echo 'unset')'" >&2
        missing=1
    fi
done <"$FRAGMENT"
[ "$missing" = 0 ] || die "kernel config fragment did not apply cleanly"

log "building vmlinux and bzImage with $(nproc) jobs (takes several minutes on a cold cache)"
start=$(date +%s)
make -s -C "$SRC" O="$BUILD" -j"$(nproc)" vmlinux bzImage KBUILD_BUILD_USER=kiln KBUILD_BUILD_HOST=kiln >"$BUILD/build.log" 2>&1 ||
    { tail -n 40 "$BUILD/build.log" >&2; die "kernel build failed (log: $BUILD/build.log)"; }
secs=$(($(date +%s) - start))

TMP="$OUT.tmp.$$"
rm -rf "$TMP"
mkdir -p "$TMP"
cp "$BUILD/vmlinux" "$TMP/vmlinux"
cp "$BUILD/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$BUILD/.config" "$TMP/config"
printf 'source=%s\nbuild_seconds=%s\nvmlinux_bytes=%s\nbzimage_bytes=%s\n' \
    "$SRC_VERSION" "$secs" "$(stat -c %s "$TMP/vmlinux")" "$(stat -c %s "$TMP/bzImage")" >"$TMP/build-info"
rm -rf "$OUT"
mv "$TMP" "$OUT"
rm -rf "$BUILD"
log "guest kernel built in ${secs}s: $OUT"
echo "$OUT"
