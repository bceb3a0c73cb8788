#!/bin/sh
# Inside the testbed, for benches/probes/vmm-steps: RUNS, then kiln-vmm paths.
set -u
runs=$1
shift
s=/tmp/vmm-steps
agent_up() {
    i=0
    while [ $i -lt 3000 ]; do
        grep -q "kiln-agent: userspace started" "$1" 2>/dev/null && return 0
        usleep 20000
        i=$((i + 1))
    done
    echo "no agent within 60 s; the VMM said: $(tail -n 3 "$2")"
    return 1
}
boot() { # VMM LOG ERR [ARGS...]
    vmm=$1 log=$2 err=$3
    shift 3
    rm -f $s/k.sock
    $vmm --kernel guest/vmlinux --initramfs guest/initramfs.cpio --vcpus 1 --mem-mib 256 \
        --vsock-uds $s/k.sock --serial-log "$log" --cmdline-extra kiln.console_mark "$@" >/dev/null 2>"$err" &
    pid=$!
}
for vmm in "$@"; do
    rm -rf $s && mkdir -p $s/snap
    echo "##### $vmm"
    echo "=== own memory of a booted, jailed VM (kB; supervisor, then VMM)"
    boot "$vmm" $s/k.log $s/k.err
    agent_up $s/k.log $s/k.err && sleep 2
    for p in $pid $(cat /proc/$pid/task/$pid/children 2>/dev/null); do
        echo "pid $p: $(grep -E '^(Rss|Pss):' /proc/$p/smaps_rollup | tr -s ' ' | tr '\n' ' ')"
        awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6} /^Rss:/{if ($2>0 && name ~ /kiln-vmm/) print "  " $2, name}' /proc/$p/smaps
    done
    kill $pid; sleep 1; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
    echo "=== snapshot"
    boot "$vmm" $s/k.log $s/k.err --control-socket $s/ctl --snapshot-dir $s/snap
    agent_up $s/k.log $s/k.err && sleep 1
    echo '{"op":"snapshot","resume":false}' | socat - UNIX-CONNECT:$s/ctl
    sleep 1
    kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
    n=0
    while [ $n -lt "$runs" ]; do
        for mode in jail nojail; do
            extra=""
            [ $mode = nojail ] && extra=--no-jail
            rm -f $s/r.sock
            KILN_LOG=kiln_vmm=debug $vmm --kernel guest/vmlinux --restore $s/snap --vsock-uds $s/r.sock $extra >/dev/null 2>$s/r.err &
            pid=$!
            sleep 2
            kill $pid; sleep 1; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
            echo "=== restore, $mode, run $n"
            grep -o 'm[0-9]*\.[0-9]* .*\(step:\|released\).*' $s/r.err | cut -c1-160
        done
        n=$((n + 1))
    done
done
