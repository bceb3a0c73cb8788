"""Side-by-side guest boot timelines from benches/probes/boot-phases: the
kernel's printk times at phase markers (median over runs, ms), the largest
gaps between consecutive console lines, and the initcalls whose times differ
most between the VMMs. Reads the probe's log (stdin or a path).
usage: boot_phases.py [LOG]"""
import json
import re
import statistics
import sys
from collections import defaultdict

# Phase markers: the first console line matching each pattern.
MARKERS = [
    ("kernel start (Linux version)", r"Linux version"),
    ("hypervisor detected", r"Hypervisor detected"),
    ("kvm-clock set up", r"kvm-clock: Using msrs|clocksource: kvm-clock:"),
    ("TSC frequency known", r"tsc: Detected .* MHz|tsc: Fast TSC calibration|tsc: Using PIT calibration"),
    ("APIC / IO-APIC timer setup", r"APIC: Switch to symmetric I/O mode|\.\.TIMER:|Using local APIC timer"),
    ("delay loop calibrated", r"Calibrating delay loop|lpj="),
    ("CPU0 identified (smpboot)", r"smpboot: CPU0:"),
    ("SMP up", r"smp: Brought up"),
    ("devtmpfs", r"devtmpfs: initialized"),
    ("clocksource switched", r"clocksource: Switched to clocksource"),
    ("initramfs unpacked (rootfs initcall done)", r"initcall populate_rootfs.* returned|Trying to unpack rootfs"),
    ("virtio-mmio probed", r"initcall virtio_mmio_init.* returned"),
    ("last initcall done", r"initcall .* returned"),
    ("free init memory", r"Freeing unused kernel image"),
    ("run /init", r"Run /init as init process"),
    ("agent serving (vsock listening)", r"kiln-agent: serving on"),
]
LINE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
INITCALL = re.compile(r"initcall (\S+?)\+0x\S+ returned \S+ after (\d+) usecs")


TIMINGS = "kiln-vmm timings: "


def parse(lines, vmm_timings):
    """Yields (vmm, host_ms, [(t_ms, text)]) per boot; kiln-vmm's own
    milestones (ms from its start) go to `vmm_timings`."""
    boot = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line.startswith(TIMINGS):
            try:
                report = json.loads(line[len(TIMINGS):])
            except ValueError:
                continue
            for key in ("built_us", "kernel_entry_us", "userspace_start_us"):
                if report.get(key) is not None:
                    vmm_timings[key].append(report[key] / 1000)
        elif line.startswith("=== BOOT "):
            _, _, vmm, _n, host = line.split()
            ms = host.split("=")[1]
            boot = (vmm, int(ms) if ms.isdigit() else None, [])
        elif line == "=== END" and boot:
            yield boot
            boot = None
        elif boot is not None:
            m = LINE.match(line)
            if m:
                boot[2].append((float(m.group(1)) * 1000, m.group(2)))
            elif line.startswith("cpuinfo: "):
                boot[2].append((None, line))


def first(events, pattern, last=False):
    hits = [t for t, text in events if re.search(pattern, text)]
    if not hits:
        return None
    return hits[-1] if last else hits[0]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x):
    return "-" if x is None else f"{x:,.0f}"


def main():
    src = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    boots = defaultdict(list)
    vmm_timings = defaultdict(list)
    for vmm, host_ms, events in parse(src, vmm_timings):
        boots[vmm].append((host_ms, events))
    vmms = sorted(boots, key=lambda v: (v != "kiln", v))
    if not vmms:
        sys.exit("no boots in the log")
    print("runs: " + ", ".join(f"{v} {len(boots[v])}" for v in vmms))
    print("\n## phase markers: guest printk time, median ms")
    print("| phase | " + " | ".join(vmms) + " |")
    print("|---|" + "---|" * len(vmms))
    for name, pattern in MARKERS:
        last = name == "last initcall done"
        row = [med(first(ev, pattern, last) for _, ev in boots[v]) for v in vmms]
        print(f"| {name} | " + " | ".join(fmt(x) for x in row) + " |")
    row = [med(h for h, _ in boots[v]) for v in vmms]
    print("| host: spawn -> agent console mark seen (10 ms ticks) | "
          + " | ".join(fmt(x) for x in row) + " |")

    if vmm_timings:
        print("\nkiln-vmm's own milestones, median ms from its start: "
              + ", ".join(f"{k[:-3]} {fmt(med(v))}" for k, v in vmm_timings.items()))

    print("\n## CPU features shown to the guest (first run of each)")
    flags = {}
    for v in vmms:
        for _, text in boots[v][0][1]:
            if text.startswith("cpuinfo: flags"):
                flags[v] = set(text.split(":", 2)[2].split())
    for v in vmms:
        others = set().union(*(f for w, f in flags.items() if w != v)) if len(flags) > 1 else set()
        only = sorted(flags.get(v, set()) - others)
        print(f"{v}: {len(flags.get(v, ()))} flags; only here: {' '.join(only) or '-'}")

    print("\n## largest gaps between console lines (first run of each)")
    for v in vmms:
        ev = [e for e in boots[v][0][1] if e[0] is not None]
        gaps = sorted(((b[0] - a[0], a[1], b[1]) for a, b in zip(ev, ev[1:])), reverse=True)
        print(f"{v}:")
        for gap, before, after in gaps[:8]:
            print(f"  {gap:8.1f} ms  after '{before[:70]}'  before '{after[:70]}'")

    print("\n## initcalls: median usecs, largest differences first")
    calls = {v: defaultdict(list) for v in vmms}
    for v in vmms:
        for _, ev in boots[v]:
            for _, text in ev:
                m = INITCALL.search(text)
                if m:
                    calls[v][m.group(1)].append(int(m.group(2)))
    names = set().union(*(calls[v].keys() for v in vmms))
    rows = []
    for name in names:
        meds = [med(calls[v].get(name, [])) or 0 for v in vmms]
        rows.append((max(meds) - min(meds), max(meds), name, meds))
    rows.sort(reverse=True)
    print("| initcall | " + " | ".join(vmms) + " |")
    print("|---|" + "---|" * len(vmms))
    for _, _, name, meds in rows[:25]:
        print(f"| {name} | " + " | ".join(f"{m:,.0f}" for m in meds) + " |")
    print("\n## initcalls: total median usecs")
    for v in vmms:
        total = sum(med(x) for x in calls[v].values())
        print(f"{v}: {total:,.0f} us in {len(calls[v])} initcalls")
    print("\n## slowest initcalls per VMM (median usecs)")
    for v in vmms:
        top = sorted(((med(x), n) for n, x in calls[v].items()), reverse=True)[:12]
        print(f"{v}: " + ", ".join(f"{n} {t:,.0f}" for t, n in top))


if __name__ == "__main__":
    main()
