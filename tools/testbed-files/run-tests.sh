#!/bin/sh
# Runs every end-to-end test binary staged under /kiln/tests inside the
# testbed; exits non-zero when any fails.
export KILN_ARTIFACTS=/kiln RUST_BACKTRACE=1
rc=0
for t in /kiln/tests/*; do
    echo "== $(basename "$t")"
    trc=0
    "$t" --test-threads=1 || trc=$?
    # tools/test reads this to rerun only unfinished binaries when the
    # testbed itself dies.
    echo "KILN_E2E_FINISHED $(basename "$t") $trc"
    [ "$trc" = 0 ] || rc=1
done
exit $rc
