#!/usr/bin/env bash
# Builds the guest initramfs (newc cpio): the static kiln-agent as /init plus
# busybox (Debian's busybox-static) with its applets linked into /bin, so shell
# commands work before the language runtimes' image is attached.
# Prints the path of the cpio archive.
set -euo pipefail
source "$(dirname "$0")/../tools/lib/common.sh"
cd "$KILN_REPO"

need_cmd cpio cpio
[ -x /bin/busybox ] || die "/bin/busybox missing: apt-get install busybox-static (or run tools/setup)"
if readelf -l /bin/busybox | grep -q 'program interpreter'; then
    die "/bin/busybox is dynamically linked: apt-get install busybox-static"
fi

TARGET=x86_64-unknown-linux-gnu
log "building kiln-agent (static, release)"
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --release --quiet -p kiln-agent --target "$TARGET"
AGENT="$KILN_REPO/target/$TARGET/release/kiln-agent"
if readelf -l "$AGENT" | grep -q 'program interpreter'; then
    die "kiln-agent came out dynamically linked; it must be static to run as PID 1"
fi

OUT="$KILN_REPO/target/kiln-initramfs"
STAGE="$OUT/root"
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc,mnt}
install -m 0755 "$AGENT" "$STAGE/init"
install -m 0755 /bin/busybox "$STAGE/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$STAGE/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\nsandbox:x:1000:\n' >"$STAGE/etc/group"
(cd "$STAGE" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$OUT/initramfs.cpio.tmp"
mv "$OUT/initramfs.cpio.tmp" "$OUT/initramfs.cpio"
rm -rf "$STAGE"
echo "$OUT/initramfs.cpio"
