"""Test helpers for per-cgroup network accounting: cgroups that mimic pods, and peer processes
inside them that exchange a known number of bytes over TCP.

A peer is moved into its cgroup (and optionally a network namespace) before it creates any
socket: a socket is charged to the cgroup of the task that created it, and accepted sockets to
the listener's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from bpfscope.k8s.cgroups import cgroup2_mount, fs_path

# IPv4 (20) + TCP (20) + timestamp option (12): every segment of an established Linux TCP
# connection; SYN and SYN-ACK carry 8 more (mss, sackOK, wscale).
TCP_IPV4_HEADER = 52

PEER_CODE = r"""
import socket, sys, threading
sys.stdin.readline()  # moved into its cgroup: go
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 0))
srv.listen(16)
print("port", srv.getsockname()[1], flush=True)
lock = threading.Lock()
def serve(c):
    n = 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        n += len(d)
    c.close()
    with lock:
        print("got", n, flush=True)
def accept():
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
buf = b"x" * 65536
for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
        break
    if cmd[0] == "send":
        host, port, n = cmd[1], int(cmd[2]), int(cmd[3])
        s = socket.create_connection((host, port))
        left = n
        while left:
            left -= s.send(buf[: min(left, len(buf))])
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
        s.close()
        # struct tcp_info (UAPI): tcpi_bytes_retrans is the __u64 at offset 208
        retrans = int.from_bytes(info[208:216], "little") if len(info) >= 216 else 0
        with lock:
            print("sent", n, retrans, flush=True)
"""


class Peer:
    """A python child in a cgroup (and netns): listens on bind_host, sends on request."""

    def __init__(self, cgroup_fs: str, bind_host: str = "127.0.0.1", netns: str | None = None):
        cmd = [sys.executable, "-c", PEER_CODE, bind_host]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]  # ip execs python: same pid
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._pending: list[list[str]] = []
        with open(os.path.join(cgroup_fs, "cgroup.procs"), "w") as f:
            f.write(str(self.proc.pid))
        self._cmd("go")
        self.port = int(self.expect("port"))

    def _cmd(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str, timeout: float = 30.0) -> str:
        """The value of the next line starting with `word` (other lines are kept for later)."""
        return self.expect_all(word, timeout)[0]

    def expect_all(self, word: str, timeout: float = 30.0) -> list[str]:
        """The values of the next line starting with `word` (other lines are kept for later)."""
        assert self.proc.stdout is not None
        for i, parts in enumerate(self._pending):
            if parts[0] == word:
                del self._pending[i]
                return parts[1:]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"peer {self.proc.pid} exited (rc={self.proc.poll()}) waiting for {word!r}")
            parts = line.split()
            if not parts:
                continue
            if parts[0] == word:
                return parts[1:]
            self._pending.append(parts)
        raise AssertionError(f"peer {self.proc.pid}: no {word!r} within {timeout}s")

    def send(self, host: str, port: int, n: int) -> None:
        self._cmd(f"send {host} {port} {n}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._cmd("quit")
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def exchange(a: Peer, b: Peer, n_ab: int, n_ba: int, host_a: str = "127.0.0.1",
             host_b: str = "127.0.0.1") -> tuple[int, int]:
    """a sends n_ab bytes to b's server while b sends n_ba to a's; both servers confirm the count.

    Returns the bytes each sender retransmitted (a->b, b->a): those crossed the wire twice."""
    a.send(host_b, b.port, n_ab)
    b.send(host_a, a.port, n_ba)
    sent_a, sent_b = a.expect_all("sent"), b.expect_all("sent")
    assert (int(sent_a[0]), int(sent_b[0])) == (n_ab, n_ba)
    # each server prints what it received (order with the "sent" lines may vary)
    assert (int(a.expect("got")), int(b.expect("got"))) == (n_ba, n_ab)
    return int(sent_a[1]), int(sent_b[1])


class PodCgroups:
    """cgroups under the v2 mount, below one unique top directory; removed afterwards."""

    def __init__(self, prefix: str = "bpfscope-cgnet"):
        self.mount = cgroup2_mount()
        self.top = f"/{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.makedirs(fs_path(self.top, self.mount))
        self.peers: list[Peer] = []

    def make(self, rel: str) -> str:
        """cgroup path (relative to the mount) of a new cgroup top/rel."""
        cgpath = self.top + "/" + rel.strip("/")
        os.makedirs(fs_path(cgpath, self.mount), exist_ok=True)
        return cgpath

    def fs(self, cgpath: str) -> str:
        return fs_path(cgpath, self.mount)

    def peer(self, cgpath: str, bind_host: str = "127.0.0.1", netns: str | None = None) -> Peer:
        p = Peer(self.fs(cgpath), bind_host, netns)
        self.peers.append(p)
        return p

    def remove(self, cgpath: str) -> None:
        """rmdir a cgroup (and what is below it), waiting for exiting tasks to leave."""
        top = self.fs(cgpath)
        dirs = [d for d, _, _ in os.walk(top)]
        for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
            for _ in range(250):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while an exiting task leaves the cgroup
                    time.sleep(0.02)

    def cleanup(self) -> None:
        for p in self.peers:
            p.close()
        self.remove(self.top)
