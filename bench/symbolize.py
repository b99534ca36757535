"""Symbolization speed: user stacks of a live process, kernel stacks, ELF and kallsyms loading.

    .venv/bin/python bench/symbolize.py [--addrs 10000] [--depth 20] [--seed 1]

Starts a Python process (this interpreter, blocked on stdin) and draws --addrs random
addresses inside functions of its libc and libpython (uniformly over their functions),
grouped into stacks of --depth frames, then times Symbolizer.user on them:
  cold   a new Symbolizer with an empty ELF cache (reads maps, parses both files, and the
         separate debug file of libc when one is installed),
  files  a new Symbolizer sharing the now-warm ELF cache (per-pid caches empty),
  warm   the same Symbolizer again (every address already seen).
The same for kernel stacks (random addresses inside kallsyms text symbols), plus load
times of /proc/kallsyms and of the ELF symbol tables, struct vs pyelftools.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from elftools.elf.elffile import ELFFile  # noqa: E402

from bpfscope.symbols.elf import ElfSymbols  # noqa: E402
from bpfscope.symbols.kallsyms import KernelSymbols  # noqa: E402
from bpfscope.symbols.procmaps import read_maps  # noqa: E402
from bpfscope.symbols.resolver import ElfCache, Symbolizer  # noqa: E402


def best_of(n: int, fn) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def user_addresses(pid: int, n: int, rng: random.Random) -> tuple[list[int], list[str]]:
    """n runtime addresses inside functions of the process's libc and libpython."""
    maps = [m for m in read_maps(pid) if m.file_backed]
    pools: list[tuple[int, int]] = []  # (runtime start, size) of functions
    files: list[str] = []
    for m in maps:
        base = Path(m.path).name
        if not (base.startswith("libc.so") or base.startswith("libpython")):
            continue
        elf = ElfSymbols.load(f"/proc/{pid}/root{m.path}")
        files.append(m.path)
        for start, end in zip(elf.starts, elf.ends, strict=True):
            off = elf.vaddr_to_offset(start)
            if off is None or not (m.offset <= off and off + (end - start) <= m.offset + (m.end - m.start)):
                continue
            pools.append((m.start + off - m.offset, end - start))
    assert pools, "no libc / libpython mapping found"
    out = []
    for _ in range(n):
        start, size = rng.choice(pools)
        out.append(start + rng.randrange(size))
    return out, files


def elf_parse_compare(path: str) -> tuple[float, float, int, int]:
    """Seconds to get FUNC symbols of .symtab+.dynsym: struct (ElfSymbols) vs pyelftools."""

    def ours():
        ElfSymbols.load(path, debug_dirs=())

    def pyelf():
        n = 0
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for name in (".symtab", ".dynsym"):
                sec = elf.get_section_by_name(name)
                if sec is None:
                    continue
                for s in sec.iter_symbols():
                    if (
                        s["st_info"]["type"] in ("STT_FUNC", "STT_LOOS")
                        and s["st_size"]
                        and s["st_shndx"] != "SHN_UNDEF"
                    ):
                        n += 1
        return n

    t_ours = best_of(3, ours)
    t_py = best_of(1, pyelf)
    return t_ours, t_py, len(ElfSymbols.load(path, debug_dirs=())), pyelf()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addrs", type=int, default=10000)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    target = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)
        addrs, files = user_addresses(target.pid, args.addrs, rng)
        stacks = [addrs[i : i + args.depth] for i in range(0, len(addrs), args.depth)]
        print(f"user: pid {target.pid}, {len(addrs)} addresses in {len(stacks)} stacks of {args.depth}")
        for f in files:
            print(f"  {f}")

        def run(sym: Symbolizer) -> float:
            t = time.perf_counter()
            for st in stacks:
                sym.user(target.pid, st)
            return time.perf_counter() - t

        cache = ElfCache()
        cold_sym = Symbolizer(elf_cache=cache)
        t_cold = run(cold_sym)
        assert cold_sym.unresolved == 0, cold_sym.stats()
        t_files = min(run(Symbolizer(elf_cache=cache)) for _ in range(3))
        t_warm = min(run(cold_sym) for _ in range(3))
        print(f"  {'cache':<28}{'seconds':>10}{'stacks/s':>12}{'addrs/s':>12}")
        for label, t in (
            ("cold (parse ELF files)", t_cold),
            ("files cached, new pid", t_files),
            ("warm (addresses seen)", t_warm),
        ):
            print(f"  {label:<28}{t:>10.4f}{len(stacks) / t:>12,.0f}{len(addrs) / t:>12,.0f}")
    finally:
        assert target.stdin is not None
        target.stdin.close()
        target.wait()

    # ------------------------------------------------------------------- kernel
    t_load = best_of(3, KernelSymbols)
    ks = KernelSymbols()
    with open("/proc/kallsyms", "rb") as f:
        raw = f.read()
    t_parse = best_of(3, lambda: KernelSymbols(data=raw))
    print(
        f"\nkallsyms: {len(ks)} text symbols, load {t_load * 1e3:.1f} ms (parse alone {t_parse * 1e3:.1f} ms)"
    )
    if len(ks) > 1:
        kaddrs = []
        for _ in range(args.addrs):
            i = rng.randrange(len(ks) - 1)
            kaddrs.append(ks.addrs[i] + rng.randrange(max(1, min(256, ks.addrs[i + 1] - ks.addrs[i]))))
        kstacks = [kaddrs[i : i + args.depth] for i in range(0, len(kaddrs), args.depth)]
        ksym = Symbolizer(kernel_symbols=ks)

        def krun() -> float:
            t = time.perf_counter()
            for st in kstacks:
                ksym.kernel(st)
            return time.perf_counter() - t

        t_kcold = krun()
        t_kwarm = min(krun() for _ in range(3))
        for label, t in (("cold (bisect)", t_kcold), ("warm (addresses seen)", t_kwarm)):
            print(f"  {label:<28}{t:>10.4f}{len(kstacks) / t:>12,.0f}{len(kaddrs) / t:>12,.0f}")

    # ---------------------------------------------------------------- ELF parse
    print("\nELF function symbols (.symtab + .dynsym), struct vs pyelftools Symbol objects")
    print("(symbol counts: ours after merging aliases and duplicates / pyelftools raw):")
    for path in files:
        ours, py, n_ours, n_py = elf_parse_compare(path)
        print(
            f"  {Path(path).name:<28}{ours * 1e3:>8.1f} ms vs {py * 1e3:>8.1f} ms  ({py / ours:.0f}x)  {n_ours} / {n_py} symbols"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
