"""Kernel symbols from /proc/kallsyms: sorted address array + bisect.

Loaded once per process (``KernelSymbols.shared()``).  A 120k-line kallsyms parses in
~50 ms (plus ~45 ms the kernel spends producing the file): the core-kernel block is
split in one ``str.split()`` into a flat token list, addresses are converted with a
single ``bytes.fromhex``, and filtering / de-duplication look only at the few lines
that need it - no regex or Python-level split per line (bench/symbolize.py measures).

Only text symbols (t/T/w/W) take part in address resolution: a kernel stack holds
code addresses, and leaving data symbols out keeps an address past the end of a
function from being named after a neighbouring variable.  ``lookup_name`` also finds
data symbols (it rescans the file for names it has not indexed).
"""

from __future__ import annotations

import re
import sys
import threading
from array import array
from bisect import bisect_right
from itertools import compress, repeat

from bpfscope.results import Frame

KALLSYMS = "/proc/kallsyms"
CORE_MODULE = "[kernel.kallsyms]"

_TEXT_TYPES = frozenset("tTwW")
_NON_TEXT = re.compile(r"[^tTwW]")


def _rank(name: str, typ: str) -> tuple[bool, int, int]:
    """Preference among symbols sharing one address (higher is better): global, fewer
    leading underscores, shorter."""
    return (typ in "TW", len(name.lstrip("_")) - len(name), -len(name))


def _hex_to_ints(hexs: list[str]) -> list[int]:
    """Parse fixed-width (16 digit) hex addresses in one bytes.fromhex call: about 10x
    faster than int(x, 16) per item.  Falls back to int() for any other width."""
    joined = "".join(hexs)
    if len(joined) == 16 * len(hexs):
        try:
            arr = array("Q", bytes.fromhex(joined))
        except ValueError:
            pass
        else:
            if sys.byteorder == "little":
                arr.byteswap()
            return arr.tolist()
    return list(map(int, hexs, repeat(16)))


def _delete(lists: tuple[list, ...], idx: list[int]) -> None:
    """Delete positions idx from each of the parallel lists."""
    if not idx:
        return
    if len(idx) < 2000:
        for i in sorted(set(idx), reverse=True):
            for lst in lists:
                del lst[i]
        return
    drop = set(idx)
    keep = [i not in drop for i in range(len(lists[0]))]
    for lst in lists:
        lst[:] = compress(lst, keep)


def _scan_name(text: str, name: str) -> int | None:
    """Address of `name` in kallsyms text (any symbol type), or None."""
    m = re.search(r"^([0-9a-fA-F]+) \S " + re.escape(name) + r"(?:\t|$)", text, re.M)
    if m is None:
        return None
    return int(m.group(1), 16) or None


class KernelSymbols:
    """Kernel text symbols, sorted by address.

    ``resolve(addr)`` names the function holding a kernel address; ``lookup_name(name)``
    returns a symbol's address.  When addresses are hidden (kptr_restrict, no
    CAP_SYSLOG) the table is empty and every address resolves to ``[unknown]``.
    """

    _shared: KernelSymbols | None = None
    _lock = threading.Lock()

    def __init__(self, path: str = KALLSYMS, data: bytes | None = None):
        self.path = path
        if data is None:
            with open(path, "rb", buffering=0) as f:
                data = f.read()
        self.addrs: list[int] = []
        self.names: list[str] = []
        self.modules: list[str] = []  # "" for the core kernel, else the module name
        self._module_base: dict[str, int] = {}
        self._by_name: dict[str, int] | None = None
        self._load(data)

    # ------------------------------------------------------------------ loading
    def _load(self, data: bytes) -> None:
        # Core kernel lines ("addr type name") have no tab; module lines end in
        # "\t[module]" and come after them.  The core block is split in one go into a
        # flat token list (3 per line); the few remaining lines are split one by one.
        text = data.decode("utf-8", "replace")
        cut = text.find("\t")
        cut = len(text) if cut < 0 else text.rfind("\n", 0, cut) + 1
        tok = text[:cut].split()
        if len(tok) % 3:  # malformed line: fall back to per-line parsing for all
            tok, cut = [], 0
        addrs = _hex_to_ints(tok[0::3])
        types = tok[1::3]
        names = tok[2::3]
        mods = [""] * len(addrs)
        base: dict[str, int] = {}  # module -> lowest address (offsets are relative to it)
        for line in text[cut:].split("\n"):
            parts = line.split()
            if len(parts) < 3:
                continue
            a = int(parts[0], 16)
            m = parts[3][1:-1] if len(parts) > 3 else ""
            addrs.append(a)
            types.append(parts[1])
            names.append(parts[2])
            mods.append(m)
            if m and a and (m not in base or a < base[m]):
                base[m] = a
        # Drop non-text and zero-address symbols: find the few positions with C-speed
        # scans (a regex over the type letters) rather than a Python test per symbol.
        bad = [m.start() for m in _NON_TEXT.finditer("".join(types))]
        if 0 in addrs:
            bad.extend(i for i, a in enumerate(addrs) if a == 0)
        lists = (addrs, types, names, mods)
        _delete(lists, bad)
        if sorted(addrs) != addrs:
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            addrs = [addrs[i] for i in order]
            names = [names[i] for i in order]
            mods = [mods[i] for i in order]
            types = [types[i] for i in order]
        # Several names on one address (aliases): keep the preferred one, so that a
        # bisect lands on a single, stable name.
        dups = [i for i in range(len(addrs) - 1) if addrs[i] == addrs[i + 1]]
        if dups:
            drop = []
            for i in reversed(dups):  # right to left: the winner moves down to i
                if _rank(names[i + 1], types[i + 1]) > _rank(names[i], types[i]):
                    names[i], mods[i], types[i] = names[i + 1], mods[i + 1], types[i + 1]
                drop.append(i + 1)
            _delete((addrs, types, names, mods), drop)
        if addrs:
            # offsets of core kernel frames are relative to _text, as perf does
            base[""] = _scan_name(text, "_text") or addrs[0]
        self.addrs, self.names, self.modules, self._module_base = addrs, names, mods, base

    @classmethod
    def shared(cls) -> KernelSymbols:
        """One table per process, loaded on first use."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @classmethod
    def reload_shared(cls) -> KernelSymbols:
        """Reload the shared table (modules or BPF programs loaded since)."""
        with cls._lock:
            cls._shared = cls()
            return cls._shared

    def __len__(self) -> int:
        return len(self.addrs)

    # ------------------------------------------------------------------ queries
    def find(self, addr: int) -> tuple[str, int, str] | None:
        """(name, symbol address, module) of the symbol holding addr, or None."""
        i = bisect_right(self.addrs, addr) - 1
        if i < 0 or addr <= 0:
            return None
        return self.names[i], self.addrs[i], self.modules[i]

    def resolve(self, addr: int) -> Frame:
        """Frame(kind="kernel") naming the function at addr; module is "[kernel.kallsyms]"
        or "[modname]", offset is relative to the module's start (_text for the core)."""
        i = bisect_right(self.addrs, addr) - 1
        if i < 0 or addr <= 0:
            return Frame("[unknown]", kind="unknown", module=CORE_MODULE, address=addr)
        mod = self.modules[i]
        base = self._module_base.get(mod, 0)
        return Frame(
            self.names[i],
            kind="kernel",
            module=f"[{mod}]" if mod else CORE_MODULE,
            offset=addr - base,
            address=addr,
        )

    def lookup_name(self, name: str) -> int | None:
        """Address of a kernel symbol (text symbols from the table; others by a rescan)."""
        if self._by_name is None:
            by: dict[str, int] = {}
            for a, nm in zip(self.addrs, self.names, strict=True):
                by.setdefault(nm, a)
            self._by_name = by
        addr = self._by_name.get(name)
        if addr is not None:
            return addr
        # Aliases dropped by de-duplication and non-text symbols: scan the file.
        try:
            with open(self.path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        return _scan_name(text, name)
