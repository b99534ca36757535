"""JIT symbol maps: /tmp/perf-PID.map ("START SIZE name" per line, hex).

Written by Python 3.12+ run with ``-X perf``, node ``--perf-basic-prof``, the JVM with
perf-map-agent, LuaJIT, .NET (DOTNET_PerfMapEnabled)...  A runtime appends to its map
as it compiles; a later line for the same start address replaces an earlier one.

A process in a container writes /tmp/perf-<its own pid>.map inside its own root, so
the file is looked for as /proc/PID/root/tmp/perf-NSPID.map first (NSpid from
/proc/PID/status), then as /tmp/perf-PID.map on the host.
"""

from __future__ import annotations

import os
from bisect import bisect_right

from bpfscope.symbols.procmaps import ns_pid


def perf_map_paths(pid: int) -> list[str]:
    nspid = ns_pid(pid)
    paths = [f"/proc/{pid}/root/tmp/perf-{nspid}.map"]
    host = f"/tmp/perf-{pid}.map"
    if host not in paths:
        paths.append(host)
    return paths


class PerfMap:
    """Sorted JIT symbols of one process. ``lookup(addr)`` -> (name, start) or None."""

    __slots__ = ("path", "starts", "ends", "names", "_stamp")

    def __init__(self, path: str = ""):
        self.path = path
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.names: list[str] = []
        self._stamp: tuple[int, int, int] | None = None

    @classmethod
    def parse(cls, data: bytes, path: str = "") -> PerfMap:
        self = cls(path)
        self._set(data)
        return self

    @classmethod
    def load(cls, path: str) -> PerfMap:
        self = cls(path)
        self.refresh()
        return self

    @classmethod
    def for_pid(cls, pid: int) -> PerfMap | None:
        """The perf map of a process, or None when it has none."""
        for path in perf_map_paths(pid):
            if os.path.isfile(path):
                try:
                    return cls.load(path)
                except OSError:
                    continue
        return None

    def _set(self, data: bytes) -> None:
        entries: dict[int, tuple[int, str]] = {}
        for line in data.split(b"\n"):
            parts = line.split(None, 2)
            if len(parts) < 3:
                continue
            try:
                start = int(parts[0], 16)
                size = int(parts[1], 16)
            except ValueError:
                continue
            entries[start] = (start + size, parts[2].strip().decode("utf-8", "replace"))
        starts = sorted(entries)
        self.starts = starts
        self.ends = [entries[s][0] for s in starts]
        self.names = [entries[s][1] for s in starts]

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last read; True when it was re-read."""
        if not self.path:
            return False
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        with open(self.path, "rb") as f:
            data = f.read()
        self._set(data)
        self._stamp = stamp
        return True

    def __len__(self) -> int:
        return len(self.starts)

    def lookup(self, addr: int) -> tuple[str, int] | None:
        i = bisect_right(self.starts, addr) - 1
        # JIT code may be re-emitted over older, larger entries: look back a little
        for j in range(i, max(i - 4, -1), -1):
            if self.starts[j] <= addr < self.ends[j]:
                return self.names[j], self.starts[j]
        return None
