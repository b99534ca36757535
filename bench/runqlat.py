"""runqlat's cost next to bpftrace's runqlat and `perf sched record`, in one run.

Workload: `perf bench sched pipe` (two tasks ping-pong through a pipe: every op is two
wakeups and two context switches, the events runqlat traces). For each tracer, alternating
rounds, it reports:
  - CPU usecs/op of the workload (user + system time of its tasks: the probes run in them)
    and the overhead per op against no tracing;
  - for BPF tracers, ns per program run from the kernel's own accounting (BPF_ENABLE_STATS,
    run_time_ns / run_cnt of the tracer's programs), the most direct per-event cost.
Then ratios against bpftrace. Machines shared with other work are noisy: the workload is
pinned to CPU 0, rounds alternate the tracers' order, and each figure is the best (lowest)
of the rounds, the one least disturbed by other load.

    .venv/bin/python bench/runqlat.py        (BENCH_ROUNDS=5 BENCH_LOOPS=100000 to tune)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bpfscope.bpf import libbpf as L  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
LOOPS = int(os.environ.get("BENCH_LOOPS", "100000"))
BPFSCOPE = [str(ROOT / ".venv/bin/bpfscope"), "runqlat"]
BPFTRACE_RUNQLAT = r"""
tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { @qtime[args->pid] = nsecs; }
tracepoint:sched:sched_switch {
  if (args->prev_state == 0) { @qtime[args->prev_pid] = nsecs; }
  $ns = @qtime[args->next_pid];
  if ($ns) { @usecs = hist((nsecs - $ns) / 1000); }
  delete(@qtime[args->next_pid]);
}
BEGIN { printf("ready\n"); }
"""


class Tracer:
    def __init__(self, name: str):
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.tmp: str | None = None

    def start(self) -> set[int]:
        """Start; return the BPF program ids it added (empty for non-BPF tracers)."""
        before = _prog_ids()
        if self.name.startswith("bpfscope"):
            ready = tempfile.mktemp(prefix="bench-ready-")
            args = BPFSCOPE + (["--mode", "raw_tp"] if "raw_tp" in self.name else [])
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         env=dict(os.environ, BPFSCOPE_READY_FILE=ready))
            _wait(lambda: os.path.exists(ready), self.proc)
            os.unlink(ready)
        elif self.name == "bpftrace":
            self.proc = subprocess.Popen(["bpftrace", "-B", "line", "-e", BPFTRACE_RUNQLAT],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert self.proc.stdout is not None
            while "ready" not in (self.proc.stdout.readline() or "ready"):
                pass
        elif self.name == "perf sched record":
            fd, self.tmp = tempfile.mkstemp(prefix="bench-perf-", suffix=".data")
            os.close(fd)
            self.proc = subprocess.Popen(["perf", "sched", "record", "-o", self.tmp], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)
            time.sleep(1.5)  # perf has no ready signal; it attaches within this on this class of machine
            if self.proc.poll() is not None:
                raise SystemExit(f"perf sched record failed: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return _prog_ids() - before if self.name != "perf sched record" else set()

    def stop(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        if self.tmp:
            os.unlink(self.tmp)
            self.tmp = None


def _wait(cond, proc: subprocess.Popen, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit("tracer did not start")
        time.sleep(0.005)


def _prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def _prog_stats(ids: set[int]) -> tuple[int, int]:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    ns = cnt = 0
    for p in json.loads(out or "[]"):
        if p["id"] in ids:
            ns += p.get("run_time_ns", 0)
            cnt += p.get("run_cnt", 0)
    return ns, cnt


def workload() -> float:
    """CPU time (user + system, all of the benchmark's tasks) per op, in usecs: unlike wall
    time it does not grow when other work on the machine takes the CPU away."""
    # both tasks on one CPU: each op is two wakeups + two switches on that CPU, no IPIs
    proc = subprocess.Popen(["taskset", "-c", "0", "perf", "bench", "sched", "pipe", "-l", str(LOOPS)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit("perf bench sched pipe failed")
    return (ru.ru_utime + ru.ru_stime) * 1e6 / LOOPS


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    for tool in ("bpftrace", "perf", "bpftool"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: scripts/install-deps.sh --bench")
    if not (ROOT / "bpfscope/tools/runqlat.bpf.o").exists():
        raise SystemExit("build first: make bpf")
    names = ["none", "bpfscope (tp_btf + task storage)", "bpfscope (raw_tp + hash)", "bpftrace",
             "perf sched record"]
    per_op: dict[str, list[float]] = {n: [] for n in names}
    per_run: dict[str, list[float]] = {n: [] for n in names}
    stats_fd = L.lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME while this fd is open
    if stats_fd < 0:
        print("(BPF_ENABLE_STATS refused: no ns/run figures)")
    try:
        for rnd in range(ROUNDS):
            for name in names if rnd % 2 == 0 else reversed(names):
                tracer = Tracer(name)
                ids = tracer.start() if name != "none" else set()
                try:
                    ns0, c0 = _prog_stats(ids) if ids else (0, 0)
                    per_op[name].append(workload())
                    ns1, c1 = _prog_stats(ids) if ids else (0, 0)
                    if c1 > c0:
                        per_run[name].append((ns1 - ns0) / (c1 - c0))
                finally:
                    if name != "none":
                        tracer.stop()
    finally:
        if stats_fd >= 0:
            os.close(stats_fd)

    base = min(per_op["none"])
    print(f"taskset -c 0 perf bench sched pipe -l {LOOPS}, {ROUNDS} alternating rounds, best of each "
          f"({os.cpu_count()} CPUs, kernel {os.uname().release})\n")
    print(f"{'tracer':<36} {'CPU us/op':>9} {'overhead/op':>12} {'ns/prog run':>12}")
    med = {}
    for n in names:
        m = min(per_op[n])
        run = min(per_run[n]) if per_run[n] else None
        med[n] = (m - base, run)
        print(f"{n:<36} {m:>9.2f} {(m - base) * 1000:>10.0f}ns {f'{run:.0f}' if run else '-':>12}")
    bt_over, bt_run = med["bpftrace"]
    print("\nratios against bpftrace (lower is cheaper):")
    for n in names[1:3] + names[4:]:
        over, run = med[n]
        r1 = f"{over / bt_over:.2f}x overhead/op" if bt_over > 0 else "overhead/op n/a"
        r2 = f", {run / bt_run:.2f}x ns/prog run" if run and bt_run else ""
        print(f"  {n:<34} {r1}{r2}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
