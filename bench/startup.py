"""Start-up cost of `bpfscope execsnoop` next to a bpftrace one-liner on the same tracepoints.

Measures, alternating runs: process start -> probes attached (bpfscope writes a timestamp to
BPFSCOPE_READY_FILE when attached; bpftrace prints from BEGIN, which runs after attach),
peak RSS (wait4's ru_maxrss), and SIGINT -> exit. Prints medians and ratios.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BPFSCOPE = [str(ROOT / ".venv/bin/bpfscope"), "execsnoop"]
BPFTRACE_PROG = (
    'tracepoint:syscalls:sys_enter_execve { printf("%s\\n", comm); } '
    "tracepoint:syscalls:sys_exit_execve { } "
    'BEGIN { printf("ready\\n"); }'
)
RUNS = int(os.environ.get("BENCH_RUNS", "10"))


def _wait_exit(proc: subprocess.Popen) -> int:
    _, _, ru = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return ru.ru_maxrss  # KiB


def run_bpfscope() -> tuple[float, float, float]:
    ready = Path(tempfile.mktemp(prefix="bpfscope-ready-"))
    env = dict(os.environ, BPFSCOPE_READY_FILE=str(ready))
    t0 = time.time()
    proc = subprocess.Popen(BPFSCOPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while not ready.exists() or not ready.read_text().strip():
        if proc.poll() is not None:
            raise SystemExit("bpfscope exited early")
        time.sleep(0.0005)
    attached = float(ready.read_text()) - t0
    ready.unlink()
    t1 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rss = _wait_exit(proc)
    return attached, time.monotonic() - t1, rss / 1024


def run_bpftrace() -> tuple[float, float, float]:
    t0 = time.time()
    proc = subprocess.Popen(["bpftrace", "-B", "line", "-e", BPFTRACE_PROG], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("bpftrace exited early")
        if line.strip() == b"ready":
            break
    attached = time.time() - t0
    t1 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.stdout.read()
    rss = _wait_exit(proc)
    return attached, time.monotonic() - t1, rss / 1024


def main() -> int:
    have_bpftrace = shutil.which("bpftrace") is not None
    results: dict[str, list[tuple[float, float, float]]] = {"bpfscope": [], "bpftrace": []}
    run_bpfscope()  # warm the page cache once
    if have_bpftrace:
        run_bpftrace()
    for _ in range(RUNS):
        results["bpfscope"].append(run_bpfscope())
        if have_bpftrace:
            results["bpftrace"].append(run_bpftrace())
    print(f"execsnoop start-up, median of {RUNS} alternating runs")
    print(f"{'':10} {'ready ms':>9} {'exit ms':>9} {'peak RSS MiB':>13}")
    med = {}
    for name, rows in results.items():
        if not rows:
            print(f"{name:10} not available")
            continue
        m = tuple(statistics.median(r[i] for r in rows) for i in range(3))
        med[name] = m
        print(f"{name:10} {m[0] * 1e3:9.1f} {m[1] * 1e3:9.1f} {m[2]:13.1f}")
    if len(med) == 2:
        a, b = med["bpfscope"], med["bpftrace"]
        print(f"ratio bpfscope/bpftrace: ready {a[0] / b[0]:.2f}x, exit {a[1] / b[1]:.2f}x, RSS {a[2] / b[2]:.2f}x")
    ok = med["bpfscope"][0] <= 0.050 and med["bpfscope"][2] <= 30
    print(f"target (ready <= 50 ms, RSS <= 30 MiB): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
