# Shared helpers for kiln's shell tools. Sourced, never run.

# Where expensive artifacts (guest kernel, testbed, images) are cached, outside
# the repository so a fresh clone reuses them.
KILN_CACHE_DIR="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
KILN_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

die() {
    echo "error: $*" >&2
    exit 1
}

log() {
    echo "[kiln] $*" >&2
}

# Hash of the given files' contents plus any extra strings: the cache key.
inputs_hash() {
    local extra="$1"
    shift
    { printf '%s\n' "$extra"; cat "$@"; } | sha256sum | cut -c1-16
}

# Fails with a clear message when a command is missing.
need_cmd() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' not found: install it with 'apt-get install $pkg' (or run tools/setup)"
}
