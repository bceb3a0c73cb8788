"""A VMM's own set-up on this host (not in the testbed), kiln-vmm jailed and
without its jail against Firecracker, in turns: a cold boot's spawn -> the
guest's first instruction, and a snapshot restore's spawn -> the vCPU
running again. Everything before a guest's first instruction is
host work (process start, jail, KVM set-up, loading the kernel), which the
testbed's TCG inflates far more than guest code, so this is the VMM-side
share of a cold boot as it would be on a host with hardware KVM.

The guest itself need not run: on a host whose /dev/kvm cannot boot Linux
it stops soon after its first instruction, and each VMM is ended by its pid
once its mark is in. kiln-vmm: VMM start + kernel_entry_us from its
--timings-json. Firecracker: its "Successfully started microvm" log line
(after its vCPU was told to run), read from its log's own time stamps.

Restores need a snapshot of a running guest, which a Linux guest cannot
give here, so both VMMs snapshot the same tiny guest (an ELF whose one
segment is `hlt; jmp` at 16 MiB; 256 MiB of RAM, one vsock device) and
restore that: everything a restore does on the host (process, jail, state
file, KVM VM, memory mapped from the snapshot, vCPU state, threads) but
nothing the guest does afterwards. kiln-vmm: its "vm started" step
(KILN_LOG=kiln_vmm=debug, monotonic time). Firecracker: the answer to
`PUT /snapshot/load` with `resume_vm`, over its API socket as soon as the
socket exists (its memory file made sparse like kiln's first).
With a jailer (Firecracker's; FIRECRACKER must then be a static build),
Firecracker's restore is also timed through it (chroot with the snapshot
hard-linked in, an unprivileged uid; a cgroup only where the host
delegates the controllers), the like-for-like peer of kiln's jail.
usage: host_setup.py KILN_VMM FIRECRACKER VMLINUX INITRAMFS [RUNS [JAILER]]"""
import datetime, json, os, re, signal, socket, statistics, struct, subprocess, sys, tempfile, time

KILN_VMM, FIRECRACKER, VMLINUX, INITRAMFS = sys.argv[1:5]
RUNS = int(sys.argv[5]) if len(sys.argv) > 5 else 20
JAILER = sys.argv[6] if len(sys.argv) > 6 else None
JAIL_ID = 10123
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


def tiny_guest(path):
    """An ELF64 whose one PT_LOAD at 16 MiB is `hlt; jmp .-3`."""
    base, off, code = 0x1000000, 0x1000, bytes([0xF4, 0xEB, 0xFD])
    elf = bytearray(b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8))
    elf += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    elf += struct.pack("<IIQQQQQQ", 1, 5, off, base, base, len(code), len(code), 0x1000)
    elf += bytes(off - len(elf)) + code
    with open(path, "wb") as f:
        f.write(elf)


def wait_path(path, proc, what):
    deadline = time.time() + 10
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{what}: {path} never appeared")
        time.sleep(0.0005)


def http(sock_path, method, path, body=None):
    """One HTTP/1.1 request over a unix socket; returns (status, body)."""
    data = json.dumps(body) if body is not None else ""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(sock_path)
        s.sendall((f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                   f"{data}").encode())
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = s.recv(4096)
            if not chunk:
                break
            resp += chunk
    head = resp.split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) > 1 else 0, resp.decode(errors="replace")


def snapshot_kiln(elf, snap):
    os.makedirs(snap)
    control = os.path.join(scratch, "kiln-control.sock")
    proc = subprocess.Popen([KILN_VMM, "--kernel", elf, "--mem-mib", "256", "--no-boot-timer",
                             "--vsock-uds", os.path.join(scratch, "kiln-src.sock"),
                             "--control-socket", control, "--snapshot-dir", snap],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_path(control, proc, "kiln-vmm")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(control)
            s.sendall(b'{"op":"snapshot","resume":false}\n')
            reply = s.makefile().readline()
        if '"ok":true' not in reply:
            raise RuntimeError(f"kiln-vmm snapshot: {reply}")
    finally:
        end(proc)


def snapshot_firecracker(elf, snap):
    os.makedirs(snap)
    api = os.path.join(scratch, "fc-src.api")
    proc = subprocess.Popen([FIRECRACKER, "--api-sock", api, "--no-seccomp", "--level", "Error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_path(api, proc, "firecracker")
        steps = [("PUT", "/boot-source", {"kernel_image_path": elf, "boot_args": "x"}),
                 ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 256, "smt": False}),
                 ("PUT", "/vsock", {"guest_cid": 3, "uds_path": FC_VSOCK}),
                 ("PUT", "/actions", {"action_type": "InstanceStart"}),
                 ("PATCH", "/vm", {"state": "Paused"}),
                 ("PUT", "/snapshot/create", {"snapshot_type": "Full",
                                              "snapshot_path": os.path.join(snap, "vm.state"),
                                              "mem_file_path": os.path.join(snap, "vm.mem")})]
        for method, path, body in steps:
            status, resp = http(api, method, path, body)
            if status // 100 != 2:
                raise RuntimeError(f"firecracker {method} {path}: {resp}")
    finally:
        end(proc)
    # Firecracker writes every page; kiln's file has holes where RAM is zero.
    subprocess.run(["fallocate", "--dig-holes", os.path.join(snap, "vm.mem")], check=True)


STEP = re.compile(r" m(\d+\.\d+) .*step: vm started")


def restore_kiln(i, jail):
    argv = [KILN_VMM, "--kernel", TINY, "--mem-mib", "256", "--restore", KILN_SNAP,
            "--vsock-uds", os.path.join(scratch, f"kiln-r{i}.sock")]
    if not jail:
        argv.append("--no-jail")
    env = dict(os.environ, KILN_LOG="kiln_vmm=debug")
    spawn = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    started = None
    try:
        for line in proc.stderr:
            m = STEP.search(line)
            if m:
                started = float(m.group(1))
                break
    finally:
        end(proc)
    if started is None:
        raise RuntimeError("kiln-vmm never said the restored vm started")
    return (started - spawn) * 1e3


def restore_firecracker(i):
    api = os.path.join(scratch, f"fc-r{i}.api")
    if os.path.exists(FC_VSOCK):
        os.unlink(FC_VSOCK)
    spawn = time.monotonic()
    proc = subprocess.Popen([FIRECRACKER, "--api-sock", api, "--no-seccomp", "--level", "Error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_path(api, proc, "firecracker")
        status, resp = http(api, "PUT", "/snapshot/load", {
            "snapshot_path": os.path.join(FC_SNAP, "vm.state"),
            "mem_backend": {"backend_type": "File",
                            "backend_path": os.path.join(FC_SNAP, "vm.mem")},
            "resume_vm": True})
        done = time.monotonic()
    finally:
        end(proc)
        if os.path.exists(api):
            os.unlink(api)
    if status // 100 != 2:
        raise RuntimeError(f"firecracker snapshot load: {resp}")
    return (done - spawn) * 1e3


def restore_firecracker_jailed(i):
    """The jailer's chroot is <base>/<binary name>/<id>/root; paths given to
    Firecracker are inside it."""
    base = os.path.join(scratch, "jail")
    jail_dir = os.path.join(base, os.path.basename(FIRECRACKER), f"r{i}")
    root = os.path.join(jail_dir, "root")
    spawn = time.monotonic()
    os.makedirs(root)
    for name in ("vm.state", "vm.mem"):
        os.link(os.path.join(FC_SNAP, name), os.path.join(root, name))
    proc = subprocess.Popen([JAILER, "--id", f"r{i}", "--exec-file", FIRECRACKER,
                             "--uid", str(JAIL_ID), "--gid", str(JAIL_ID),
                             "--chroot-base-dir", base, "--cgroup-version", "2", "--",
                             "--no-seccomp", "--level", "Error", "--api-sock", "/api.sock"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        api = os.path.join(root, "api.sock")
        wait_path(api, proc, "jailer")
        status, resp = http(api, "PUT", "/snapshot/load", {
            "snapshot_path": "/vm.state",
            "mem_backend": {"backend_type": "File", "backend_path": "/vm.mem"},
            "resume_vm": True, "vsock_override": {"uds_path": "/v.sock"}})
        done = time.monotonic()
    finally:
        end(proc)
        subprocess.run(["rm", "-rf", jail_dir], check=True)
    if status // 100 != 2:
        raise RuntimeError(f"jailed firecracker snapshot load: {resp}")
    return (done - spawn) * 1e3


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def measure(title, peers, key):
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
    print(f"{title}, {RUNS} runs each (after one warm-up), ms")
    print(f"{'vmm':26s} {'p50':>7s} {'p95':>7s} {'p99':>7s} {'min':>7s} {'max':>7s}  failed")
    for name, _ in peers:
        xs = times[name]
        if xs:
            print(f"{name:26s} {statistics.median(xs):7.1f} {pct(xs, .95):7.1f} {pct(xs, .99):7.1f}"
                  f" {min(xs):7.1f} {max(xs):7.1f}  {len(failures[name])}")
        else:
            print(f"{name:26s} no sample: {failures[name][:1]}")
    for name, errors in failures.items():
        for e in errors[:3]:
            print(f"  {name} failed: {e}")
    print(f"{key} " + json.dumps({n: sorted(v) for n, v in times.items()}))


measure("cold boot: spawn -> the guest's first instruction on this host",
        [("kiln (jailed)", lambda i: kiln(i, True)),
         ("kiln (no jail)", lambda i: kiln(i, False)),
         ("firecracker (no jailer)", firecracker)], "KILN_HOST_SETUP_JSON")

TINY = os.path.join(scratch, "tiny.elf")
KILN_SNAP = os.path.join(scratch, "kiln-snap")
FC_SNAP = os.path.join(scratch, "fc-snap")
FC_VSOCK = os.path.join(scratch, "fc.vsock")
tiny_guest(TINY)
snapshot_kiln(TINY, KILN_SNAP)
snapshot_firecracker(TINY, FC_SNAP)
restores = [("kiln (jailed)", lambda i: restore_kiln(i, True)),
            ("kiln (no jail)", lambda i: restore_kiln(i, False)),
            ("firecracker (no jailer)", restore_firecracker)]
if JAILER:
    for name in ("vm.state", "vm.mem"):
        os.chown(os.path.join(FC_SNAP, name), JAIL_ID, JAIL_ID)
    restores.append(("firecracker (jailer)", restore_firecracker_jailed))
measure("restore (the tiny guest): spawn -> vCPU running again on this host", restores,
        "KILN_HOST_RESTORE_JSON")
subprocess.run(["rm", "-rf", scratch], check=True)
