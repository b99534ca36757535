"""Real terminals for tests: pty pairs, and interactive shells typed into through the master."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import tempfile
import termios
import threading
import time


class _Drain:
    """Reads a pty master in the background (a full pty blocks its writers) and keeps the bytes."""

    def __init__(self, fd: int):
        self.fd = fd
        self.data = bytearray()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO once the slave side is gone, EBADF once closed
                chunk = b""
            with self.cond:
                if chunk:
                    self.data += chunk
                self.cond.notify_all()
            if not chunk:
                return

    def wait_for(self, pattern: bytes | re.Pattern, timeout: float = 60.0, start: int = 0) -> int:
        """Wait until pattern shows up after offset `start`; return the offset just past it."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                if isinstance(pattern, bytes):
                    i = self.data.find(pattern, start)
                    if i >= 0:
                        return i + len(pattern)
                else:
                    m = pattern.search(self.data, start)
                    if m:
                        return m.end()
                left = end - time.monotonic()
                if left <= 0 or not self.thread.is_alive():
                    raise AssertionError(f"{pattern!r} not seen on the terminal; got {bytes(self.data[-400:])!r}")
                self.cond.wait(min(left, 0.1))


class PtyPair:
    """A pty pair with nobody on it: the test writes to the slave, the master is drained."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.out = _Drain(self.master)

    def write(self, data: bytes) -> None:
        os.write(self.slave, data)

    def close(self) -> None:
        for fd in (self.slave, self.master):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_ctty() -> None:
    """In the child, after setsid: take stdin (the pty slave) as the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyShell:
    """An interactive shell on a new pty (session leader, pty as controlling tty), as a terminal
    emulator or sshd starts one. Type with send()/run(); the master side is drained."""

    PROMPT = "PS1-READY$ "

    def __init__(self, argv: tuple[str, ...] = ("/bin/bash", "--norc", "--noprofile", "-i"),
                 cgroup_procs: str | None = None, env: dict[str, str] | None = None, setsid: bool = True):
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        self.home = tempfile.mkdtemp(prefix="bpfscope-pty-")
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": self.home, "TERM": "dumb", "LANG": "C.UTF-8",
             "PS1": self.PROMPT, "HISTFILE": "/dev/null", "INPUTRC": "/dev/null"}
        e.update(env or {})

        def child_setup() -> None:
            if cgroup_procs:  # join the cgroup before exec, so the shell starts in it
                with open(cgroup_procs, "w") as f:
                    f.write("0")
            if setsid:
                _make_ctty()

        self.proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, env=e, cwd=self.home,
                                     start_new_session=setsid, preexec_fn=child_setup, close_fds=True)
        os.close(slave)
        self.pid = self.proc.pid
        self.out = _Drain(self.master)
        self._mark = 0

    def wait_prompt(self, timeout: float = 60.0) -> None:
        self._mark = self.out.wait_for(self.PROMPT.encode(), timeout, self._mark)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def run(self, command: str, expect: str | None = None, timeout: float = 60.0) -> None:
        """Type a command line, wait for `expect` (if any) and the next prompt."""
        self.send(command + "\n")
        if expect is not None:
            self._mark = self.out.wait_for(expect.encode(), timeout, self._mark)
        self.wait_prompt(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit\n")
                self.proc.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
        try:
            os.close(self.master)
        except OSError:
            pass
        try:
            os.rmdir(self.home)
        except OSError:
            pass

    def __enter__(self) -> PtyShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds open (from /proc/PID/fdinfo): unlike names, these
    are not confused with another test run's programs loaded at the same time."""
    ids: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids
