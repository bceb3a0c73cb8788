#!/usr/bin/env bash
# Resolves the runtime image's package closure without installing anything:
# reads root packages (packages.list) and exclusions (exclude.list), follows
# Depends and Pre-Depends (never Recommends/Suggests), and prints one
# 'name=version' line per package, sorted. Usage: resolve.sh PACKAGES EXCLUDES
#
# Rules:
# - A version is the highest one published in an apt index whose Release says
#   Origin: Debian (other origins, e.g. nodesource, and the dpkg status file are
#   ignored), so the closure is reproducible from the Debian archive alone.
# - A dependency group 'a | b | c' is satisfied by an already chosen member,
#   else by its first member that is a real package, else by the first Debian
#   provider of its first virtual member.
# - A group naming an excluded package is dropped whole (the dependency only
#   matters to a package-managed system).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/apt.sh"

[ $# -eq 2 ] || die "usage: $0 PACKAGES EXCLUDES"
PACKAGES_FILE="$1"
EXCLUDES_FILE="$2"
ARCH="$(dpkg --print-architecture)"

declare -A VER=()      # name -> Debian version ('' when not a real package)
declare -A CHOSEN=()   # name -> 1
declare -A EXCLUDED=() # name -> 1
declare -a FRONTIER=() # chosen, dependencies not read yet

# Non-comment, non-blank lines of a list file.
list_entries() {
    sed -e 's/#.*//' -e 's/[[:space:]]//g' "$1" | grep -v '^$' || true
}

# The apt indexes of Debian origin, as apt_cache madison names them
# ("URI suite/component arch Packages"), one per line.
debian_indexes() {
    apt_cache policy | awk -v arch="$ARCH" '
        /^ *-?[0-9]+ / { idx = $0; sub(/^ *-?[0-9]+ /, "", idx); next }
        /^ +release / && idx != "" {
            if ($0 ~ /[ ,]o=Debian(,|$)/ && idx ~ (" " arch " Packages$")) print idx
            idx = ""
        }'
}
DEBIAN_INDEXES="$(debian_indexes)"
[ -n "$DEBIAN_INDEXES" ] || die "no apt index of Debian origin for $ARCH: check /etc/apt/sources.list* and run apt-get update"

# Fills VER for the given names (one apt_cache call for all of them).
lookup_versions() {
    local todo=() n
    for n in "$@"; do
        [ -n "${VER[$n]+x}" ] || todo+=("$n")
    done
    [ ${#todo[@]} -gt 0 ] || return 0
    for n in "${todo[@]}"; do VER[$n]=""; done
    local name ver
    while IFS=$'\t' read -r name ver; do
        [ -n "${VER[$name]+x}" ] && [ -z "${VER[$name]}" ] && VER[$name]="$ver"
    done < <(apt_cache madison "${todo[@]}" 2>/dev/null |
        awk -F'|' -v indexes="$DEBIAN_INDEXES" '
            BEGIN { n = split(indexes, l, "\n"); for (i = 1; i <= n; i++) ok[l[i]] = 1 }
            { for (i = 1; i <= 3; i++) gsub(/^ +| +$/, "", $i) }
            ($3 in ok) && !seen[$1]++ { print $1 "\t" $2 }')
}

choose() {
    CHOSEN[$1]=1
    FRONTIER+=("$1")
}

# Sets PROVIDER to the first Debian provider of virtual package $1 (a chosen
# one if any), or to nothing.
provider_of() {
    local provs=() p
    PROVIDER=""
    mapfile -t provs < <(apt_cache showpkg "$1" 2>/dev/null |
        awk '/^Reverse Provides:/ { on = 1; next } on && NF { print $1 }')
    [ ${#provs[@]} -gt 0 ] || return 0
    for p in "${provs[@]}"; do
        [ -n "${CHOSEN[$p]+x}" ] && { PROVIDER="$p"; return 0; }
    done
    lookup_versions "${provs[@]}"
    for p in "${provs[@]}"; do
        [ -n "${VER[$p]}" ] && { PROVIDER="$p"; return 0; }
    done
}

# Satisfies one dependency group: alternatives separated by '|'.
resolve_group() {
    local group="$1" alts=() a p
    IFS='|' read -r -a alts <<<"$group"
    for a in "${alts[@]}"; do
        [ -n "${EXCLUDED[$a]+x}" ] && return 0
    done
    for a in "${alts[@]}"; do
        [ -n "${CHOSEN[$a]+x}" ] && return 0
    done
    lookup_versions "${alts[@]}"
    for a in "${alts[@]}"; do
        [ -n "${VER[$a]}" ] && { choose "$a"; return 0; }
    done
    for a in "${alts[@]}"; do
        provider_of "$a"
        p="$PROVIDER"
        [ -n "$p" ] || continue
        [ -n "${EXCLUDED[$p]+x}" ] && return 0
        [ -n "${CHOSEN[$p]+x}" ] || choose "$p"
        return 0
    done
    die "cannot satisfy dependency '$group' from Debian's indexes"
}

# Prints 'package<TAB>group' for each Depends/Pre-Depends group of the given
# name=version packages, versions and architecture qualifiers stripped.
dependency_groups() {
    apt_cache show "$@" | awk '
        /^Package: / { pkg = $2 }
        /^(Depends|Pre-Depends): / {
            sub(/^[A-Za-z-]+: /, "")
            n = split($0, groups, ",")
            for (i = 1; i <= n; i++) {
                g = groups[i]
                gsub(/\([^)]*\)/, "", g)   # version constraints
                gsub(/:[a-z0-9]+/, "", g)   # :any, :amd64
                gsub(/[ \t]/, "", g)
                if (g != "") print pkg "\t" g
            }
        }'
}

while IFS= read -r e; do EXCLUDED[$e]=1; done < <(list_entries "$EXCLUDES_FILE")
mapfile -t roots < <(list_entries "$PACKAGES_FILE")
[ ${#roots[@]} -gt 0 ] || die "$PACKAGES_FILE lists no package"
for r in "${roots[@]}"; do
    resolve_group "$r"
done

while [ ${#FRONTIER[@]} -gt 0 ]; do
    specs=()
    for p in "${FRONTIER[@]}"; do specs+=("$p=${VER[$p]}"); done
    FRONTIER=()
    while IFS=$'\t' read -r _pkg group; do
        resolve_group "$group"
    done < <(dependency_groups "${specs[@]}")
done

for p in "${!CHOSEN[@]}"; do
    echo "$p=${VER[$p]}"
done | LC_ALL=C sort
