"""A VMM's own set-up, spawn -> the guest's first instruction, on this host
(not in the testbed): kiln-vmm jailed and without its jail, and
Firecracker, in turns. Everything before a guest's first instruction is
host work (process start, jail, KVM set-up, loading the kernel), which the
testbed's TCG inflates far more than guest code, so this is the VMM-side
share of a cold boot as it would be on a host with hardware KVM.

The guest itself need not run: on a host whose /dev/kvm cannot boot Linux
it stops soon after its first instruction, and each VMM is ended by its pid
once its mark is in. kiln-vmm: VMM start + kernel_entry_us from its
--timings-json. Firecracker: its "Successfully started microvm" log line
(after its vCPU was told to run), read from its log's own time stamps.
usage: host_setup.py KILN_VMM FIRECRACKER VMLINUX INITRAMFS [RUNS]"""
import datetime, json, os, signal, statistics, subprocess, sys, tempfile, time

KILN_VMM, FIRECRACKER, VMLINUX, INITRAMFS = sys.argv[1:5]
RUNS = int(sys.argv[5]) if len(sys.argv) > 5 else 20
# kiln-vmm's base arguments (kiln_vmm::boot::cmdline::BASE) for both.
ARGS = "reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd tsc=reliable no_timer_check quiet"
scratch = tempfile.mkdtemp(prefix="host-setup-")


def end(proc):
    """Ends one VMM by its own pid (and its process group), then reaps it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def kiln(i, jail):
    timings = os.path.join(scratch, f"kiln-{i}.json")
    uds = os.path.join(scratch, f"kiln-{i}.sock")
    argv = [KILN_VMM, "--kernel", VMLINUX, "--initramfs", INITRAMFS, "--vcpus", "1",
            "--mem-mib", "256", "--vsock-uds", uds, "--timings-json", timings]
    if not jail:
        argv.append("--no-jail")
    spawn = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        # The guest stops at once here, which ends kiln-vmm; wait for that.
        proc.wait(timeout=30)
    finally:
        end(proc)
    with open(timings) as f:
        report = json.load(f)
    os.unlink(timings)
    if report.get("kernel_entry_us") is None:
        raise RuntimeError(f"kiln-vmm never entered the guest: {report}")
    return (report["start_unix_us"] + report["kernel_entry_us"]) / 1e3 - spawn * 1e3


def firecracker(i):
    config = os.path.join(scratch, f"fc-{i}.json")
    uds = os.path.join(scratch, f"fc-{i}.vsock")
    with open(config, "w") as f:
        json.dump({"boot-source": {"kernel_image_path": VMLINUX, "initrd_path": INITRAMFS,
                                   "boot_args": f"console=ttyS0 {ARGS}"},
                   "drives": [],
                   "machine-config": {"vcpu_count": 1, "mem_size_mib": 256, "smt": False},
                   "vsock": {"guest_cid": 3, "uds_path": uds}}, f)
    spawn = time.time()
    proc = subprocess.Popen([FIRECRACKER, "--no-api", "--no-seccomp", "--level", "Info",
                             "--id", f"probe-{i}", "--config-file", config],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    started = None
    try:
        deadline = time.time() + 30
        for line in proc.stdout:
            if "Successfully started microvm" in line:
                stamp = line.split(" ", 1)[0]
                started = datetime.datetime.fromisoformat(stamp[:26]).replace(
                    tzinfo=datetime.timezone.utc).timestamp()
                break
            if time.time() > deadline:
                break
    finally:
        end(proc)
        for path in (config, uds):
            if os.path.exists(path):
                os.unlink(path)
    if started is None:
        raise RuntimeError("firecracker never said it started the microvm")
    return (started - spawn) * 1e3


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


peers = [("kiln (jailed)", lambda i: kiln(i, True)),
         ("kiln (no jail)", lambda i: kiln(i, False)),
         ("firecracker (no jailer)", firecracker)]
times = {name: [] for name, _ in peers}
failures = {name: [] for name, _ in peers}
for i in range(RUNS + 1):
    for name, run in peers:
        try:
            ms = run(i)
        except Exception as e:  # one failed start is reported, not the end
            failures[name].append(str(e))
            continue
        if i > 0:  # run 0 warms the page cache
            times[name].append(ms)
print(f"spawn -> guest's first instruction on this host, {RUNS} runs each (after one warm-up), ms")
print(f"{'vmm':26s} {'p50':>7s} {'p95':>7s} {'p99':>7s} {'min':>7s} {'max':>7s}  failed")
for name, _ in peers:
    xs = times[name]
    if xs:
        print(f"{name:26s} {statistics.median(xs):7.1f} {pct(xs, .95):7.1f} {pct(xs, .99):7.1f}"
              f" {min(xs):7.1f} {max(xs):7.1f}  {len(failures[name])}")
    else:
        print(f"{name:26s} no sample: {failures[name][:1]}")
print("KILN_HOST_SETUP_JSON " + json.dumps({n: sorted(v) for n, v in times.items()}))
os.rmdir(scratch)
