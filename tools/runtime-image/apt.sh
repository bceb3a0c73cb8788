# apt wrappers for the runtime image tools. Sourced, never run (after
# tools/lib/common.sh). apt's binary cache is kept under KILN_CACHE_DIR: hosts
# that disable it (Dir::Cache::pkgcache "", as container images do) otherwise
# rebuild it on every apt-cache call (~1 s each). apt revalidates it against
# the index files, so it never goes stale.
KILN_APT_CACHE="$KILN_CACHE_DIR/apt"
mkdir -p "$KILN_APT_CACHE"

apt_cache() {
    apt-cache -o Dir::Cache::pkgcache="$KILN_APT_CACHE/pkgcache.bin" \
        -o Dir::Cache::srcpkgcache="$KILN_APT_CACHE/srcpkgcache.bin" "$@"
}

apt_get() {
    apt-get -o Dir::Cache::pkgcache="$KILN_APT_CACHE/pkgcache.bin" \
        -o Dir::Cache::srcpkgcache="$KILN_APT_CACHE/srcpkgcache.bin" "$@"
}
