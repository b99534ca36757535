"""ttysnoop in tracepoint mode filters every write() on the system: what does that cost?

A C loop writes 1 byte to /dev/null N times and reports CPU ns per write() (process CPU time),
once from a process whose fd table is the 64 slots embedded in files_struct (most processes:
the filter's fast path, plain BTF loads) and once from one whose table has grown (the filter
then pays three bpf_probe_read_kernel() calls). Configurations, alternated over many short
rounds (links attached and detached between runs; objects loaded once):

  base             nothing attached
  empty            an empty tracepoint program on syscalls:sys_enter_write (the floor any BPF
                   tool on this hook pays: the syscall tracepoint itself)
  ttysnoop         ttysnoop.bpf.o as `bpfscope ttysnoop` loads it, watching another pts that
                   nobody writes to: on 6.2+ the *_cast programs (bpf_rdonly_cast: plain loads)
  ttysnoop-plain   the programs kernels 5.11-6.1 get (an fd_array switch while the fd table is
                   the embedded one, three probe reads once it has grown)

then, started as processes (slower, fewer rounds), the same in bpftrace:

  bpftrace-empty   tracepoint:syscalls:sys_enter_write { }
  bpftrace-filter  the fd -> file -> inode -> i_rdev filter in bpftrace

Each round measures base, every configuration, base again; printed are the median over rounds
of (configuration - that round's base), its interquartile range, and the ratio to the empty
program's added cost (target: ttysnoop <= 2x). The loop runs on one CPU at real-time priority. Then each program's own run time from bpf_stats,
including the real `bpfscope ttysnoop` CLI's programs (kernel.bpf_stats_enabled, restored).
On a busy machine the end-to-end figures are noisy; bpf_stats is the steadier one.

    .venv/bin/python bench/ttysnoop.py     # BENCH_ROUNDS=60 for steadier figures on a busy machine
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bpfscope.bpf.features import PROBE_OBJECT  # noqa: E402
from bpfscope.bpf.object import BpfObject, program_names  # noqa: E402
from bpfscope.toolkit import object_path  # noqa: E402
from bpfscope.tools.ttysnoop import TRACEPOINT_PROGRAMS, kernel_has_func, resolve_terminal  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
BPFTRACE_ROUNDS = int(os.environ.get("BENCH_BPFTRACE_ROUNDS", "3"))
WRITES = int(os.environ.get("BENCH_WRITES", "50000"))

WLOOP = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    long n = atol(argv[1]);
    int fd = open("/dev/null", O_WRONLY);
    char c = 'x';
    struct timespec a, b;
    if (argc > 2) {  /* grow the fd table past the 64 slots embedded in files_struct */
        dup2(fd, 100);
        close(100);
    }
    for (long i = 0; i < 1000; i++)  /* warm up */
        write(fd, &c, 1);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    for (long i = 0; i < n; i++)
        write(fd, &c, 1);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    printf("%.3f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""

WRITERS = {"small fd table": [], "grown fd table": ["grow"]}
# One CPU, real-time priority for the ~50 ms of a run: other load on the machine neither
# preempts the loop nor shares its core (BENCH_PIN=0 to run it like any process).
PIN = ["chrt", "-f", "50", "taskset", "-c", str(os.cpu_count() - 1)] if os.environ.get("BENCH_PIN", "1") == "1" \
    and shutil.which("chrt") and shutil.which("taskset") else []


def build_loop(tmp: str) -> str:
    src, exe = os.path.join(tmp, "wloop.c"), os.path.join(tmp, "wloop")
    Path(src).write_text(WLOOP)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def measure(exe: str, extra: list[str]) -> float:
    """CPU ns per write. Run through sh so the loop is forked by a process with three fds
    open: a fork copies its parent's fd table size, and ours is large."""
    cmd = " ".join([exe, str(WRITES), *extra])
    return float(subprocess.run([*PIN, "sh", "-c", f"{cmd}; :"], capture_output=True, text=True, check=True).stdout)


class Loaded:
    """A BPF object loaded once; attach() / detach() its programs between runs."""

    def __init__(self, name: str, path: Path, programs: dict[str, str], globals_: dict[str, int]):
        self.name = name
        self.obj = BpfObject(path)
        self.obj.only_programs(set(programs))
        for k, v in globals_.items():
            self.obj.set_global(k, v)
        self.obj.load()
        self.programs = programs

    def __enter__(self) -> Loaded:
        for prog, tp in self.programs.items():
            self.obj.program(prog).attach_tracepoint("syscalls", tp)
        return self

    def __exit__(self, *exc: object) -> None:
        links, self.obj.links = self.obj.links, []
        for link in links:
            link.destroy()

    def prog_names(self) -> set[str]:
        return {p[:15] for p in self.programs}


class Bpftrace:
    def __init__(self, name: str, program: str):
        self.name, self.program = name, program

    def __enter__(self) -> Bpftrace:
        self.proc = subprocess.Popen(["bpftrace", "-e", self.program + ' BEGIN { printf("ready\\n"); }'],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(5):  # "Attaching N probes..." comes first
            line = self.proc.stdout.readline()
            if "ready" in line:
                # keep reading: a full pipe would block bpftrace, and it could not exit
                self.drain = threading.Thread(target=self.proc.stdout.read, daemon=True)
                self.drain.start()
                return self
            if not line:
                break
        raise SystemExit(f"bpftrace did not start ({self.proc.poll()})")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def prog_names(self) -> set[str]:
        return {"sys_enter_write"}


class TtysnoopCli:
    """The real tool, as a user runs it."""

    name = "ttysnoop (CLI)"

    def __init__(self, pts: str):
        self.pts = pts

    def __enter__(self) -> TtysnoopCli:
        fd, ready = tempfile.mkstemp(prefix="bpfscope-ready-")
        os.close(fd)
        os.unlink(ready)
        env = dict(os.environ, BPFSCOPE_READY_FILE=ready)
        self.proc = subprocess.Popen([sys.executable, "-m", "bpfscope", "ttysnoop", "-C", "--json", self.pts],
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 30
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"ttysnoop did not start: {self.proc.communicate()[1].decode()}")
            time.sleep(0.01)
        os.unlink(ready)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=30)

    def prog_names(self) -> set[str]:
        return {"tp_write", "tp_write_cast"}


def prog_run_ns(names: set[str], before: set[int]) -> float | None:
    """Mean ns per run of the loaded programs named `names` that were not loaded before."""
    total_ns = total_cnt = 0
    for pid, name in program_names().items():
        if pid in before or name not in names:
            continue
        out = subprocess.run(["bpftool", "prog", "show", "id", str(pid), "--json"], capture_output=True, text=True)
        try:
            info = json.loads(out.stdout)
        except json.JSONDecodeError:
            continue
        total_ns += info.get("run_time_ns", 0)
        total_cnt += info.get("run_cnt", 0)
    return total_ns / total_cnt if total_cnt else None


def paired_rounds(exe: str, extra: list[str], configs: list, rounds: int, runs_per_config: int = 1) -> list[dict]:
    """Each round: base, every config, base again (their mean is that round's base)."""
    out = []
    for _ in range(rounds):
        r = {"base": [measure(exe, extra)]}
        for cfg in configs:
            with cfg:
                r[cfg.name] = [measure(exe, extra) for _ in range(runs_per_config)]
        r["base"].append(measure(exe, extra))
        out.append({k: statistics.mean(v) for k, v in r.items()})
    return out


def report(title: str, rounds: list[dict]) -> dict[str, float]:
    """ns per write and ns added per write (median over rounds of config - that round's base),
    and the ratio to the empty program's added cost."""
    names = list(rounds[0])
    added = {k: statistics.median(r[k] - r["base"] for r in rounds) for k in names}
    q = {k: _quartiles([r[k] - r["base"] for r in rounds]) for k in names}
    med = {k: statistics.median(r[k] for r in rounds) for k in names}
    empty_key = "empty" if "empty" in names else "bpftrace-empty"
    print(f"\n{title}\n{'config':<16} {'ns/write':>8} {'added':>7} {'(IQR)':>13} {'x empty':>8}")
    for k in names:
        ratio = f"{added[k] / added[empty_key]:.2f}" if k != "base" and added[empty_key] > 0 else "-"
        iqr = f"({q[k][0]:.0f}..{q[k][1]:.0f})" if k != "base" else ""
        print(f"{k:<16} {med[k]:8.0f} {added[k]:7.0f} {iqr:>13} {ratio:>8}")
    return added


def _quartiles(v: list[float]) -> tuple[float, float]:
    if len(v) < 4:
        return min(v), max(v)
    qs = statistics.quantiles(v, n=4)
    return qs[0], qs[2]


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    tmp = tempfile.mkdtemp(prefix="bpfscope-bench-")
    master, slave = os.openpty()  # the pts ttysnoop watches: nothing writes to it
    pts = os.ttyname(slave)
    term = resolve_terminal(pts)
    have_bpftrace = shutil.which("bpftrace") is not None
    empty = Loaded("empty", PROBE_OBJECT, {"probe_tracepoint": "sys_enter_write"}, {})
    targets = {"target_rdev": term.rdev, "target_sb_dev": term.sb_dev}
    suffix = "_cast" if kernel_has_func("bpf_rdonly_cast") else ""
    snoop = Loaded("ttysnoop", object_path("ttysnoop"), {p + suffix: tp for p, tp in TRACEPOINT_PROGRAMS.items()},
                   targets)
    plain = Loaded("ttysnoop-plain", object_path("ttysnoop"), TRACEPOINT_PROGRAMS, targets)
    try:
        exe = build_loop(tmp)
        print(f"write(/dev/null, 1 byte) x {WRITES}, {ROUNDS} rounds, ttysnoop watching {pts} (nobody writes there);"
              f" programs: tp_*{suffix}")
        verdict: dict[str, float] = {}
        ours = [empty, snoop, plain] if suffix else [empty, snoop]
        for w, extra in WRITERS.items():
            added = report(f"writer with a {w}:", paired_rounds(exe, extra, ours, ROUNDS))
            verdict[w] = added["ttysnoop"] / added["empty"] if added["empty"] > 0 else float("nan")
        if have_bpftrace:
            rdev = term.rdev
            tracers = [
                Bpftrace("bpftrace-empty", "tracepoint:syscalls:sys_enter_write { }"),
                Bpftrace("bpftrace-filter",
                         "tracepoint:syscalls:sys_enter_write { $f = *(curtask->files->fdt->fd + args->fd); "
                         f"if ($f->f_inode->i_rdev == {rdev}) {{ printf(\"%r\", buf(args->buf, args->count)); }} }}"),
            ]
            for w, extra in WRITERS.items():
                report(f"bpftrace, writer with a {w} ({BPFTRACE_ROUNDS} rounds):",
                       paired_rounds(exe, extra, tracers, BPFTRACE_ROUNDS, runs_per_config=3))
        print()
        for w, ratio in verdict.items():
            ok = "OK" if ratio <= 2.0 else ("OVER" if ratio == ratio else "too noisy: rerun")
            print(f"ttysnoop / empty program, writer with a {w}: {ratio:.2f} (target <= 2.0) -> {ok}")

        stats_path = "/proc/sys/kernel/bpf_stats_enabled"
        prev = Path(stats_path).read_text().strip()
        Path(stats_path).write_text("1")
        try:
            print("\nprogram run time per write (bpf_stats; each run also pays the stats' two clock reads):")
            cfgs: list = [empty, snoop, *([plain] if suffix else []), TtysnoopCli(pts)]
            if have_bpftrace:
                cfgs += tracers
            for cfg in cfgs:
                row = []
                for w, extra in WRITERS.items():
                    before = set() if isinstance(cfg, Loaded) else set(program_names())
                    with cfg:
                        if isinstance(cfg, Loaded):  # counters are cumulative: take a difference
                            start = prog_stats_of(cfg)
                        measure(exe, extra)
                        if isinstance(cfg, Loaded):
                            end = prog_stats_of(cfg)
                            runs = end[1] - start[1]
                            ns = (end[0] - start[0]) / runs if runs else None
                        else:
                            ns = prog_run_ns(cfg.prog_names(), before)
                    row.append(f"{w} {ns:6.1f} ns" if ns is not None else f"{w} n/a")
                print(f"  {cfg.name:<16} " + "   ".join(row))
        finally:
            Path(stats_path).write_text(prev)
    finally:
        empty.obj.close()
        snoop.obj.close()
        plain.obj.close()
        os.close(master)
        os.close(slave)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def prog_stats_of(cfg: Loaded) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over a Loaded object's write program."""
    ns = cnt = 0
    for prog in cfg.programs:
        if not prog.startswith("tp_write") and prog != "probe_tracepoint":
            continue
        out = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id(cfg.obj.program(prog).fd)), "--json"],
                             capture_output=True, text=True)
        info = json.loads(out.stdout)
        ns += info.get("run_time_ns", 0)
        cnt += info.get("run_cnt", 0)
    return ns, cnt


def prog_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("prog_id:"):
                return int(line.split()[1])
    raise RuntimeError("no prog_id in fdinfo")


if __name__ == "__main__":
    sys.exit(main())
