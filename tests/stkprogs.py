"""Test programs of the stack tools (tests/cprogs/stk*.c): built once per session, run as
child processes that tell when they are ready, and parsers for what the tools print."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

CPROGS = Path(__file__).parent / "cprogs"
CFLAGS = ("-O1", "-g", "-fno-omit-frame-pointer", "-Wall")
READY_S = 60.0  # start-up of a tool can take long when other test runs load the machine
STOP_S = 180.0  # and so can its symbolization after the run (kallsyms, ELF files)
_built: dict[str, Path] = {}
_dir: Path | None = None


def build(name: str) -> Path:
    """tests/cprogs/<name>.c compiled with frame pointers (cached for the session)."""
    global _dir
    if name not in _built:
        if _dir is None:
            _dir = Path(tempfile.mkdtemp(prefix="bpfscope-stk-"))
            atexit.register(shutil.rmtree, _dir, True)
        out = _dir / name
        subprocess.run(["gcc", *CFLAGS, "-o", str(out), str(CPROGS / f"{name}.c")], check=True)
        _built[name] = out
    return _built[name]


class Prog:
    """A test program; waits until it printed "ready"."""

    def __init__(self, name: str, *args: str):
        self.path = build(name)
        self.proc = subprocess.Popen(
            [str(self.path), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"{name} said {line!r}"

    def send(self, text: str = "go\n") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def expect(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Prog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_cpu(pid: int, seconds: float, timeout: float = 60.0) -> float:
    """Wait until the process has used `seconds` more CPU time (a loaded machine gives it less
    CPU per wall second: the number of samples a profiler takes follows CPU time, not wall time)."""
    start = cpu_seconds(pid)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        used = cpu_seconds(pid) - start
        if used >= seconds:
            return used
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} got only {cpu_seconds(pid) - start:.2f} s of CPU in {timeout:g} s")


# ------------------------------------------------------------------ output parsers
def parse_text_stacks(text: str) -> list[tuple[list[str], str, int]]:
    """BCC's multi-line stack listing -> [(frames leaf first, comm line, count)]."""
    out = []
    frames: list[str] = []
    comm = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("        ") and line.strip().isdigit():
            out.append((frames, comm, int(line.strip())))
            frames, comm = [], ""
        elif line.startswith("    -  "):
            comm = line.strip()[1:].strip()
        elif line.startswith("    "):
            frames.append(line.strip())
    return out


def svg_frames(svg: str) -> list[tuple[str, int, str]]:
    """(name, count, title) of each drawn frame of one of our SVG flame graphs."""
    ns = "{http://www.w3.org/2000/svg}"
    root = ET.fromstring(svg)
    group = next(g for g in root.iter(ns + "g") if g.get("id") == "frames")
    out = []
    for g in group.findall(ns + "g"):
        title = g.find(ns + "title").text or ""
        name = re.sub(r" \([^()]*\)$", "", title)
        out.append((name, int(g.get("data-n")), title))
    return out


def total_with(stacks: dict[tuple[str, ...], int], pred) -> int:
    """Sum of counts of stacks for which pred(frames) holds."""
    return sum(n for st, n in stacks.items() if pred(st))
