"""Cost of a cluster-wide profile: `bpfscope cluster profile` over 1 and 3 agents (`bpfscope serve`
on loopback, each its own "node" with its own token) next to the same one-node profile run locally
by `bpfscope profile` and by bpftrace, in one run.

Each measurement: wall time from starting the command to having the folded stacks (all nodes merged
for the cluster runs), for a 1-second profile at 49 Hz of every CPU. The difference to the local
run is what the fan-out adds (HTTP, JSON, merge, CLI start); the 3-node run shows it does not grow
with the number of nodes (they run at the same time). Medians of BENCH_RUNS runs, and ratios.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.agent_helpers import Agent  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
BPFSCOPE = str(ROOT / ".venv/bin/bpfscope")
SECONDS = 1


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dt = time.monotonic() - t0
    if r.returncode != 0 or not r.stdout.strip():
        raise SystemExit(f"{cmd[:3]} failed ({r.returncode}): {r.stderr[-500:]}")
    return dt


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bpfscope-bench-cluster-"))
    agents = []
    try:
        for i in range(3):
            tf = tmp / f"n{i}.token"
            tf.write_text(secrets.token_urlsafe(24) + "\n")
            tf.chmod(0o600)
            agents.append((f"node-{i}", Agent("--collectors", "execs", "--token-file", str(tf)), tf))
        for _, a, _ in agents:
            a.ready(timeout=60)

        def cluster_cmd(n: int) -> list[str]:
            sel = agents[:n]
            cmd = [BPFSCOPE, "cluster", "--agents", ",".join(f"{name}={a.url}" for name, a, _ in sel)]
            for name, _, tf in sel:
                cmd += ["--token-file", f"{name}={tf}"]
            return [*cmd, "profile", "-F", "49", "-d", str(SECONDS), "-f", "--node-frame"]

        cases = {
            "bpfscope profile (local)": [BPFSCOPE, "profile", "-F", "49", "-d", str(SECONDS), "-f"],
            "bpfscope cluster, 1 node": cluster_cmd(1),
            "bpfscope cluster, 3 nodes": cluster_cmd(3),
        }
        if shutil.which("bpftrace"):
            cases["bpftrace profile:hz:49 (local)"] = [
                "bpftrace", "-e", f"profile:hz:49 {{ @[kstack, ustack, comm] = count(); }} "
                                  f"interval:s:{SECONDS} {{ exit(); }}"]
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(RUNS):  # alternate, so load changes hit every case alike
            for name, cmd in cases.items():
                times[name].append(timed(cmd))
        base = statistics.median(times["bpfscope profile (local)"])
        print(f"wall time to folded stacks, {SECONDS} s profile at 49 Hz, median of {RUNS} "
              f"(load average {os.getloadavg()[0]:.1f}):")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:<32} {med:6.2f} s   x{med / base:4.2f} of the local bpfscope run   "
                  f"(overhead {med - SECONDS:5.2f} s)")
        one, three = (statistics.median(times[f"bpfscope cluster, {n} node{'s' if n > 1 else ''}"]) for n in (1, 3))
        print(f"  3 nodes / 1 node: x{three / one:.2f}")
    finally:
        for _, a, _ in agents:
            a.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
