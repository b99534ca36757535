"""Helpers for the agent tests: a real `bpfscope serve` on a free loopback port, BPF programs
owned by a process (so concurrent test runs by others never confuse the leak checks), SSE."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bpfscope.bpf.object import loaded_program_ids
from tests.helpers import SLOW

ROOT = Path(__file__).resolve().parent.parent


def owned_program_ids(pid: int | str = "self") -> set[int]:
    """Ids of the BPF programs a process holds through its fds (programs and links)."""
    ids: set[int] = set()
    base = f"/proc/{pid}/fdinfo"
    try:
        fds = os.listdir(base)
    except FileNotFoundError:
        return ids
    for fd in fds:
        try:
            with open(f"{base}/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def wait_gone(ids: set[int], timeout: float = 5.0) -> set[int]:
    """Wait until none of `ids` is loaded in the kernel; return those still there."""
    end = time.monotonic() + timeout * SLOW
    left = ids & loaded_program_ids()
    while left and time.monotonic() < end:
        time.sleep(0.05)
        left = ids & loaded_program_ids()
    return left


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """`bpfscope serve` as a subprocess on a free loopback port (real uvicorn)."""

    def __init__(self, *args: str, port: int | None = None, host: str = "127.0.0.1", token: str | None = None,
                 scheme: str = "http", env: dict | None = None, log: Path | None = None,
                 max_memory: int | None = None):
        self.port = port or free_port()
        self.host = host
        self.token = token
        self.scheme = scheme
        self.args = ["--listen", f"{host}:{self.port}", *args]
        self.log_path = log
        self._log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "bpfscope", "serve", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT if log else subprocess.PIPE,
                                     env=e, cwd=ROOT, preexec_fn=_address_space_limit(max_memory))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kw) -> httpx.Client:
        kw.setdefault("timeout", 30.0 * SLOW)
        return httpx.Client(base_url=self.url, headers=self.headers(), **kw)

    def ready(self, timeout: float = 30.0, **client_kw) -> Agent:
        timeout *= SLOW  # the kernel-matrix VM (qemu without KVM) starts Python 10x slower
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.output()}")
            try:
                with httpx.Client(base_url=self.url, timeout=1.0, **client_kw) as c:
                    if c.get("/healthz").status_code == 200:
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"agent not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        if self.log_path:
            return self.log_path.read_text(errors="replace")
        if self.proc.poll() is not None and self.proc.stderr:
            return self.proc.stderr.read().decode(errors="replace")
        return ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _address_space_limit(limit: int | None):  # noqa: ANN202
    """preexec_fn bounding the agent's address space: a runaway run gets MemoryError, the machine
    (shared with other test runs) keeps its memory."""
    if not limit:
        return None

    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def sse_events(resp: httpx.Response) -> Iterator[dict]:
    """Parse a text/event-stream response: dicts with event, id, data (JSON-decoded)."""
    ev: dict = {}
    for line in resp.iter_lines():
        if not line:
            if "data" in ev:  # as EventSource: a block without data is not dispatched
                ev.setdefault("event", "message")
                ev["data"] = json.loads(ev["data"])
                yield ev
            ev = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            ev["data"] = ev["data"] + "\n" + value if "data" in ev else value
        elif field in ("event", "id", "retry"):
            ev[field] = value


def wait_state(client: httpx.Client, run_id: str, states: tuple[str, ...], timeout: float = 30.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        st = client.get(f"/api/v1/runs/{run_id}").json()
        if st["state"] in states or time.monotonic() > end:
            return st
        time.sleep(0.05)


def wait_attached(client: httpx.Client, run_id: str, timeout: float = 20.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        st = client.get(f"/api/v1/runs/{run_id}").json()
        if st.get("attached") or st["state"] not in ("pending", "running") or time.monotonic() > end:
            return st
        time.sleep(0.02)
