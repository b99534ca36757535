"""Run bpfscope as a user would (a subprocess) and wait until its probes are attached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Inside the kernel-matrix VM (qemu without KVM) everything runs 10-100x slower.
IN_VM = os.environ.get("BPFSCOPE_IN_VM") == "1"
SLOW = 12.0 if IN_VM else 1.0


class ToolProcess:
    """`bpfscope ARGS` in the background; ready() waits for 'probes attached'."""

    def __init__(self, *args: str, env: dict | None = None):
        fd, self.ready_file = tempfile.mkstemp(prefix="bpfscope-ready-")
        os.close(fd)
        os.unlink(self.ready_file)
        e = dict(os.environ, BPFSCOPE_READY_FILE=self.ready_file, PYTHONUNBUFFERED="1", **(env or {}))
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "bpfscope", *args],  # SIGABRT: Python stacks
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=ROOT,
        )
        self.stdout = ""
        self.stderr = ""

    def ready(self, timeout: float = 15.0) -> ToolProcess:
        timeout *= SLOW
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(self.ready_file):
                return self
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"bpfscope {' '.join(self.args)} exited {self.proc.returncode}: {err.decode()}")
            time.sleep(0.01)
        self.proc.kill()
        raise AssertionError(f"bpfscope {' '.join(self.args)} not ready after {timeout}s")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> float:
        """Send sig, wait for exit, return seconds it took."""
        timeout *= SLOW
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"bpfscope {' '.join(self.args)} did not exit {timeout:g}s after signal {sig}\n"
                                 + stuck_report(self.proc)) from None
        took = time.monotonic() - t0
        self.stdout, self.stderr = out.decode(), err.decode()
        if os.path.exists(self.ready_file):
            os.unlink(self.ready_file)
        return took

    def wait(self, timeout: float = 60.0) -> int:
        timeout *= SLOW
        out, err = self.proc.communicate(timeout=timeout)
        self.stdout, self.stderr = out.decode(), err.decode()
        if os.path.exists(self.ready_file):
            os.unlink(self.ready_file)
        return self.proc.returncode

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def kernel_stacks(pid: int) -> str:
    """Each thread's state, wait channel and kernel stack: where a process that does not move is."""
    out = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError as e:
        return f"(no /proc/{pid}: {e})"
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            stat = Path(f"{base}/stat").read_text()
            comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
            wchan = Path(f"{base}/wchan").read_text()
            stack = Path(f"{base}/stack").read_text()
        except OSError as e:
            out.append(f"thread {tid}: {e}")
            continue
        out.append(f"thread {tid} ({comm}) state {state} wchan {wchan}\n{stack}")
    return "\n".join(out)


def stuck_report(proc: subprocess.Popen) -> str:
    """For a process that hangs: its kernel stacks, then (SIGABRT under -X faulthandler) its
    Python threads' stacks; the process is gone afterwards."""
    report = "kernel stacks:\n" + kernel_stacks(proc.pid)
    proc.send_signal(signal.SIGABRT)
    try:
        _, err = proc.communicate(timeout=10 * SLOW)
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        report += "\nstderr (Python stacks):\n" + (err or "")[-6000:]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        report += "\n(no exit on SIGABRT either: killed)"
    return report


def run_cli(*args: str, timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bpfscope", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw
    )


def build_c(src: str, out: Path, *flags: str) -> Path:
    """Compile a small C test program with gcc (frame pointers kept for stack tests)."""
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-o", str(out), str(c), *flags], check=True)
    return out


def programs_left(ids: set[int], timeout: float = 3.0) -> set[int]:
    """Which of these BPF program ids are still loaded. The kernel frees a program shortly
    after its last reference goes (deferred work), so give it a moment before calling it a leak."""
    from bpfscope.bpf.object import loaded_program_ids

    end = time.monotonic() + timeout * SLOW
    while True:
        left = set(ids) & loaded_program_ids()
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.05)
