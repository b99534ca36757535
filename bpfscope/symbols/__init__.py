"""Symbolization of stack addresses: kernel (kallsyms), user ELF files, JIT perf maps.

Entry point: ``Symbolizer`` (resolver.py). The other modules are usable on their own:
``KernelSymbols`` (kallsyms.py), ``ElfSymbols`` / ``symbol_offset`` / ``find_symbols``
(elf.py, also used for uprobes), ``read_maps`` (procmaps.py), ``PerfMap`` (perfmap.py),
``demangle`` (demangle.py).
"""

import importlib

# `demangle` is both a submodule and a function: bind the function now (the module is
# cheap; its back-ends load on first use), so the submodule never shadows it.
from bpfscope.symbols.demangle import demangle

# The rest is lazy: importing bpfscope.symbols.elf (uprobes) pays for nothing else.
_EXPORTS = {
    "ElfSymbols": "elf",
    "SymbolError": "elf",
    "find_symbols": "elf",
    "read_build_id": "elf",
    "symbol_offset": "elf",
    "KernelSymbols": "kallsyms",
    "PerfMap": "perfmap",
    "Mapping": "procmaps",
    "ProcessMaps": "procmaps",
    "read_maps": "procmaps",
    "Symbolizer": "resolver",
}


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ElfSymbols",
    "KernelSymbols",
    "Mapping",
    "PerfMap",
    "ProcessMaps",
    "SymbolError",
    "Symbolizer",
    "demangle",
    "find_symbols",
    "read_build_id",
    "read_maps",
    "symbol_offset",
]
