"""Where a uprobe goes: binary and library paths, and function names to file offsets.

A target is written as BCC writes it: a path (``/usr/bin/bash``), a library short name
(``c`` for libc, ``ssl`` for libssl: through the process's own mappings with a PID, else
``ldconfig -p`` and the usual library directories) or a program on $PATH.  With a PID whose
root differs from ours (a container), paths are reached through /proc/PID/root.

Function patterns are exact names, globs or (regex=True) regular expressions matched from the
start as BCC's -r does; aliases at one address (read, __read, __libc_read) are attached once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache

from ..errors import UsageError

LIB_DIRS = (
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
    "/usr/local/lib",
)
_GLOB_CHARS = set("*?[")
_ELF_MAGIC = b"\x7fELF"


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == _ELF_MAGIC
    except OSError:
        return False


def _proc_root(pid: int) -> str:
    """'' when the process sees our root, else /proc/PID/root (a container)."""
    root = f"/proc/{pid}/root"
    try:
        if os.stat(root) == os.stat("/"):
            return ""
    except OSError as e:
        raise UsageError(f"process {pid}: {e.strerror}") from None
    return root


def _lib_name_re(name: str) -> re.Pattern[str]:
    """lib<name>.so, lib<name>.so.6, lib<name>-2.31.so (not lib<name>foo.so)."""
    return re.compile(rf"lib{re.escape(name)}(?:\.so(?:\.[0-9.]+)?|-[0-9.]+\.so)$")


def _from_maps(name: str, pid: int) -> str | None:
    rx = _lib_name_re(name)
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"process {pid}: {e.strerror}") from None
    exe = None
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        path = parts[5].removesuffix(" (deleted)")
        base = os.path.basename(path)
        if rx.match(base):
            return path
        if base == name and exe is None:
            exe = path
    return exe


@lru_cache(maxsize=1)
def _ldconfig_cache() -> list[tuple[str, str, str]]:
    """(soname, flags, path) rows of `ldconfig -p` (fixed arguments; empty when unavailable)."""
    exe = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s+(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)$", line)
        if m:
            rows.append((m.group(1), m.group(2), m.group(3)))
    return rows


def find_library(name: str) -> str | None:
    """Path of library `name` (``c`` -> /lib/x86_64-linux-gnu/libc.so.6) on this system."""
    rx = _lib_name_re(name)
    rows = [r for r in _ldconfig_cache() if rx.match(r[0])]
    rows.sort(key=lambda r: ("x86-64" not in r[1], r[0] != f"lib{name}.so" and ".so." not in r[0]))
    for _, _, path in rows:
        if _is_elf(path):
            return path
    for d in LIB_DIRS:
        try:
            entries = sorted(os.listdir(d))
        except OSError:
            continue
        for e in entries:
            if rx.match(e) and _is_elf(os.path.join(d, e)):
                return os.path.join(d, e)
    return None


def resolve_binary(target: str, pid: int | None = None) -> str:
    """The file a uprobe on `target` attaches to; UsageError when there is none."""
    if not target:
        raise UsageError("empty library or binary name")
    root = _proc_root(pid) if pid else ""
    if "/" in target:
        path = root + target if root and not target.startswith("/proc/") else target
        if not os.path.isfile(path):
            raise UsageError(f"{target}: no such file" + (f" in process {pid}'s root" if root else ""))
        if not _is_elf(path):
            raise UsageError(f"{target}: not an ELF binary or library")
        return path
    if pid:
        found = _from_maps(target, pid)
        if found:
            return root + found
    found = find_library(target)
    if found:
        return found
    exe = shutil.which(target)
    if exe and _is_elf(exe):
        return exe
    where = f" (not mapped by process {pid} either)" if pid else ""
    raise UsageError(f"cannot find library or program {target!r}{where}; give its full path")


def find_functions(path: str, pattern: str, regex: bool = False) -> list[tuple[str, int]]:
    """(name, file offset) of the functions in `path` that `pattern` selects, one name per
    address (the plainest: read over __read over __libc_read), sorted by name."""
    from ..symbols.elf import SymbolError, find_symbols, symbol_offset

    glob = regex or bool(_GLOB_CHARS & set(pattern))
    try:
        if not glob:
            return [(pattern, symbol_offset(path, pattern))]
        if regex:
            rx = re.compile(pattern)
            found = [(n, off) for n, off in find_symbols(path, "*") if rx.match(n)]
        else:
            found = find_symbols(path, pattern)
    except SymbolError as e:
        if not glob and "not found" in str(e):
            return []
        raise UsageError(f"{path}: cannot read symbols: {e}") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read symbols: {e.strerror}") from None
    except re.error as e:
        raise UsageError(f"bad regular expression {pattern!r}: {e}") from None
    by_offset: dict[int, str] = {}
    for name, off in found:
        cur = by_offset.get(off)
        if cur is None or _plainer(name, cur):
            by_offset[off] = name
    return sorted(((n, off) for off, n in by_offset.items()), key=lambda x: x[0])


def _plainer(a: str, b: str) -> bool:
    ka = (len(a) - len(a.lstrip("_")), len(a), a)
    kb = (len(b) - len(b.lstrip("_")), len(b), b)
    return ka < kb

