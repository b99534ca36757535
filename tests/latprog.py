"""The C program behind the latency and rate tools' tests (tests/cprogs/latprog.c)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import ROOT, ToolProcess, build_c, stuck_report

LATPROG_SRC = ROOT / "tests" / "cprogs" / "latprog.c"


def build_latprog(tmp_path_factory) -> str:  # noqa: ANN001
    out: Path = tmp_path_factory.mktemp("latprog") / "latprog"
    return str(build_c(LATPROG_SRC.read_text(), out))


_spawned: list[subprocess.Popen] = []


class Tool(ToolProcess):
    """ToolProcess that reap_all() kills if a failing test left it running."""

    def __init__(self, *args: str, env: dict | None = None):
        super().__init__(*args, env=env)
        _spawned.append(self.proc)


def reap_all() -> None:
    """Kill whatever a test started and did not stop (a failed assertion before stop())."""
    while _spawned:
        p = _spawned.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


class Child:
    """latprog started and waiting (it printed "ready"); go() starts the work;
    finish() -> (calls done, {usec log2 slot: count} it measured itself)."""

    def __init__(self, exe: str, *args: object):
        self.proc = subprocess.Popen([exe, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        _spawned.append(self.proc)
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), line
        self.pid = self.proc.pid

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 120) -> tuple[int, dict[int, int]]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"latprog did not finish in {timeout}s\n" + stuck_report(self.proc)) from None
        assert self.proc.returncode == 0, out
        done = int(re.search(r"^done (\d+)", out, re.M).group(1))
        m = re.search(r"^slots(.*)$", out, re.M)
        slots = {int(a): int(b) for a, b in (p.split(":") for p in m.group(1).split())} if m else {}
        return done, slots

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run_many(cases: list[tuple[list[str], str]], timeout: float = 120) -> list[str]:
    """Run `bpfscope ARGS` for every case at once; return what failed (bad exit, needle not in
    stderr, traceback, more than one line of error): one clear line each."""
    import sys

    procs = [(args, needle, subprocess.Popen([sys.executable, "-m", "bpfscope", *args], cwd=ROOT, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE))
             for args, needle in cases]
    problems = []
    for args, needle, p in procs:
        _, err = p.communicate(timeout=timeout)
        one_line = err.strip().count("\n") == 0 or "usage:" in err
        if p.returncode == 0 or needle not in err or "Traceback" in err or not one_line:
            problems.append(f"{args}: exit {p.returncode}, stderr {err!r} (wanted {needle!r})")
    return problems
