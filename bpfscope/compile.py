"""Compile a user's .bpf.c on the fly (custom tools only; built-in tools ship compiled).

clang runs against the bundled vmlinux.h and bpfscope.bpf.h, so no kernel headers are
needed. Objects are cached by a hash of everything that shapes them (source, headers,
flags, clang's version), so a tool compiles once per change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import BpfscopeError

INCLUDE_DIR = Path(__file__).with_name("bpf") / "include"
CFLAGS = ["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Wno-unused-function"]


class CompileError(BpfscopeError):
    """clang refused the source; the message carries clang's own diagnostics (file:line)."""


def cache_dir() -> Path:
    base = os.environ.get("BPFSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bpfscope"
    )
    d = Path(base) / "objects"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _clang() -> str:
    clang = os.environ.get("BPFSCOPE_CLANG") or shutil.which("clang")
    if not clang:
        raise BpfscopeError(
            "compiling a .bpf.c file needs clang (apt-get install clang llvm libbpf-dev), "
            "or pass a prebuilt .bpf.o instead"
        )
    return clang


def _digest(src: Path, clang: str, includes: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(src.read_bytes())
    for d in includes:
        for hdr in sorted(d.glob("*.h")):
            h.update(hdr.name.encode())
            h.update(hdr.read_bytes())
    h.update(" ".join(CFLAGS).encode())
    h.update(subprocess.run([clang, "--version"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()[:24]


def compile_bpf(src: str | os.PathLike[str], includes: list[str] | None = None) -> Path:
    """Path of the compiled object for `src`, building it if the cache has none."""
    src = Path(src).resolve()
    if not src.is_file():
        raise BpfscopeError(f"BPF source {src} not found")
    clang = _clang()
    inc_dirs = [INCLUDE_DIR, src.parent, *(Path(i) for i in includes or [])]
    out = cache_dir() / f"{src.stem}-{_digest(src, clang, inc_dirs)}.o"
    if out.exists():
        return out
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".o.tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    cmd = [clang, *CFLAGS]
    for d in inc_dirs:
        cmd += ["-I", str(d)]
    cmd += ["-c", str(src), "-o", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tmp_path.unlink(missing_ok=True)
        diag = "\n".join(line for line in r.stderr.splitlines() if line.strip())
        raise CompileError(f"clang could not compile {src.name}:\n{diag}")
    strip = shutil.which("llvm-strip")
    if strip:
        subprocess.run([strip, "-g", str(tmp_path)], check=False)
    tmp_path.replace(out)
    return out
