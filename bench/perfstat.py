"""What perfstat's two ways of crediting events to tasks cost, next to perf and bpftrace.

Two workloads from tests/cprogs/evwork.c, each timed as CPU time of the work alone:
  faults    touch fresh pages: one page fault each (200,000 per run)
  pingpong  pipe round trips between two processes pinned to CPU 0: two context switches each

Tracers, each running while the workload runs (rounds alternate between untraced and traced
runs; best of BENCH_RUNS each, since other load on the machine only ever adds time):
  perfstat read     per-CPU counters read by BPF at every sched_switch (perfstat's default)
  perfstat sample   sample_period=1 on the event: one BPF run per event
  perf stat -a      kernel counting, no per-process attribution (the floor)
  perf stat -p      per-task counting of the workload's pid (faults only)
  bpftrace          software:page-faults:1 / tracepoint:sched:sched_switch with @[pid] = count()

Prints, per tracer: CPU ns added per page fault / context switch (best traced run minus best
untraced run), the BPF programs' own run time per event from the kernel's BPF run-time stats
(bpf_enable_stats: exact, immune to other load, but blind to perf's sampling machinery around a
program), the count credited to the workload's pid (ground truth from getrusage), and ratios.
Run as root: `.venv/bin/python bench/perfstat.py` (BENCH_RUNS=5 by default).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bpfscope.bpf import libbpf as L  # noqa: E402
from bpfscope.bpf.btfstruct import Btf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
PAGES, ROUNDS = 20000, 10  # 200,000 faults
TRIPS = 50000  # 100,000 context switches


def build_evwork() -> str:
    out = Path(tempfile.mkdtemp(prefix="bpfscope-bench-")) / "evwork"
    subprocess.run(["gcc", "-O1", "-g", "-o", str(out), str(ROOT / "tests/cprogs/evwork.c")], check=True)
    return str(out)


class Workload:
    def __init__(self, evwork: str, args: list[str]):
        self.proc = subprocess.Popen([evwork, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.pid = int(self.proc.stdout.readline().split()[1])

    def go(self) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        res = json.loads(self.proc.stdout.readline())
        self.proc.wait()
        return res


# ------------------------------------------------------------------------------------- tracers
class Tracer:
    name = ""
    proc: subprocess.Popen | None = None

    def start(self, pid: int) -> None: ...

    def stop(self, pid: int) -> int | None:
        """Stop; return the count credited to pid (None when the tracer has no per-pid view)."""
        return None


class Perfstat(Tracer):
    def __init__(self, events: str, mode: str, name: str = ""):
        self.events, self.mode = events, mode
        self.event = events.split(",")[0]  # the one compared with the truth
        self.name = name or f"perfstat {mode}"

    def start(self, pid: int) -> None:
        self.ready = Path(tempfile.mktemp(prefix="bpfscope-ready-"))
        env = dict(os.environ, BPFSCOPE_READY_FILE=str(self.ready))
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/bpfscope"), "perfstat", "-e", self.events, "--mode", self.mode, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"perfstat exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.005)
        self.ready.unlink()

    def stop(self, pid: int) -> int | None:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        for line in out.splitlines():
            rec = json.loads(line)
            for row in rec.get("rows", []):
                if row["PID"] == pid:
                    return int(row[self.event])
        return 0


class PerfStat(Tracer):
    def __init__(self, event: str, per_pid: bool):
        self.event, self.per_pid = event, per_pid
        self.name = "perf stat -p" if per_pid else "perf stat -a"

    def start(self, pid: int) -> None:
        target = ["-p", str(pid)] if self.per_pid else ["-a"]
        self.proc = subprocess.Popen(["perf", "stat", "-x,", "-e", self.event, *target],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # perf has no ready signal; it opens its events within milliseconds

    def stop(self, pid: int) -> int | None:
        if self.per_pid:
            out = self.proc.communicate(timeout=30)[1]  # perf stat -p ends when the pid exits
        else:
            self.proc.send_signal(signal.SIGINT)
            out = self.proc.communicate(timeout=30)[1]
        m = re.search(r"^(\d+),", out, re.M)
        return int(m.group(1)) if (m and self.per_pid) else None


class Bpftrace(Tracer):
    name = "bpftrace"

    def __init__(self, probe: str):
        self.probe = probe

    def start(self, pid: int) -> None:
        prog = f'{self.probe} {{ @[pid] = count(); }} BEGIN {{ printf("ready\\n"); }}'
        self.proc = subprocess.Popen(["bpftrace", "-B", "line", "-e", prog], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        while self.proc.stdout.readline().strip() != "ready":
            if self.proc.poll() is not None:
                raise SystemExit("bpftrace exited early")

    def stop(self, pid: int) -> int | None:
        out = ""
        for _ in range(3):  # bpftrace 0.17 now and then misses the first SIGINT
            self.proc.send_signal(signal.SIGINT)
            try:
                out = self.proc.communicate(timeout=10)[0]
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            self.proc.kill()
            self.proc.communicate()
        m = re.search(rf"^@\[{pid}\]: (\d+)", out, re.M)
        return int(m.group(1)) if m else 0


# ----------------------------------------------------------------------------- BPF run-time stats
_INFO = None


def prog_stats(ids: set[int]) -> tuple[int, int]:
    """Sum of (run_time_ns, run_cnt) of these programs (bpf_prog_info layout from kernel BTF)."""
    global _INFO
    if _INFO is None:
        _INFO = Btf(L.lib.btf__load_vmlinux_btf()).struct("bpf_prog_info")
    import ctypes

    t = n = 0
    for pid in ids:
        fd = L.lib.bpf_prog_get_fd_by_id(pid)
        if fd < 0:
            continue
        try:
            info = _INFO()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            if L.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) == 0:
                t += info.run_time_ns
                n += info.run_cnt
        finally:
            os.close(fd)
    return t, n


# ------------------------------------------------------------------------------------- running
@dataclass
class Run:
    cpu_ns: int  # CPU time of the work (evwork's own clock; pingpong: parent + child)
    report: dict
    credited: int | None  # what the tracer counted for the workload's pid
    bpf_ns: int  # run time of the tracer's BPF programs while the work ran (whole machine)
    bpf_runs: int


def program_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds open (from /proc/PID/fdinfo)."""
    ids: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def measure(evwork: str, args: list[str], tracer: Tracer | None) -> Run:
    w = Workload(evwork, args)
    ids: set[int] = set()
    if tracer:
        tracer.start(w.pid)
        if tracer.proc is not None:
            ids = program_ids_of(tracer.proc.pid)
    t0, n0 = prog_stats(ids)
    res = w.go()
    t1, n1 = prog_stats(ids)
    credited = tracer.stop(w.pid) if tracer else None
    return Run(res["cpu_ns"], res, credited, t1 - t0, n1 - n0)


@dataclass
class Result:
    cpu_added: float  # ns per event: best traced run minus best untraced run
    runs_per_event: float
    ns_per_run: float
    bpf_per_event: float


def bench(title: str, evwork: str, args: list[str], events: int, truth: Callable[[dict], int],
          tracers: list[Tracer]) -> dict[str, Result]:
    print(f"\n== {title}: {events:,} events per run, {RUNS} rounds")
    runs: dict[str, list[Run]] = {t.name: [] for t in tracers}
    base: list[int] = []
    measure(evwork, args, None)  # warm up
    for _ in range(RUNS):
        for t in tracers:
            base.append(measure(evwork, args, None).cpu_ns)
            runs[t.name].append(measure(evwork, args, t))
    b = min(base)
    print(f"  untraced: {b / events:.0f} ns CPU per event (best of {len(base)})")
    print(f"  {'tracer':<20} {'CPU ns added':>12} {'BPF runs':>9} {'BPF ns':>7} {'BPF ns':>7}  counted/actual")
    print(f"  {'':<20} {'per event':>12} {'/event':>9} {'/run':>7} {'/event':>7}  (last run)")
    out: dict[str, Result] = {}
    for t in tracers:
        rs = runs[t.name]
        nruns = sum(r.bpf_runs for r in rs)
        res = Result(
            cpu_added=(min(r.cpu_ns for r in rs) - b) / events,
            runs_per_event=nruns / (events * len(rs)),
            ns_per_run=sum(r.bpf_ns for r in rs) / nruns if nruns else 0.0,
            bpf_per_event=statistics.median(r.bpf_ns for r in rs) / events,
        )
        out[t.name] = res
        last = rs[-1]
        counted = f"{last.credited}/{truth(last.report)}" if last.credited is not None else "-"
        print(f"  {t.name:<20} {res.cpu_added:12.0f} {res.runs_per_event:9.3f} {res.ns_per_run:7.0f} "
              f"{res.bpf_per_event:7.0f}  {counted}")
    return out


def main() -> int:
    if os.geteuid() != 0:
        print("bench/perfstat.py needs root", file=sys.stderr)
        return 1
    evwork = build_evwork()
    have_perf, have_bt = shutil.which("perf"), shutil.which("bpftrace")
    f_tracers: list[Tracer] = [Perfstat("page-faults", "read"), Perfstat("page-faults", "sample")]
    s_tracers: list[Tracer] = [
        Perfstat("context-switches", "read"),
        Perfstat("context-switches,page-faults,cpu-migrations,task-clock", "read", "perfstat read 3ctr"),
        Perfstat("context-switches", "sample"),
    ]
    if have_perf:
        f_tracers += [PerfStat("page-faults", False), PerfStat("page-faults", True)]
        s_tracers += [PerfStat("context-switches", False)]
    if have_bt:
        f_tracers.append(Bpftrace("software:page-faults:1"))
        s_tracers.append(Bpftrace("tracepoint:sched:sched_switch"))
    stats_fd = L.lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME while this fd is open
    try:
        f = bench("page faults", evwork, ["faults", str(PAGES), str(ROUNDS)], PAGES * ROUNDS,
                  lambda r: r["minflt"] + r["majflt"], f_tracers)
        s = bench("context switches (pingpong)", evwork, ["pingpong", str(TRIPS)], 2 * TRIPS,
                  lambda r: r["nvcsw"] + r["nivcsw"], s_tracers)
    finally:
        if stats_fd >= 0:
            os.close(stats_fd)

    ref = "perfstat read"
    print("\n== ratios")
    fr = f[ref].cpu_added
    print("  CPU ns added per page fault (vs perfstat read, "
          f"{fr:+.0f} ns): " + "; ".join(f"{n} {r.cpu_added:+.0f} ns" + (f" ({r.cpu_added / fr:.1f}x)" if fr > 10 else "")
                                         for n, r in f.items() if n != ref))
    sr = s[ref].ns_per_run
    print(f"  BPF ns per context switch (vs perfstat read, {sr:.0f} ns per switch): "
          + "; ".join(f"{n} {r.bpf_per_event:.0f} ns/event ({r.bpf_per_event / s[ref].bpf_per_event:.2f}x)"
                      for n, r in s.items() if n != ref and s[ref].bpf_per_event))
    for line in (
        "CPU ns added: best traced run minus best untraced run (work's CPU time). It includes perf's",
        "sampling machinery around a program, but other load on a shared machine makes it noisy",
        "(it can come out negative).",
        "BPF runs/ns: the kernel's run-time stats of the tracer's own programs while the work ran.",
        "Exact per run, blind to perf's overflow handling; runs of every task count (in read mode",
        "during the fault workload the runs are the whole machine's context switches).",
        "perfstat read: context-switches alone (counted at the switch, no counter read);",
        "perfstat read 3ctr: the default set, three counters read at every switch.",
    ):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
