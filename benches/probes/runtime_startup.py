"""Start-up and loop times of the runtime image's interpreters, run where
it is started: natively, in the testbed itself, or in a kiln sandbox.
tools/probe-runtime-startup runs it in all three with the same binaries.
usage: runtime_startup.py [RUNS] [LABEL]"""
import os, statistics, subprocess, sys, time
N = int(sys.argv[1]) if len(sys.argv) > 1 else 5
cases = [
    ("python3 -c print(1)", ["python3", "-c", "print(1)"]),
    ("python3 -S -c pass", ["python3", "-S", "-c", "pass"]),
    ("node --version", ["node", "--version"]),
    ("node -e console.log(1)", ["node", "-e", "console.log(1)"]),
    ("node --jitless", ["node", "--jitless", "-e", "console.log(1)"]),
    ("node --v8-pool-size=0", ["node", "--v8-pool-size=0", "-e", "console.log(1)"]),
    ("node --single-threaded", ["node", "--single-threaded", "-e", "console.log(1)"]),
    ("node --no-opt --max-lazy", ["node", "--no-opt", "--max-lazy", "-e", "console.log(1)"]),
    ("node --max-semi-space-size=1", ["node", "--max-semi-space-size=1", "-e", "console.log(1)"]),
    ("node loop 1e7", ["node", "-e", "let s=0;for(let i=0;i<1e7;i++)s+=i;console.log(s)"]),
    ("node --jitless loop 1e7", ["node", "--jitless", "-e", "let s=0;for(let i=0;i<1e7;i++)s+=i;console.log(s)"]),
    ("python loop 1e6", ["python3", "-c", "s=0\nfor i in range(10**6): s+=i\nprint(s)"]),
]
print("where:", sys.argv[2] if len(sys.argv) > 2 else "?", "uid", os.getuid(), "cpus", os.cpu_count())
for name, argv in cases:
    ts = []
    for _ in range(N):
        t = time.perf_counter()
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ts.append((time.perf_counter() - t) * 1000)
        if r.returncode != 0:
            print("  failed:", name, r.stderr[:200])
            break
    print(f"{name:32s} p50 {statistics.median(ts):8.1f} ms  min {min(ts):8.1f}  max {max(ts):8.1f}")
try:
    flags = [l for l in open("/proc/cpuinfo") if l.startswith("flags")][0]
    print("cpu flags:", flags.split(":", 1)[1].strip())
except Exception as e:
    print("no cpuinfo", e)
for f in ["/sys/kernel/mm/transparent_hugepage/enabled", "/proc/sys/kernel/randomize_va_space", "/sys/devices/system/clocksource/clocksource0/current_clocksource"]:
    try:
        print(f, open(f).read().strip())
    except Exception as e:
        print(f, "-", e)
