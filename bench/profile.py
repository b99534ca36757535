"""Profiling overhead: a CPU burner's throughput under bpfscope profile, perf record and bpftrace.

    .venv/bin/python bench/profile.py [--seconds 4] [--rounds 3] [--hz 99 999] [--depth 24]

One burner per online CPU (tests/cprogs/stk_burn.c: chunks of work at the bottom of a
DEPTH-frame call chain, frame pointers kept) runs for --seconds, first alone (baseline), then
right after under each profiler in turn:
  bpfscope   bpfscope profile -F HZ (all CPUs, user + kernel stacks, counted in kernel)
  perf       perf record -F HZ -a -g (every sample with its call chain to perf.data)
  bpftrace   bpftrace -e 'profile:hz:HZ { @[ustack, kstack] = count(); } END { clear(@); }'
Each profiler is attached before the burners start and stopped after they end, so only
the overhead while sampling is measured (not start-up, symbolization or exit). Each
profiled run is paired with the baseline run just before it (ratio = profiled / baseline
throughput, loss = 1 - ratio; per wall second and per CPU second of the burners), and
the median over --rounds rounds is shown, with the CPU the profiler's own process used while
sampling (perf copying samples to perf.data, bpfscope's poll loop). Then, from the kernel's
BPF run-time stats, the
BPF program's cost per sample (bpfscope and bpftrace; perf runs no BPF), and the
symbolization speed of the last bpfscope run (stacks/s, cold caches).

Noise: on a shared or virtual machine throughput moves by several percent from one run to
the next (the script prints by how much); a 1% effect needs a quiet machine and more
--rounds. The BPF cost per sample does not depend on that.
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(ROOT))

from bpfscope.bpf.perf import online_cpus  # noqa: E402


def build_burner(tmp: Path) -> Path:
    out = tmp / "stk_burn"
    subprocess.run(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-o", str(out),
                    str(ROOT / "tests" / "cprogs" / "stk_burn.c")], check=True)
    return out


def burn(burner: Path, seconds: float, depth: int, ncpu: int) -> tuple[float, float]:
    """(chunks per wall second, chunks per CPU second of the burners), one burner per CPU.

    The second is robust to other load on the machine: it counts only the time the burners
    were charged, which includes the sampling interrupts that hit them (this kernel charges
    interrupt time to the interrupted task: no CONFIG_IRQ_TIME_ACCOUNTING), but not the CPU
    the profiler's own process uses (perf writing perf.data, bpftrace's reader)."""
    procs = [subprocess.Popen([str(burner), str(seconds), str(depth)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(ncpu)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    total, cpu = 0, 0.0
    for p in procs:
        line = p.stdout.readline()
        total += int(line.split()[-1])
        _, _, ru = os.wait4(p.pid, 0)
        p.returncode = 0
        cpu += ru.ru_utime + ru.ru_stime
    return total / seconds, total / cpu


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Profiler:
    """A profiler process: started, waited for until it samples, stopped with SIGINT."""

    def __init__(self, kind: str, hz: int, tmp: Path):
        self.kind, self.hz, self.tmp = kind, hz, tmp
        self.proc: subprocess.Popen | None = None
        self.stats: dict = {}
        self.own_cpu = 0.0  # CPU seconds the profiler's process used while sampling
        self._cpu0 = 0.0

    def start(self) -> None:
        env = dict(os.environ)
        ready = self.tmp / "ready"
        if ready.exists():
            ready.unlink()
        if self.kind == "bpfscope":
            env["BPFSCOPE_READY_FILE"] = str(ready)
            cmd = [sys.executable, "-m", "bpfscope", "profile", "-F", str(self.hz), "--json"]
        elif self.kind == "perf":
            cmd = ["perf", "record", "-F", str(self.hz), "-a", "-g", "-q", "-o", str(self.tmp / "perf.data")]
        elif self.kind == "bpftrace":
            # END clears the map: printing (symbolizing) thousands of stacks at exit takes bpftrace
            # minutes, and only the overhead while sampling is measured
            cmd = ["bpftrace", "-e", f"profile:hz:{self.hz} {{ @[ustack, kstack] = count(); }} END {{ clear(@); }}"]
        else:
            raise ValueError(self.kind)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        t0 = time.monotonic()
        while time.monotonic() < t0 + 30:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.proc.stderr.read()}")
            if self.kind == "bpfscope" and ready.exists():
                break
            if self.kind == "bpftrace":  # prints "Attaching 1 probe..." once attached
                line = self.proc.stdout.readline()
                if line.startswith("Attaching"):
                    time.sleep(0.2)
                    break
                continue
            if self.kind == "perf" and time.monotonic() > t0 + 1.5:  # perf has no ready signal
                break
            time.sleep(0.02)
        self._cpu0 = proc_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.own_cpu = proc_cpu(self.proc.pid) - self._cpu0
        self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        if self.kind == "bpfscope":
            for line in out.splitlines():
                obj = json.loads(line)
                if obj.get("type") == "stacks":
                    self.stats = obj["stats"]


def perf_event_progs() -> dict[int, dict]:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: p for p in json.loads(out) if p.get("type") == "perf_event"}


def bpf_cost(kind: str, hz: int, tmp: Path, burner: Path, seconds: float, depth: int, ncpu: int) -> tuple[float, int]:
    """(ns per run, runs) of the profiler's perf_event program(s) while the burners run,
    from the kernel's BPF run-time statistics (enabled through a BPF_ENABLE_STATS fd for
    this measurement only: it adds two clock reads per run, so the throughput runs go without)."""
    import ctypes

    libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    fd = libbpf.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME, on while the fd is open
    if fd < 0:
        raise OSError(ctypes.get_errno(), "bpf_enable_stats")
    try:
        before = set(perf_event_progs())
        prof = Profiler(kind, hz, tmp)
        try:
            prof.start()
            burn(burner, seconds, depth, ncpu)
            name = "do_sample" if kind == "bpfscope" else str(hz)  # bpftrace names it after the rate
            progs = [p for i, p in perf_event_progs().items() if i not in before and p.get("name") == name]
        finally:
            prof.stop()
    finally:
        os.close(fd)
    ns = sum(p.get("run_time_ns", 0) for p in progs)
    runs = sum(p.get("run_cnt", 0) for p in progs)
    return (ns / runs if runs else 0.0), runs


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hz", type=int, nargs="+", default=[99, 999])
    ap.add_argument("--depth", type=int, default=24)
    ap.add_argument("--skip", nargs="*", default=[], help="profilers to leave out (perf, bpftrace)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # a killed bench still stops its profiler (finally)
    if os.geteuid() != 0:
        print("bench/profile.py needs root", file=sys.stderr)
        return 2
    kinds = ["bpfscope"] + [k for k in ("perf", "bpftrace") if k not in args.skip and shutil.which(k)]
    missing = [k for k in ("perf", "bpftrace") if k not in kinds and k not in args.skip]
    if missing:
        print(f"note: {', '.join(missing)} not installed (scripts/install-deps.sh --bench)")
    ncpu = len(online_cpus())
    tmp = Path(tempfile.mkdtemp(prefix="bpfscope-bench-"))
    burner = build_burner(tmp)
    conds = [(k, hz) for hz in args.hz for k in kinds]
    ratios: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in conds}  # (wall, per CPU-s)
    own: dict[tuple[str, int], list[float]] = {c: [] for c in conds}  # profiler process CPU share
    base_rates: list[float] = []
    last_stats: dict[int, dict] = {}
    print(f"{ncpu} CPUs, burner depth {args.depth}, {args.seconds:g} s per run, {args.rounds} rounds;")
    print("each profiled run is paired with a baseline run just before it (ratio = profiled / baseline)")
    for r in range(args.rounds):
        for kind, hz in conds:
            b_wall, b_cpu = burn(burner, args.seconds, args.depth, ncpu)
            base_rates.append(b_wall)
            prof = Profiler(kind, hz, tmp)
            try:
                prof.start()
                p_wall, p_cpu = burn(burner, args.seconds, args.depth, ncpu)
            finally:
                prof.stop()
            ratios[(kind, hz)].append((p_wall / b_wall, p_cpu / b_cpu))
            own[(kind, hz)].append(prof.own_cpu / args.seconds)
            if prof.stats:
                last_stats[hz] = prof.stats
            print(f"  round {r + 1}: {kind:<9}{hz:>5} Hz  baseline {b_wall:>10,.0f} chunks/s -> {p_wall:>10,.0f}  "
                  f"ratio {p_wall / b_wall:.4f} (wall) {p_cpu / b_cpu:.4f} (per CPU-s)", flush=True)
    spread = (max(base_rates) - min(base_rates)) / statistics.median(base_rates) * 100
    print(f"\nbaseline throughput moved by {spread:.0f}% between runs (machine noise)")
    print("median of paired ratios (loss = 1 - ratio), [min..max]:")
    print(f"{'profiler':<10}{'Hz':>6}{'wall ratio':>12}{'loss':>8}{'range':>18}   {'CPU-s ratio':>12}{'loss':>8}"
          f"{'own process':>13}")
    med: dict[tuple[str, int], float] = {}
    for kind, hz in conds:
        w = [x for x, _ in ratios[(kind, hz)]]
        c = [y for _, y in ratios[(kind, hz)]]
        mw, mc = statistics.median(w), statistics.median(c)
        med[(kind, hz)] = mw
        oc = statistics.median(own[(kind, hz)]) * 100
        print(f"{kind:<10}{hz:>6}{mw:>12.4f}{(1 - mw) * 100:>7.2f}%{f'[{min(w):.3f}..{max(w):.3f}]':>18}   "
              f"{mc:>12.4f}{(1 - mc) * 100:>7.2f}%{oc:>11.2f}% CPU")
    for hz in args.hz:
        for other in ("perf", "bpftrace"):
            if other in kinds:
                print(f"bpfscope / {other} throughput at {hz} Hz: {med[('bpfscope', hz)] / med[(other, hz)]:.4f}")
    if shutil.which("bpftool"):
        print("\nBPF program run time per sample (kernel BPF stats), and that cost as a share of one CPU:")
        for hz in args.hz:
            for kind in [k for k in kinds if k != "perf"]:
                ns, runs = bpf_cost(kind, hz, tmp, burner, args.seconds, args.depth, ncpu)
                print(f"  {kind:<9}{hz:>5} Hz: {ns:>8,.0f} ns/sample over {runs:>6} samples = "
                      f"{ns * hz / 1e7:.4f}% of a CPU")
    for hz, st in sorted(last_stats.items()):
        secs = st.get("symbolize_seconds") or 0
        n = st.get("stacks", 0)
        print(f"\nbpfscope at {hz} Hz (last run): {st.get('total', 0)} samples, {n} distinct stacks, "
              f"collisions {st.get('stack_collisions', 0)}, unresolved frames {st.get('unresolved_ratio', 0):.1%} "
              f"({st.get('unresolved_ratio_weighted', 0):.1%} weighted by samples); "
              f"symbolized in {secs:.3f} s (cold caches) = {n / secs if secs else 0:,.0f} stacks/s")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
