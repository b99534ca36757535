"""/proc/PID/maps: the executable mappings of a process, and how to open their files.

Files are opened through /proc/PID/root/<path>, so that a binary inside a container
(another mount namespace) is the one read; a mapping whose file was deleted or
replaced since ("(deleted)") is read through /proc/PID/map_files/<start>-<end>, which
still reaches the mapped inode.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from dataclasses import dataclass

DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int  # file offset of `start`
    dev: tuple[int, int]  # (major, minor)
    inode: int
    path: str  # as the process sees it; "" for anonymous memory, "[vdso]" etc.
    deleted: bool = False

    @property
    def executable(self) -> bool:
        return "x" in self.perms

    @property
    def anonymous(self) -> bool:
        """No file behind it (JIT code, [vdso], [vsyscall], [stack]...)."""
        return self.inode == 0 or not self.path.startswith("/")

    @property
    def file_backed(self) -> bool:
        return not self.anonymous

    def file_offset(self, addr: int) -> int:
        return addr - self.start + self.offset

    @property
    def key(self) -> tuple[int, int, int]:
        """File identity from the maps line itself: (major, minor, inode)."""
        return (self.dev[0], self.dev[1], self.inode)


def parse_maps(data: bytes, *, exec_only: bool = True) -> list[Mapping]:
    """Parse the text of a /proc/PID/maps file (sorted by start, as the kernel lists it)."""
    out: list[Mapping] = []
    for line in data.split(b"\n"):
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        perms = parts[1].decode()
        if exec_only and "x" not in perms:
            continue
        lo, _, hi = parts[0].partition(b"-")
        major, _, minor = parts[3].partition(b":")
        path = parts[5].decode("utf-8", "surrogateescape").strip() if len(parts) > 5 else ""
        deleted = path.endswith(DELETED)
        if deleted:
            path = path[: -len(DELETED)]
        out.append(
            Mapping(
                start=int(lo, 16),
                end=int(hi, 16),
                perms=perms,
                offset=int(parts[2], 16),
                dev=(int(major, 16), int(minor or b"0", 16)),
                inode=int(parts[4]),
                path=path,
                deleted=deleted,
            )
        )
    return out


def read_maps(pid: int, *, exec_only: bool = True) -> list[Mapping]:
    """Mappings of a live process; raises ProcessLookupError when it is gone."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessLookupError(pid) from e
    # a zombie (or a kernel thread) has an empty maps file
    return parse_maps(data, exec_only=exec_only)


class ProcessMaps:
    """Executable mappings of one process, searchable by address."""

    __slots__ = ("pid", "mappings", "_starts", "start_time")

    def __init__(self, pid: int, mappings: list[Mapping], start_time: int | None = None):
        self.pid = pid
        self.mappings = sorted(mappings, key=lambda m: m.start)
        self._starts = [m.start for m in self.mappings]
        self.start_time = start_time

    @classmethod
    def read(cls, pid: int) -> ProcessMaps:
        st = start_time(pid)
        return cls(pid, read_maps(pid), st)

    def find(self, addr: int) -> Mapping | None:
        i = bisect_right(self._starts, addr) - 1
        if i >= 0:
            m = self.mappings[i]
            if addr < m.end:
                return m
        return None

    def __len__(self) -> int:
        return len(self.mappings)


def open_path(pid: int, m: Mapping) -> str:
    """Path under which this process's mapped file can be opened from here."""
    if m.deleted:
        return f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
    return f"/proc/{pid}/root{m.path}"


def candidate_paths(pid: int, m: Mapping) -> list[str]:
    """Paths to try, in order, for the file of a mapping: through the process's root (or
    map_files when deleted), map_files, then the host path if it is the same inode."""
    cands = [open_path(pid, m)]
    mf = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
    if mf not in cands:
        cands.append(mf)
    if not m.deleted and m.path.startswith("/"):
        cands.append(m.path)
    return cands


def same_file(path: str, m: Mapping) -> bool:
    """Does `path` (on this host) hold the inode the mapping shows?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_ino == m.inode and (os.major(st.st_dev), os.minor(st.st_dev)) == m.dev


def start_time(pid: int) -> int | None:
    """Process start time (clock ticks after boot): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: fields start after the last ')'
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def ns_pid(pid: int) -> int:
    """The pid as the process's own (innermost) pid namespace numbers it (NSpid)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return pid
