#!/usr/bin/env bash
# What the image's packages' maintainer scripts would have done on a real
# Debian system, done explicitly: packages are unpacked with 'dpkg-deb -x',
# so no postinst ever runs. Only the steps a program in the sandbox notices
# are here; each names the package whose script it stands in for. Byte
# compiling (py3compile) and ld.so.cache (libc-bin) are done by the build
# script itself. Usage: maintainer-steps.sh ROOT
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"

[ $# -eq 1 ] && [ -d "$1" ] || die "usage: $0 ROOT"
ROOT="$1"
# KILN_IMAGE_CUSTOM=1 (an image of other packages): each step runs only
# when its package is in the tree; for the default image each is required.
CUSTOM="${KILN_IMAGE_CUSTOM:-}"

# update-alternatives links, as the highest-priority (only) candidate in the
# image would get them. Links are relative so they resolve inside the image
# and inside a staging tree alike.
alt() {
    local link="$1" target="$2"
    if [ ! -e "$ROOT/$(dirname "$link")/$target" ]; then
        [ -n "$CUSTOM" ] && return 0
        die "alternative $link: $target is not in the image"
    fi
    ln -sfn "$target" "$ROOT/$link"
}
alt usr/bin/awk mawk # mawk
alt usr/bin/nawk mawk
alt usr/bin/which which.debianutils # debianutils
alt usr/bin/pager less # less
for name in editor vi view ex rview; do # vim-tiny
    alt "usr/bin/$name" vim.tiny
done
alt usr/bin/lzma xz # xz-utils
alt usr/bin/unlzma unxz
for util in cat more less diff cmp grep egrep fgrep; do
    alt "usr/bin/lz$util" "xz$util"
done
# numpy links libblas.so.3 and liblapack.so.3 by these names (libblas3,
# liblapack3: the reference implementations, the only ones in the image).
alt usr/lib/x86_64-linux-gnu/libblas.so.3 blas/libblas.so.3
alt usr/lib/x86_64-linux-gnu/liblapack.so.3 lapack/liblapack.so.3

# ca-certificates: update-ca-certificates concatenates every certificate
# enabled in /etc/ca-certificates.conf (by default all of Mozilla's) into
# the bundle curl, wget, git, pip and python's ssl read (OpenSSL's default
# file /usr/lib/ssl/cert.pem links to it). Sorted by name, as the generated
# configuration lists them.
certs="$ROOT/usr/share/ca-certificates/mozilla"
if [ -z "$CUSTOM" ] || [ -d "$certs" ]; then
    [ -d "$certs" ] || die "no $certs: is ca-certificates in packages.list?"
    mkdir -p "$ROOT/etc/ssl/certs"
    (cd "$ROOT/usr/share/ca-certificates" && find mozilla -name '*.crt' | LC_ALL=C sort) \
        >"$ROOT/etc/ca-certificates.conf"
    : >"$ROOT/etc/ssl/certs/ca-certificates.crt"
    while IFS= read -r crt; do
        # update-ca-certificates adds a newline to files that lack one.
        sed -e '$a\' "$ROOT/usr/share/ca-certificates/$crt" >>"$ROOT/etc/ssl/certs/ca-certificates.crt"
    done <"$ROOT/etc/ca-certificates.conf"
    grep -q 'BEGIN CERTIFICATE' "$ROOT/etc/ssl/certs/ca-certificates.crt" ||
        die "the CA bundle holds no certificate"
fi

# python3-matplotlib's /etc/matplotlibrc asks for the TkAgg backend; the
# sandbox has neither a display nor Tk (exclude.list), and an explicitly
# requested interactive backend fails in a headless process. Agg writes
# PNG, PDF and SVG files.
if [ -z "$CUSTOM" ] || [ -f "$ROOT/etc/matplotlibrc" ]; then
    sed -i -E 's/^backend *: *TkAgg$/backend: Agg/' "$ROOT/etc/matplotlibrc"
    grep -qx 'backend: Agg' "$ROOT/etc/matplotlibrc" || die "/etc/matplotlibrc: backend line not found"
fi
