#!/bin/sh
# Runs every end-to-end test binary staged under /kiln/tests inside the
# testbed; exits non-zero when any fails.
export KILN_ARTIFACTS=/kiln RUST_BACKTRACE=1
rc=0
for t in /kiln/tests/*; do
    echo "== $(basename "$t")"
    "$t" --test-threads=1 || rc=1
done
exit $rc
