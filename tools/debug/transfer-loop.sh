#!/bin/sh
# Runs inside the testbed: N rounds of `kiln run` copying a 200 MiB random
# file in and back out, each checked with cmp, with the guest console on and
# kiln-vmm's vsock debug log kept. A round that fails prints kiln's error,
# the testbed kernel's view (syscall errors and closes by kiln processes),
# the VMM log and the guest console; a round that runs past 170 s gets a
# stall diagnosis (vCPU thread states, KVM exits by reason and guest RIP).
#
# usage (from the repository, after tools/build-artifacts):
#   tools/testbed run --timeout 2300 --file target/kiln-artifacts/bin=bin \
#       --file target/kiln-artifacts/guest=guest \
#       --file tools/debug/transfer-loop.sh=transfer-loop.sh \
#       -- sh -c 'N=30 sh /kiln/transfer-loop.sh'
# A busy host makes failures likelier (e.g. `yes >/dev/null &` on the host).
N=${N:-8}
mount -t debugfs none /sys/kernel/debug 2>/dev/null
mount -t tracefs none /sys/kernel/tracing 2>/dev/null
T=/sys/kernel/tracing
[ -d $T/events/kvm ] || T=/sys/kernel/debug/tracing
head -c 209715200 /dev/urandom > /tmp/big
pass=0; fail=0
i=0
diag() {
  vmm=$(for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = kiln-vmm ] && echo ${p#/proc/}; done | head -1)
  echo "=== diag run $i vmm=$vmm"
  for t in /proc/$vmm/task/*; do echo "$(cat $t/comm) $(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan) utime=$(cut -d' ' -f14,15 $t/stat)"; done
  echo > $T/trace
  echo 1 > $T/events/kvm/enable
  sleep 1
  echo 0 > $T/events/kvm/enable
  echo "--- kvm events by type"
  grep -o 'kvm_[a-z_]*:' $T/trace | sort | uniq -c | sort -rn | head -20
  echo "--- sample"
  grep -v '^#' $T/trace | head -40 | cut -c1-300
  echo "--- exits by reason+rip"
  grep kvm_exit: $T/trace | sed 's/.*reason \([^ ]*\).*rip \(0x[0-9a-f]*\).*/\1 \2/' | sort | uniq -c | sort -rn | head -10
  echo "--- raw exits (rip = guest RIP; symbolize with nm on the guest vmlinux)"
  grep kvm_exit: $T/trace | head -n 5 | cut -c1-250
  echo "--- vcpu thread kernel stacks"
  for t in /proc/$vmm/task/*; do echo "[$(cat $t/comm)]"; cat $t/stack 2>/dev/null | head -12; done
  echo "--- L1 meminfo"; grep -E "MemFree|AnonHuge|Shmem:" /proc/meminfo
}
while [ $i -lt $N ]; do
  i=$((i+1))
  rm -f /tmp/back /tmp/serial.log; rm -rf /tmp/kiln-vm-* /tmp/vmm.strace
  echo 0 > $T/tracing_on; echo > $T/trace
  for e in sys_enter_shutdown sys_enter_close sys_exit_sendto sys_exit_write; do echo 1 > $T/events/syscalls/$e/enable; done
  echo 'ret == -32 || ret == -104' > $T/events/syscalls/sys_exit_sendto/filter
  echo 'ret == -32 || ret == -104' > $T/events/syscalls/sys_exit_write/filter
  echo 1 > $T/events/sched/sched_process_exit/enable
  echo 1 > $T/tracing_on
  start=$(date +%s)
  KILN_KEEP_RUN_DIR=1 KILN_LOG=info,kiln_vmm::devices::virtio::vsock=debug kiln run --serial-log /tmp/serial.log --kernel-args "loglevel=8" --copy-in /tmp/big:big --copy-out big:/tmp/back -- ls -l big > /tmp/out.txt 2>&1 &
  kp=$!
  dumped=0
  while kill -0 $kp 2>/dev/null; do
    sleep 2
    if [ $dumped = 0 ] && [ $(( $(date +%s)-start )) -gt 170 ]; then diag; dumped=1; fi
  done
  wait $kp; rc=$?
  if [ $rc = 0 ] && cmp -s /tmp/big /tmp/back; then pass=$((pass+1)); echo "run $i ok $(( $(date +%s)-start ))s"; grep "guest shutdown" /tmp/kiln-vm-*/vmm.log | tail -n 4 | cut -c60-
  else
    fail=$((fail+1)); echo "run $i FAILED rc=$rc after $(( $(date +%s)-start ))s"; cat /tmp/out.txt
    echo "--- ftrace"; grep -E "kiln" $T/trace | grep -vE "^#" | tail -n 40 | cut -c1-200; echo "--- vmm log"; tail -n 30 /tmp/kiln-vm-*/vmm.log; echo "--- serial tail"; grep -vE "^CPUID|hash table" /tmp/serial.log | sed -n "/serving on/,\$p" | tail -n 45
  fi
done
echo "pass=$pass fail=$fail"
