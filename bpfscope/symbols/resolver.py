"""Symbolizer: stack addresses (from BPF stack maps) -> Frames.

    sym = Symbolizer()
    kframes = sym.kernel(kernel_addrs)          # Frame(kind="kernel")
    uframes = sym.user(pid, user_addrs)         # Frame(kind="user" | "jit" | "unknown")
    sym.unresolved_ratio()                      # for the run's Summary / StackCounts.stats

One Frame per address, in the order given (callers strip the zero padding of a stack
map entry first).  Nothing here raises for a process that has exited: addresses it can
no longer place become ``[unknown]`` frames; addresses inside a file with no symbol
there become ``libfoo.so+0x1234`` frames (kind "unknown", module and offset set).

Frame fields for user frames: module = path of the mapped file as the process sees it,
offset = file offset of the address in that file (what pprof mappings and
``addr2line -j``-style tools take), address = the runtime address.

Caches:
  * ELF files: one parse per file identity, shared by all Symbolizers of the process:
    keyed by (major, minor, inode) of the mapping, and by build-id so that one library
    seen in several containers (different inodes) is parsed once;
  * per pid: its executable mappings and a frame per address already seen; the
    mappings are re-read (at most once a second) when an address falls outside them
    (dlopen, new JIT code), and a changed start time means the pid was reused.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from bpfscope.results import Frame
from bpfscope.symbols.demangle import demangle as _demangle
from bpfscope.symbols.elf import DEBUG_DIRS, ElfSymbols, SymbolError, read_build_id
from bpfscope.symbols.kallsyms import KernelSymbols
from bpfscope.symbols.perfmap import PerfMap
from bpfscope.symbols.procmaps import (
    Mapping,
    ProcessMaps,
    candidate_paths,
    read_maps,
    same_file,
    start_time,
)

UNKNOWN = "[unknown]"
REFRESH_INTERVAL = 1.0  # seconds between re-reads of one pid's maps / perf map
NEGATIVE_TTL = 30.0  # seconds before retrying a file that could not be read
MAX_FRAMES_PER_PID = 1 << 16
MAX_KERNEL_FRAMES = 1 << 18

_RESOLVED_KINDS = frozenset(("kernel", "user", "jit"))


# ====================================================================== ELF cache
class ElfCache:
    """ElfSymbols by file identity, LRU-bounded, thread-safe."""

    def __init__(self, max_files: int = 1024, debug_dirs: tuple[str, ...] = DEBUG_DIRS):
        self.max_files = max_files
        self.debug_dirs = debug_dirs
        self._by_key: OrderedDict[tuple, ElfSymbols] = OrderedDict()
        self._by_build_id: dict[str, ElfSymbols] = {}
        self._failed: dict[tuple, float] = {}
        self._lock = threading.Lock()
        self.loads = 0  # files parsed

    def get(self, pid: int, m: Mapping) -> ElfSymbols | None:
        key = m.key
        with self._lock:
            elf = self._by_key.get(key)
            if elf is not None:
                self._by_key.move_to_end(key)
                return elf
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed < NEGATIVE_TTL:
                return None
        elf, bad_file = self._load(pid, m)
        with self._lock:
            if elf is None:
                # Remember a file that was read and is no usable ELF. A file that could not
                # be reached (its process exited first) is retried: the next process
                # mapping it may be alive.
                if bad_file:
                    self._failed[key] = time.monotonic()
                return None
            self._failed.pop(key, None)
            self._by_key[key] = elf
            if elf.build_id:
                self._by_build_id.setdefault(elf.build_id, elf)
            while len(self._by_key) > self.max_files:
                _, old = self._by_key.popitem(last=False)
                if old.build_id and self._by_build_id.get(old.build_id) is old:
                    del self._by_build_id[old.build_id]
        return elf

    def _load(self, pid: int, m: Mapping) -> tuple[ElfSymbols | None, bool]:
        """(symbols, False) or (None, True when a file was read but is no usable ELF)."""
        root = f"/proc/{pid}/root"
        bad_file = False
        for path in candidate_paths(pid, m):
            if not path.startswith("/proc/") and not same_file(path, m):
                continue  # host path, but not the inode the process maps
            if not os.path.exists(path):
                continue
            bid = read_build_id(path)
            if bid:
                with self._lock:
                    hit = self._by_build_id.get(bid)
                if hit is not None:
                    return hit, False
            try:
                elf = ElfSymbols.load(path, debug_dirs=self.debug_dirs, root=root, display_path=m.path)
            except OSError:
                continue
            except Exception:  # noqa: BLE001 - SymbolError; a malformed ELF must not end a run
                bad_file = True
                continue
            self.loads += 1
            return elf, False
        return None, bad_file

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()
            self._by_build_id.clear()
            self._failed.clear()


_shared_elf_cache = ElfCache()


def _vdso_symbols() -> ElfSymbols | None:
    """The vDSO image of this process (identical in every 64-bit process on this kernel)."""
    try:
        for m in read_maps(os.getpid()):
            if m.path == "[vdso]":
                with open("/proc/self/mem", "rb") as f:
                    f.seek(m.start)
                    data = f.read(m.end - m.start)
                return ElfSymbols.from_bytes(data, "[vdso]")
    except (OSError, SymbolError, ProcessLookupError, OverflowError):
        pass
    return None


_vdso_lock = threading.Lock()
_vdso: list[ElfSymbols | None] = []


def vdso_symbols() -> ElfSymbols | None:
    with _vdso_lock:
        if not _vdso:
            _vdso.append(_vdso_symbols())
        return _vdso[0]


# ====================================================================== per pid
class _Proc:
    __slots__ = (
        "pid",
        "maps",
        "start_time",
        "frames",
        "modules",
        "alive",
        "last_refresh",
        "perfmap",
        "perfmap_checked",
    )

    def __init__(self, pid: int):
        self.pid = pid
        self.maps: ProcessMaps | None = None
        self.start_time: int | None = None
        self.frames: dict[int, Frame] = {}
        # mapping start -> (mapping, ElfSymbols, bias): vaddr = addr - bias
        self.modules: dict[int, tuple[Mapping, ElfSymbols, int]] = {}
        self.alive = True
        self.last_refresh = 0.0
        self.perfmap: PerfMap | None = None
        self.perfmap_checked = 0.0

    def refresh(self) -> bool:
        """Re-read the maps; False when the process is gone (the old maps are kept)."""
        self.last_refresh = time.monotonic()
        if not self.alive:
            return False
        st = start_time(self.pid)
        try:
            maps = read_maps(self.pid)
        except (ProcessLookupError, PermissionError, OSError):
            self.alive = False
            return False
        if st is None or (not maps and self.maps is not None):
            self.alive = False  # exited between the reads, or a zombie: keep what we had
            return False
        if self.start_time is not None and st != self.start_time:
            # pid reused by another process: forget everything about the old one
            self.frames.clear()
            self.modules.clear()
            self.perfmap = None
            self.perfmap_checked = 0.0
        self.start_time = st
        self.maps = ProcessMaps(self.pid, maps, st)
        return True


# ==================================================================== Symbolizer
class Symbolizer:
    """Kernel and user stack symbolization with caches. Not thread-safe per instance
    (the ELF cache it uses is)."""

    def __init__(
        self,
        *,
        kernel_symbols: KernelSymbols | None = None,
        demangle: bool = True,
        debug_dirs: tuple[str, ...] | list[str] | None = None,
        max_pids: int = 4096,
        perf_maps: bool = True,
        elf_cache: ElfCache | None = None,
    ):
        self._ksyms = kernel_symbols
        self._kframes: dict[int, Frame] = {}
        self.demangle = demangle
        self.perf_maps = perf_maps
        self.max_pids = max_pids
        if elf_cache is not None:
            self.elf_cache = elf_cache
        elif debug_dirs is None:
            self.elf_cache = _shared_elf_cache
        else:
            self.elf_cache = ElfCache(debug_dirs=tuple(debug_dirs))
        self._procs: OrderedDict[int, _Proc] = OrderedDict()
        self.resolved = 0
        self.unresolved = 0

    # ----------------------------------------------------------------- counters
    def unresolved_ratio(self) -> float:
        total = self.resolved + self.unresolved
        return self.unresolved / total if total else 0.0

    def stats(self) -> dict[str, float | int]:
        return {
            "resolved": self.resolved,
            "unresolved": self.unresolved,
            "unresolved_ratio": round(self.unresolved_ratio(), 4),
        }

    def _count(self, frames: list[Frame]) -> list[Frame]:
        ok = sum(1 for f in frames if f.kind in _RESOLVED_KINDS)
        self.resolved += ok
        self.unresolved += len(frames) - ok
        return frames

    # ------------------------------------------------------------------- kernel
    @property
    def kernel_symbols(self) -> KernelSymbols:
        if self._ksyms is None:
            self._ksyms = KernelSymbols.shared()
        return self._ksyms

    def kernel(self, addrs: Iterable[int]) -> list[Frame]:
        """One Frame per kernel address (kind "kernel", or "unknown")."""
        cache = self._kframes
        out: list[Frame] = []
        resolve = None
        for a in addrs:
            f = cache.get(a)
            if f is None:
                if resolve is None:
                    resolve = self.kernel_symbols.resolve
                f = resolve(a)
                if len(cache) >= MAX_KERNEL_FRAMES:
                    cache.clear()
                cache[a] = f
            out.append(f)
        return self._count(out)

    def reload_kernel(self) -> None:
        """Re-read /proc/kallsyms (after modules or BPF programs were loaded)."""
        self._ksyms = KernelSymbols.reload_shared()
        self._kframes.clear()

    # --------------------------------------------------------------------- user
    def _proc(self, pid: int) -> _Proc:
        p = self._procs.get(pid)
        if p is not None:
            self._procs.move_to_end(pid)
            return p
        p = _Proc(pid)
        p.refresh()
        self._procs[pid] = p
        while len(self._procs) > self.max_pids:
            self._procs.popitem(last=False)
        return p

    def forget(self, pid: int) -> None:
        """Drop what is cached for a pid (call on its exit to let the pid be reused)."""
        self._procs.pop(pid, None)

    def clear(self) -> None:
        self._procs.clear()
        self._kframes.clear()

    def user(self, pid: int, addrs: Iterable[int]) -> list[Frame]:
        """One Frame per user address of process `pid`. Never raises for a dead pid."""
        p = self._proc(pid)
        cache = p.frames
        out: list[Frame] = []
        for a in addrs:
            f = cache.get(a)
            if f is None:
                try:
                    f, cacheable = self._resolve_user(p, a)
                except Exception:  # noqa: BLE001 - never fail a run over one address
                    f, cacheable = Frame(UNKNOWN, kind="unknown", address=a), False
                if cacheable:
                    if len(cache) >= MAX_FRAMES_PER_PID:
                        cache.clear()
                    cache[a] = f
            out.append(f)
        return self._count(out)

    def _name(self, name: str) -> str:
        return _demangle(name) if self.demangle else name

    def _resolve_user(self, p: _Proc, addr: int) -> tuple[Frame, bool]:
        """(frame, may be cached)."""
        m = p.maps.find(addr) if p.maps is not None else None
        if m is None and p.alive and time.monotonic() - p.last_refresh >= REFRESH_INTERVAL:
            if p.refresh() and p.maps is not None:
                m = p.maps.find(addr)
        if m is None:
            jit = self._jit(p, addr)
            if jit is not None:
                return jit, True
            return Frame(UNKNOWN, kind="unknown", address=addr), False

        mod = p.modules.get(m.start)
        if mod is not None and mod[0] is m:  # fast path: this mapping's file already placed
            _, elf, bias = mod
            hit = elf.lookup(addr - bias)
            off = addr - m.start + m.offset
            if hit is not None:
                return Frame(self._name(hit[0]), kind="user", module=m.path, offset=off, address=addr), True
            return Frame(
                f"{os.path.basename(m.path)}+0x{off:x}",
                kind="unknown",
                module=m.path,
                offset=off,
                address=addr,
            ), True

        if m.file_backed:
            off = m.file_offset(addr)
            elf = self.elf_cache.get(p.pid, m)
            if elf is not None:
                # one executable mapping = one PT_LOAD segment: a constant bias per mapping
                vaddr = elf.offset_to_vaddr(off)
                p.modules[m.start] = (m, elf, addr - (off if vaddr is None else vaddr))
                return self._resolve_user(p, addr)
            name = f"{os.path.basename(m.path)}+0x{off:x}"
            return Frame(name, kind="unknown", module=m.path, offset=off, address=addr), False

        off = addr - m.start
        if m.path == "[vdso]":
            vdso = vdso_symbols()
            if vdso is not None:
                vaddr = vdso.offset_to_vaddr(off)
                hit = vdso.lookup(off if vaddr is None else vaddr)
                if hit is not None:
                    return Frame(hit[0], kind="user", module="[vdso]", offset=off, address=addr), True
            return Frame(f"[vdso]+0x{off:x}", kind="unknown", module="[vdso]", offset=off, address=addr), True
        if m.path == "[vsyscall]":
            return Frame("[vsyscall]", kind="user", module="[vsyscall]", offset=off, address=addr), True
        jit = self._jit(p, addr)
        if jit is not None:
            return jit, True
        return Frame(UNKNOWN, kind="unknown", module=m.path or "[anon]", offset=off, address=addr), False

    def _jit(self, p: _Proc, addr: int) -> Frame | None:
        if not self.perf_maps:
            return None
        now = time.monotonic()
        if p.perfmap is None:
            if now - p.perfmap_checked < REFRESH_INTERVAL and p.perfmap_checked:
                return None
            p.perfmap_checked = now
            p.perfmap = PerfMap.for_pid(p.pid)
            if p.perfmap is None:
                return None
        hit = p.perfmap.lookup(addr)
        if hit is None and now - p.perfmap_checked >= REFRESH_INTERVAL:
            p.perfmap_checked = now
            try:
                if p.perfmap.refresh():
                    hit = p.perfmap.lookup(addr)
            except OSError:
                pass
        if hit is None:
            return None
        name, start = hit
        return Frame(self._name(name), kind="jit", module="[jit]", offset=addr - start, address=addr)
