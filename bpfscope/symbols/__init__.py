"""Symbolization of stack addresses: kernel (kallsyms), user ELF files, JIT perf maps.

Entry point: ``Symbolizer`` (resolver.py). The other modules are usable on their own:
``KernelSymbols`` (kallsyms.py), ``ElfSymbols`` / ``symbol_offset`` / ``find_symbols``
(elf.py, also used for uprobes), ``read_maps`` (procmaps.py), ``PerfMap`` (perfmap.py),
``demangle`` (demangle.py).
"""

from bpfscope.symbols.demangle import demangle
from bpfscope.symbols.elf import ElfSymbols, SymbolError, find_symbols, read_build_id, symbol_offset
from bpfscope.symbols.kallsyms import KernelSymbols
from bpfscope.symbols.perfmap import PerfMap
from bpfscope.symbols.procmaps import Mapping, ProcessMaps, read_maps
from bpfscope.symbols.resolver import Symbolizer

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
