#!/bin/sh
# Runs inside the testbed (busybox sh), from benches/probes/boot-phases:
# boots the same vmlinux and initramfs under kiln-vmm and under Firecracker
# (config-file mode, as kiln-bench's peer drives it), in turns, with a
# quiet console, and prints each console between markers for
# boot_phases.py. With `kiln.boot_log` in the extra arguments the agent
# copies the kernel log (printk times, initcall_debug lines) to the console
# once userspace has started, so the console does not slow the boot it
# profiles. A boot ends at the agent's end line (or after BOOT_TIMEOUT
# seconds) and the VMM is then killed; host_ms is spawn to the console mark.
# usage: boot_phases_guest.sh RUNS "EXTRA KERNEL ARGS" [kiln-vmm args...]
set -u
runs="$1"
extra="$2"
shift 2
BOOT_TIMEOUT=120
MARK="kiln-agent: userspace started"
END_MARK="kiln-agent: boot log end"
scratch=/tmp/boot-phases
# kiln-vmm's own base arguments (kiln_vmm::boot::cmdline::BASE): Firecracker
# boots the guest with them too, so the two timelines differ by the VMM
# only. FC_OWN_ARGS=1 (from boot-phases) gives it its minimal line instead.
KILN_BASE_ARGS="reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd tsc=reliable no_timer_check quiet"
[ "${FC_OWN_ARGS:-0}" != 1 ] || KILN_BASE_ARGS="quiet reboot=k panic=1"
mkdir -p "$scratch"

# Polls FILE for the agent's mark, then for the end of the copied kernel
# log (when asked for); kills PID then or at timeout. Prints the host-side
# ms (centisecond /proc/uptime, 50 ms polls) from START to the mark.
wait_mark() {
    file="$1" pid="$2" start="$3"
    ms=timeout
    want="$MARK"
    i=0
    while [ "$i" -lt $((BOOT_TIMEOUT * 20)) ]; do
        if grep -q "$want" "$file" 2>/dev/null; then
            if [ "$want" = "$MARK" ]; then
                now="$(cut -d' ' -f1 /proc/uptime)"
                ms="$(awk -v a="$start" -v b="$now" 'BEGIN { printf "%.0f", (b - a) * 1000 }')"
                case "$extra" in *kiln.boot_log*) want="$END_MARK"; continue ;; esac
            fi
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        usleep 50000
        i=$((i + 1))
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "$ms"
}

boot_kiln() {
    n="$1"
    shift
    log="$scratch/kiln-$n.log"
    rm -f "$log" "$scratch/kiln-$n.sock"
    start="$(cut -d' ' -f1 /proc/uptime)"
    kiln-vmm --kernel guest/vmlinux --initramfs guest/initramfs.cpio \
        --vcpus 1 --mem-mib 256 --vsock-uds "$scratch/kiln-$n.sock" \
        --serial-log "$log" --cmdline-extra "kiln.console_mark $extra" \
        --timings-json "$scratch/kiln-$n.json" \
        "$@" >/dev/null 2>"$scratch/kiln-$n.err" &
    ms="$(wait_mark "$log" $! "$start")"
    echo "=== BOOT kiln $n host_ms=$ms"
    tr -d '\r' <"$log" 2>/dev/null || sed 's/^/kiln-vmm stderr: /' "$scratch/kiln-$n.err"
    echo "kiln-vmm timings: $(cat "$scratch/kiln-$n.json" 2>/dev/null)"
    echo "=== END"
}

boot_firecracker() {
    n="$1"
    log="$scratch/fc-$n.log"
    uds="$scratch/fc-$n.vsock"
    rm -f "$log" "$uds"
    cat >"$scratch/fc-$n.json" <<EOF
{"boot-source": {"kernel_image_path": "guest/vmlinux", "initrd_path": "guest/initramfs.cpio",
  "boot_args": "console=ttyS0 $KILN_BASE_ARGS kiln.console_mark $extra"},
 "drives": [],
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 256, "smt": false},
 "vsock": {"guest_cid": 3, "uds_path": "$uds"}}
EOF
    start="$(cut -d' ' -f1 /proc/uptime)"
    firecracker --no-api --no-seccomp --level Error --id "probe-$n" \
        --config-file "$scratch/fc-$n.json" </dev/null >"$log" 2>"$scratch/fc-$n.err" &
    ms="$(wait_mark "$log" $! "$start")"
    echo "=== BOOT firecracker $n host_ms=$ms"
    tr -d '\r' <"$log"
    [ -s "$log" ] || sed 's/^/firecracker stderr: /' "$scratch/fc-$n.err"
    echo "=== END"
}

# One warm-up boot of each (page cache, first-run costs), not printed.
boot_kiln 0 "$@" >/dev/null
boot_firecracker 0 >/dev/null
n=1
while [ "$n" -le "$runs" ]; do
    boot_kiln "$n" "$@"
    boot_firecracker "$n"
    n=$((n + 1))
done
