"""ELF function symbols, build-ids, debug files and address <-> file offset maths.

pyelftools finds the sections (headers, names, links); the symbol tables themselves are
decoded with ``struct.iter_unpack`` over the raw section bytes, which is about 40x
faster than iterating pyelftools ``Symbol`` objects (see bench/symbolize.py).

Addresses:
  * a *runtime address* is what a stack map holds;
  * a *file offset* is ``addr - mapping.start + mapping.offset`` (from /proc/PID/maps);
  * a *vaddr* is the address the ELF file itself uses (symbol values, PT_LOAD p_vaddr).
``ElfSymbols.offset_to_vaddr`` converts the second into the third through the PT_LOAD
segment holding that file offset, which gives the right answer for PIE executables,
shared libraries, non-PIE executables and prelinked files alike.

Symbols come from ``.symtab`` when present, else from a separate debug file (build-id
path or ``.gnu_debuglink``), then from MiniDebugInfo (``.gnu_debugdata``), always
merged with ``.dynsym``.  Only defined FUNC and IFUNC symbols with a size are kept.
"""

from __future__ import annotations

import fnmatch
import io
import lzma
import os
import struct
import zlib
from bisect import bisect_right
from dataclasses import dataclass
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

DEBUG_DIRS: tuple[str, ...] = ("/usr/lib/debug",)

STT_FUNC = 2
STT_GNU_IFUNC = 10
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SHN_UNDEF = 0
PF_X = 1
PT_LOAD = 1
NT_GNU_BUILD_ID = 3

_SYM_FMT = {  # (elfclass, little_endian) -> (struct format, field order)
    (64, True): "<IBBHQQ",  # st_name, st_info, st_other, st_shndx, st_value, st_size
    (64, False): ">IBBHQQ",
    (32, True): "<IIIBBH",  # st_name, st_value, st_size, st_info, st_other, st_shndx
    (32, False): ">IIIBBH",
}


class SymbolError(LookupError):
    """A symbol asked for by name is not in the file (or the file is no ELF)."""


@dataclass(frozen=True, slots=True)
class LoadSegment:
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)


@dataclass(frozen=True, slots=True)
class RawSymbol:
    """One defined function symbol, as found in a table (no de-duplication)."""

    name: str
    value: int  # vaddr
    size: int
    bind: int
    table: str  # ".symtab" | ".dynsym" | "debug" | "minidebuginfo"


# ============================================================== low-level readers
def _read(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _elf_open(f: BinaryIO) -> ELFFile:
    try:
        return ELFFile(f)
    except (ELFError, struct.error, ValueError) as e:
        raise SymbolError(f"not an ELF file: {e}") from e


def _sections(elf: ELFFile) -> dict[str, object]:
    out: dict[str, object] = {}
    try:
        for sec in elf.iter_sections():
            out.setdefault(sec.name, sec)
    except (ELFError, struct.error, ValueError):
        pass
    return out


def _iter_func_symbols(f: BinaryIO, elf: ELFFile, secname: str, sections: dict, *, with_size: bool = True):
    """Yield (name_bytes, value, size, bind) of defined FUNC/IFUNC symbols of one table."""
    sec = sections.get(secname)
    if sec is None or sec["sh_type"] == "SHT_NOBITS":
        return
    try:
        strsec = elf.get_section(sec["sh_link"])
    except (ELFError, struct.error, ValueError, IndexError):
        return
    if strsec is None or strsec["sh_type"] == "SHT_NOBITS":
        return
    fmt = _SYM_FMT.get((elf.elfclass, elf.little_endian))
    if fmt is None:
        return
    entsize = struct.calcsize(fmt)
    data = _read(f, sec["sh_offset"], sec["sh_size"])
    data = data[: len(data) - len(data) % entsize]
    strtab = _read(f, strsec["sh_offset"], strsec["sh_size"])
    find = strtab.find
    if elf.elfclass == 64:
        it = struct.iter_unpack(fmt, data)
        for st_name, st_info, _other, st_shndx, st_value, st_size in it:
            t = st_info & 0xF
            if (t == STT_FUNC or t == STT_GNU_IFUNC) and st_shndx != SHN_UNDEF and (st_size or not with_size):
                end = find(b"\0", st_name)
                yield strtab[st_name : end if end >= 0 else None], st_value, st_size, st_info >> 4
    else:
        for st_name, st_value, st_size, st_info, _other, st_shndx in struct.iter_unpack(fmt, data):
            t = st_info & 0xF
            if (t == STT_FUNC or t == STT_GNU_IFUNC) and st_shndx != SHN_UNDEF and (st_size or not with_size):
                end = find(b"\0", st_name)
                yield strtab[st_name : end if end >= 0 else None], st_value, st_size, st_info >> 4


def _build_id(f: BinaryIO, elf: ELFFile, sections: dict) -> str | None:
    """Hex build-id from .note.gnu.build-id, or from any PT_NOTE segment."""
    blobs: list[bytes] = []
    sec = sections.get(".note.gnu.build-id")
    if sec is not None and sec["sh_type"] != "SHT_NOBITS":
        blobs.append(_read(f, sec["sh_offset"], sec["sh_size"]))
    else:
        try:
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_NOTE":
                    blobs.append(_read(f, seg["p_offset"], seg["p_filesz"]))
        except (ELFError, struct.error, ValueError):
            pass
    order = "<" if elf.little_endian else ">"
    for blob in blobs:
        pos = 0
        while pos + 12 <= len(blob):
            namesz, descsz, ntype = struct.unpack_from(order + "III", blob, pos)
            pos += 12
            name = blob[pos : pos + namesz]
            pos += (namesz + 3) & ~3
            desc = blob[pos : pos + descsz]
            pos += (descsz + 3) & ~3
            if ntype == NT_GNU_BUILD_ID and name.rstrip(b"\0") == b"GNU" and desc:
                return desc.hex()
    return None


def _debuglink(f: BinaryIO, elf: ELFFile, sections: dict) -> tuple[str, int] | None:
    sec = sections.get(".gnu_debuglink")
    if sec is None or sec["sh_type"] == "SHT_NOBITS":
        return None
    data = _read(f, sec["sh_offset"], sec["sh_size"])
    end = data.find(b"\0")
    if end <= 0:
        return None
    name = data[:end].decode("utf-8", "replace")
    crc_at = (end + 4) & ~3
    if crc_at + 4 > len(data):
        return name, 0
    (crc,) = struct.unpack_from("<I" if elf.little_endian else ">I", data, crc_at)
    return name, crc


def _segments(f: BinaryIO, elf: ELFFile) -> list[LoadSegment]:
    """PT_LOAD program headers, read with struct (pyelftools' iter_segments also parses
    the dynamic segment, which costs more than everything else here)."""
    order = "<" if elf.little_endian else ">"
    if elf.elfclass == 64:
        # p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
        fmt, fields = order + "IIQQQQQQ", (0, 1, 2, 3, 5, 6)
    else:
        # p_type p_offset p_vaddr p_paddr p_filesz p_memsz p_flags p_align
        fmt, fields = order + "IIIIIIII", (0, 6, 1, 2, 4, 5)
    phoff, phentsize, phnum = elf["e_phoff"], elf["e_phentsize"], elf["e_phnum"]
    size = struct.calcsize(fmt)
    if not phoff or phentsize < size:
        return []
    data = _read(f, phoff, phentsize * phnum)
    segs: list[LoadSegment] = []
    t, fl, off, va, fs, ms = fields  # indexes of: type flags offset vaddr filesz memsz
    for i in range(min(phnum, len(data) // phentsize)):
        h = struct.unpack_from(fmt, data, i * phentsize)
        if h[t] == PT_LOAD:
            segs.append(LoadSegment(h[off], h[va], h[fs], h[ms], h[fl]))
    return segs


def _rank(name: str, bind: int) -> tuple[int, int, int]:
    """Preference among names on one address: global > weak > local, then fewer leading
    underscores (malloc over __libc_malloc), then shorter."""
    b = 2 if bind == STB_GLOBAL else 1 if bind == STB_WEAK else 0
    return (b, len(name.lstrip("_")) - len(name), -len(name))


def crc32_file(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


# ==================================================================== ElfSymbols
class ElfSymbols:
    """Function symbols of one ELF file, sorted by vaddr, plus its identity and layout.

    Build with ``ElfSymbols.load(path)`` (or ``from_bytes`` for an in-memory image such
    as the vDSO).  ``lookup(vaddr)`` -> (name, symbol start) or None.
    """

    __slots__ = (
        "path",
        "build_id",
        "debuglink",
        "elf_type",
        "segments",
        "starts",
        "ends",
        "names",
        "symbols_from",
        "has_symtab",
    )

    def __init__(self, path: str):
        self.path = path
        self.build_id: str | None = None
        self.debuglink: tuple[str, int] | None = None
        self.elf_type = ""
        self.segments: list[LoadSegment] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.names: list[str] = []
        self.symbols_from: list[str] = []  # which tables/files the symbols came from
        self.has_symtab = False

    # ----------------------------------------------------------------- building
    @classmethod
    def load(
        cls,
        path: str,
        *,
        debug_dirs: tuple[str, ...] | list[str] = DEBUG_DIRS,
        root: str = "",
        display_path: str | None = None,
    ) -> ElfSymbols:
        """Parse `path`. `root` prefixes debug-file search paths (a container's
        /proc/PID/root); `display_path` is the name recorded (path inside the process)."""
        with open(path, "rb") as f:
            return cls._from_stream(f, display_path or path, real_path=path, debug_dirs=debug_dirs, root=root)

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> ElfSymbols:
        return cls._from_stream(io.BytesIO(data), name, real_path=None, debug_dirs=(), root="")

    @classmethod
    def _from_stream(
        cls, f: BinaryIO, name: str, *, real_path: str | None, debug_dirs, root: str
    ) -> ElfSymbols:
        self = cls(name)
        elf = _elf_open(f)
        secs = _sections(elf)
        self.elf_type = elf["e_type"]
        self.segments = _segments(f, elf)
        self.build_id = _build_id(f, elf, secs)
        self.debuglink = _debuglink(f, elf, secs)
        syms: dict[int, tuple[str, int, int]] = {}  # vaddr -> (name, size, bind)

        def add(items, source: str) -> None:
            n = 0
            get = syms.get
            for raw, value, size, bind in items:
                n += 1
                cur = get(value)
                if cur is None:
                    syms[value] = (raw.decode("utf-8", "replace"), size, bind)
                    continue
                # several names on one address (aliases, .symtab + .dynsym): keep one
                nm = raw.decode("utf-8", "replace")
                if nm == cur[0]:
                    if size > cur[1]:
                        syms[value] = (cur[0], size, cur[2])
                elif _rank(nm, bind) > _rank(cur[0], cur[2]):
                    syms[value] = (nm, max(size, cur[1]), bind)
                elif size > cur[1]:
                    syms[value] = (cur[0], size, cur[2])
            if n:
                self.symbols_from.append(source)

        self.has_symtab = ".symtab" in secs and secs[".symtab"]["sh_type"] != "SHT_NOBITS"
        if self.has_symtab:
            add(_iter_func_symbols(f, elf, ".symtab", secs), ".symtab")
        else:
            dbg = self._find_debug_file(real_path, debug_dirs, root) if real_path else None
            if dbg is not None:
                try:
                    with open(dbg, "rb") as df:
                        delf = _elf_open(df)
                        add(_iter_func_symbols(df, delf, ".symtab", _sections(delf)), dbg)
                except (OSError, SymbolError):
                    pass
            if not self.symbols_from and ".gnu_debugdata" in secs:
                add(self._minidebuginfo(f, secs[".gnu_debugdata"]), "minidebuginfo")
        add(_iter_func_symbols(f, elf, ".dynsym", secs), ".dynsym")

        starts = sorted(syms)
        self.starts = starts
        self.names = [syms[s][0] for s in starts]
        self.ends = [s + syms[s][1] for s in starts]
        return self

    @staticmethod
    def _minidebuginfo(f: BinaryIO, sec):
        try:
            blob = lzma.decompress(_read(f, sec["sh_offset"], sec["sh_size"]))
        except lzma.LZMAError:
            return
        inner = io.BytesIO(blob)
        try:
            ielf = _elf_open(inner)
        except SymbolError:
            return
        yield from _iter_func_symbols(inner, ielf, ".symtab", _sections(ielf))

    def _find_debug_file(self, real_path: str, debug_dirs, root: str) -> str | None:
        """Separate debug file: build-id path first, then .gnu_debuglink (gdb's order)."""
        prefixes = [root + d for d in debug_dirs] if root else []
        prefixes += list(debug_dirs)
        if self.build_id and len(self.build_id) > 2:
            rel = f".build-id/{self.build_id[:2]}/{self.build_id[2:]}.debug"
            for d in prefixes:
                cand = os.path.join(d, rel)
                if os.path.isfile(cand) and self._debug_matches(cand, crc=None):
                    return cand
        if self.debuglink:
            name, crc = self.debuglink
            fdir = os.path.dirname(real_path)
            # path of the file as the process sees it, for /usr/lib/debug/<dir>/name
            vdir = os.path.dirname(self.path)
            cands = [os.path.join(fdir, name), os.path.join(fdir, ".debug", name)]
            cands += [os.path.join(d, vdir.lstrip("/"), name) for d in prefixes]
            for cand in cands:
                if os.path.realpath(cand) == os.path.realpath(real_path):
                    continue
                if os.path.isfile(cand) and self._debug_matches(cand, crc=crc):
                    return cand
        return None

    def _debug_matches(self, cand: str, crc: int | None) -> bool:
        """A debug file belongs to this binary: same build-id when both have one, else
        the debuglink CRC."""
        try:
            with open(cand, "rb") as df:
                delf = _elf_open(df)
                bid = _build_id(df, delf, _sections(delf))
        except (OSError, SymbolError):
            return False
        if self.build_id and bid:
            return bid == self.build_id
        if crc:
            try:
                return crc32_file(cand) == crc
            except OSError:
                return False
        return True

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.starts)

    def lookup(self, vaddr: int) -> tuple[str, int] | None:
        """(name, symbol start vaddr) of the function holding vaddr, or None."""
        starts = self.starts
        i = bisect_right(starts, vaddr) - 1
        if i < 0:
            return None
        ends = self.ends
        if vaddr < ends[i]:
            return self.names[i], starts[i]
        # a large symbol may enclose smaller ones that start after it: look back a little
        for j in range(i - 1, max(i - 8, -1), -1):
            if starts[j] <= vaddr < ends[j]:
                return self.names[j], starts[j]
        return None

    def offset_to_vaddr(self, offset: int) -> int | None:
        """vaddr of a file offset, through the PT_LOAD segment that maps it."""
        for seg in self.segments:
            if seg.executable and seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + max(seg.filesz, seg.memsz):
                return offset - seg.offset + seg.vaddr
        return None

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        """File offset of a vaddr (what uprobes attach to), or None if not in a file-backed segment."""
        return _to_offset(self.segments, vaddr)


# ============================================================== uprobe helpers
def iter_function_symbols(path: str) -> list[RawSymbol]:
    """All defined FUNC/IFUNC symbols of .symtab and .dynsym (aliases kept, size 0 kept)."""
    out: list[RawSymbol] = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SymbolError(f"{path}: {e.strerror}") from e
    with f:
        elf = _elf_open(f)
        secs = _sections(elf)
        for table in (".symtab", ".dynsym"):
            for raw, value, size, bind in _iter_func_symbols(f, elf, table, secs, with_size=False):
                out.append(RawSymbol(raw.decode("utf-8", "replace"), value, size, bind, table))
    return out


def _segments_of(path: str) -> list[LoadSegment]:
    with open(path, "rb") as f:
        return _segments(f, _elf_open(f))


def _to_offset(segs: list[LoadSegment], vaddr: int) -> int | None:
    for seg in sorted(segs, key=lambda s: not s.executable):
        if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
            return vaddr - seg.vaddr + seg.offset
    return None


def find_symbols(path: str, pattern: str) -> list[tuple[str, int]]:
    """(name, file offset) of the functions whose names match a glob pattern, sorted by
    name; a name defined in both .symtab and .dynsym is listed once.  File offsets are
    what uprobes attach to."""
    syms = iter_function_symbols(path)
    segs = _segments_of(path)
    glob = any(c in pattern for c in "*?[")
    seen: set[tuple[str, int]] = set()
    out: list[tuple[str, int]] = []
    for s in syms:
        if (fnmatch.fnmatchcase(s.name, pattern) if glob else s.name == pattern) and s.value:
            off = _to_offset(segs, s.value)
            if off is not None and (s.name, off) not in seen:
                seen.add((s.name, off))
                out.append((s.name, off))
    out.sort()
    return out


def symbol_offset(path: str, name: str) -> int:
    """File offset of function `name` in the ELF file at `path` (for a uprobe).

    A global definition wins over a local one of the same name.  Raises SymbolError
    when absent.  Note: for an IFUNC symbol (memcpy in glibc...) this is the resolver.
    """
    syms = [s for s in iter_function_symbols(path) if s.name == name and s.value]
    if not syms:
        raise SymbolError(f"function {name!r} not found in {path}")
    syms.sort(key=lambda s: (s.bind == STB_LOCAL, s.table != ".symtab"))
    off = _to_offset(_segments_of(path), syms[0].value)
    if off is None:
        raise SymbolError(f"function {name!r} in {path} is not in a loadable segment")
    return off


def read_build_id(path: str) -> str | None:
    """Hex GNU build-id of an ELF file, or None."""
    try:
        with open(path, "rb") as f:
            elf = _elf_open(f)
            return _build_id(f, elf, _sections(elf))
    except (OSError, SymbolError):
        return None
