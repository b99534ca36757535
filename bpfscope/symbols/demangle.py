"""Symbol name demangling: C++ (Itanium, through cxxfilt) and Rust.

* Names that are not mangled (C, kernel, JIT names) return at once: one prefix test.
* Rust legacy names (``_ZN...17h<16 hex>E``, what stable rustc emits by default) are
  decoded here, as rustc-demangle does with ``{:#}``: ``$LT$``-style escapes undone,
  ``..`` -> ``::``, the hash dropped.  (__cxa_demangle alone would keep the hash and
  the escapes, or fail on them.)
* Rust v0 names (``_R...``, the default of rustc since 1.9x) are decoded by the optional
  ``pyderust`` package (bindings of the rustc-demangle crate) when it is installed, else
  by binutils' ``c++filt`` run as one long-lived co-process (libiberty knows v0), else
  they pass through unchanged.
* Everything else starting with ``_Z`` goes to cxxfilt (libstdc++'s __cxa_demangle);
  if cxxfilt or libstdc++ is unavailable, or the name is not valid, the name is kept.
"""

from __future__ import annotations

import re
import select
import shutil
import subprocess
import threading
from functools import lru_cache

_UNSET = object()
_backend_lock = threading.Lock()
_cxx_fn: object = _UNSET  # cxxfilt.demangle, or None when unavailable
_rust_fn: object = _UNSET  # pyderust.demangle, or None


def _cxx_backend():
    """cxxfilt, imported on the first mangled name (its import runs ldconfig: ~30 ms)."""
    global _cxx_fn
    if _cxx_fn is _UNSET:
        with _backend_lock:
            if _cxx_fn is _UNSET:
                try:  # C++: libstdc++'s abi::__cxa_demangle through ctypes
                    import cxxfilt

                    if isinstance(cxxfilt.default_demangler, cxxfilt.DeferedErrorDemangler):
                        _cxx_fn = None  # libstdc++ not found: every call would raise
                    else:
                        _cxx_fn = cxxfilt.demangle
                except Exception:  # noqa: BLE001 - ImportError, or libstdc++ not loadable
                    _cxx_fn = None
    return _cxx_fn


def _rust_backend():
    """pyderust (rustc-demangle bindings), optional."""
    global _rust_fn
    if _rust_fn is _UNSET:
        with _backend_lock:
            if _rust_fn is _UNSET:
                try:
                    import pyderust  # type: ignore[import-not-found]

                    _rust_fn = pyderust.demangle
                except Exception:  # noqa: BLE001
                    _rust_fn = None
    return _rust_fn


def have_cxx() -> bool:
    return _cxx_backend() is not None


def rust_v0_backend() -> str:
    """Which decoder handles Rust v0 names: "pyderust", "c++filt" or "" (none: kept as is)."""
    if _rust_backend() is not None:
        return "pyderust"
    return "" if _cxxfilt_pipe.broken else "c++filt"


class _CxxFiltPipe:
    """binutils c++filt as a co-process: one name per line in, one line out."""

    TIMEOUT = 2.0

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._broken: bool | None = None  # unknown until first needed

    @property
    def broken(self) -> bool:
        if self._broken is None:
            self._broken = shutil.which("c++filt") is None
        return self._broken

    def demangle(self, name: str) -> str | None:
        if self.broken or "\n" in name:
            return None
        with self._lock:
            try:
                if self._proc is None:
                    self._proc = subprocess.Popen(
                        [shutil.which("c++filt") or "c++filt"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                    )
                proc = self._proc
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(name.encode() + b"\n")
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], self.TIMEOUT)
                line = proc.stdout.readline() if ready else b""
            except (OSError, ValueError):
                line = b""
            if not line:
                self._stop()
                return None
            return line.rstrip(b"\n").decode("utf-8", "replace")

    def _stop(self) -> None:
        self._broken = True
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


_cxxfilt_pipe = _CxxFiltPipe()

_RUST_HASH = re.compile(r"h[0-9a-f]{16}")
_ESCAPES = {
    "SP": "@",
    "BP": "*",
    "RF": "&",
    "LT": "<",
    "GT": ">",
    "LP": "(",
    "RP": ")",
    "C": ",",
}
_ESCAPE = re.compile(r"\$([A-Z]{1,2}|u[0-9a-f]{1,6})\$")


def _unescape(m: re.Match[str]) -> str:
    code = m.group(1)
    if code[0] == "u":
        try:
            return chr(int(code[1:], 16))
        except ValueError:
            return m.group(0)
    return _ESCAPES.get(code, m.group(0))


def _split_legacy(name: str) -> tuple[list[str], str] | None:
    """Components and suffix of a legacy Rust name, or None if not one."""
    if name.startswith("_ZN"):
        i = 3
    elif name.startswith("__ZN"):
        i = 4
    else:
        return None
    comps: list[str] = []
    n = len(name)
    while i < n and name[i] != "E":
        j = i
        while j < n and name[j].isdigit():
            j += 1
        if j == i:
            return None
        length = int(name[i:j])
        if length == 0 or j + length > n:
            return None
        comps.append(name[j : j + length])
        i = j + length
    if i >= n or not comps:
        return None
    suffix = name[i + 1 :]
    if suffix and not suffix.startswith("."):
        return None  # C++ with parameters after the nested name: not Rust
    if not _RUST_HASH.fullmatch(comps[-1]):
        return None
    return comps, suffix


def demangle_rust_legacy(name: str) -> str | None:
    """Demangle a legacy Rust symbol; None when `name` is not one."""
    parts = _split_legacy(name)
    if parts is None:
        return None
    comps, suffix = parts
    out = []
    for c in comps[:-1]:  # the last one is the hash
        if c.startswith("_$"):
            c = c[1:]
        c = _ESCAPE.sub(_unescape, c.replace("..", "::"))
        out.append(c)
    text = "::".join(out)
    if suffix.startswith(".llvm."):
        suffix = ""
    return text + suffix


def demangle_cxx(name: str) -> str:
    fn = _cxx_backend()
    if fn is None:
        return name
    try:
        out = fn(name)
    except Exception:  # noqa: BLE001 - cxxfilt.InvalidName and ctypes errors
        return name
    return out or name


@lru_cache(maxsize=1 << 16)
def _demangle(name: str) -> str:
    if name.startswith(("_R", "__R")):
        fn = _rust_backend()
        if fn is not None:
            try:
                return fn(name)
            except Exception:  # noqa: BLE001 - pyderust.DemangleError (ValueError)
                return name
        return _cxxfilt_pipe.demangle(name) or name
    rust = demangle_rust_legacy(name)
    if rust is not None:
        return rust
    return demangle_cxx(name)


def demangle(name: str) -> str:
    """Readable form of a symbol name; unmangled names come back unchanged (fast)."""
    if name[:2] not in ("_Z", "_R", "__"):
        return name
    if name[:2] == "__" and name[2:3] not in ("Z", "R"):
        return name
    return _demangle(name)
