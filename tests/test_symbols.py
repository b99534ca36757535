"""Symbolization: kallsyms, ELF symbols, /proc/PID/maps, perf maps, demangling, Symbolizer.

The user-space tests build small C/C++ programs (tests/cprogs/symtest*.c) with gcc,
run them (each prints the runtime address of its functions, then blocks on stdin) and
check that the Symbolizer names those addresses inside the live process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bpfscope.results import Frame
from bpfscope.symbols import (
    ElfSymbols,
    KernelSymbols,
    PerfMap,
    SymbolError,
    Symbolizer,
    demangle,
    find_symbols,
    read_build_id,
    read_maps,
    symbol_offset,
)
from bpfscope.symbols.demangle import demangle_rust_legacy, rust_v0_backend
from bpfscope.symbols.procmaps import ns_pid, parse_maps, start_time
from bpfscope.symbols.resolver import ElfCache

CPROGS = Path(__file__).parent / "cprogs"
CFLAGS = ["-O0", "-g", "-fno-omit-frame-pointer"]


# ------------------------------------------------------------------ helpers
def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Prog:
    """A running test program and the addresses it printed."""

    def __init__(self, path: Path, env: dict[str, str] | None = None):
        self.path = path
        self.proc = subprocess.Popen(
            [str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.addrs: dict[str, int] = {}
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            key, _, value = line.strip().rpartition(" ")
            if key == "ready":
                break
            self.addrs[key] = int(value, 16)
        else:
            raise AssertionError(f"{path} exited early: rc={self.proc.wait()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("symtest")
    lib = d / "libsymtest.so"
    _run(
        ["gcc", *CFLAGS, "-fPIC", "-shared", "-Wl,--build-id", "-o", str(lib), str(CPROGS / "symtest_lib.c")]
    )
    out = {"lib": lib}
    link = ["-L", str(d), "-lsymtest", f"-Wl,-rpath,{d}", "-Wl,--build-id"]
    for name, flags in (("pie", ["-fPIE", "-pie"]), ("nopie", ["-fno-PIE", "-no-pie"])):
        exe = d / f"symtest_{name}"
        _run(["gcc", *CFLAGS, *flags, "-o", str(exe), str(CPROGS / "symtest_main.c"), *link])
        out[name] = exe
    cxx = d / "symtest_cxx"
    _run(["g++", *CFLAGS, "-o", str(cxx), str(CPROGS / "symtest_cxx.cc")])
    out["cxx"] = cxx
    return out


@pytest.fixture
def pie(built):
    p = Prog(built["pie"])
    yield p
    p.stop()


MAIN_FUNCS = ("symtest_global_fn", "symtest_static_fn", "main")
LIB_FUNCS = ("symtest_lib_func", "symtest_lib_inner")


def _check_names(prog: Prog, frames_of, exe: Path, lib: Path) -> None:
    names = MAIN_FUNCS + LIB_FUNCS
    addrs = [prog.addrs[n] + delta for n in names for delta in (0, 1, 5)]
    frames = frames_of(prog.pid, addrs)
    assert len(frames) == len(addrs)
    for i, n in enumerate(names):
        for j in range(3):
            f = frames[3 * i + j]
            assert f.name == n, (n, f)
            assert f.kind == "user"
            assert f.address == addrs[3 * i + j]
            assert f.module == str(exe if n in MAIN_FUNCS else lib)
    # offset is the file offset: what symbol_offset (uprobes) gives for the same function
    f0 = frames[0]
    assert f0.offset == symbol_offset(str(exe), "symtest_global_fn")
    f_lib = frames[3 * names.index("symtest_lib_func")]
    assert f_lib.offset == symbol_offset(str(lib), "symtest_lib_func")


# ----------------------------------------------------------- user space: live
@pytest.mark.parametrize("variant", ["pie", "nopie"])
def test_user_frames_named(built, variant):
    prog = Prog(built[variant])
    try:
        sym = Symbolizer()
        _check_names(prog, sym.user, built[variant], built["lib"])
        assert sym.unresolved == 0 and sym.resolved == 15
        # warm cache: same answers
        _check_names(prog, sym.user, built[variant], built["lib"])
        assert sym.unresolved_ratio() == 0.0
    finally:
        prog.stop()


def test_cxx_method_demangled(built):
    prog = Prog(built["cxx"])
    try:
        (f,) = Symbolizer().user(prog.pid, [prog.addrs["symtest::Widget::spin"] + 2])
        assert f.name == "symtest::Widget::spin(int)"
        assert Symbolizer(demangle=False).user(prog.pid, [prog.addrs["symtest::Widget::spin"]])[0].name == (
            "_ZN7symtest6Widget4spinEi"
        )
    finally:
        prog.stop()


def test_unknown_frames_in_module_and_outside(pie):
    sym = Symbolizer()
    maps = read_maps(pie.pid)
    exe_map = next(m for m in maps if m.path == str(pie.path))
    # an address inside the executable's text but before any function symbol (.init/.plt)
    unnamed = None
    elf = ElfSymbols.load(str(pie.path))
    for a in range(exe_map.start, exe_map.end, 4):
        v = elf.offset_to_vaddr(exe_map.file_offset(a))
        if v is not None and elf.lookup(v) is None:
            unnamed = a
            break
    assert unnamed is not None
    f_mod, f_none = sym.user(pie.pid, [unnamed, 0x10])
    off = exe_map.file_offset(unnamed)
    assert f_mod == Frame(
        f"{pie.path.name}+0x{off:x}", kind="unknown", module=str(pie.path), offset=off, address=unnamed
    )
    assert f_none.name == "[unknown]" and f_none.kind == "unknown" and f_none.address == 0x10
    assert sym.unresolved == 2 and sym.unresolved_ratio() == 1.0


def test_deleted_binary_still_resolves(built, tmp_path):
    exe = tmp_path / "symtest_gone"
    shutil.copy(built["pie"], exe)
    prog = Prog(exe)
    try:
        exe.unlink()
        maps = read_maps(prog.pid)
        m = next(m for m in maps if m.path == str(exe))
        assert m.deleted
        (f,) = Symbolizer().user(prog.pid, [prog.addrs["symtest_static_fn"] + 1])
        assert f.name == "symtest_static_fn" and f.module == str(exe)
    finally:
        prog.stop()


def test_process_exited_before_resolving(built):
    prog = Prog(built["pie"])
    addrs = [prog.addrs[n] for n in MAIN_FUNCS + LIB_FUNCS]
    sym_warm = Symbolizer()
    sym_warm.user(prog.pid, addrs[:1])  # maps cached while alive
    prog.stop()
    assert prog.proc.returncode == 0
    frames = Symbolizer().user(prog.pid, addrs)
    assert [f.name for f in frames] == ["[unknown]"] * len(addrs)
    assert all(f.kind == "unknown" and f.address == a for f, a in zip(frames, addrs, strict=True))
    # a Symbolizer that saw the process alive keeps naming its addresses after exit
    assert [f.name for f in sym_warm.user(prog.pid, addrs)] == list(MAIN_FUNCS + LIB_FUNCS)


def test_exited_process_with_deleted_binary_gives_module_offset(built, tmp_path):
    exe = tmp_path / "symtest_short"
    shutil.copy(built["pie"], exe)
    prog = Prog(exe)
    sym = Symbolizer(elf_cache=ElfCache())
    # maps cached (through a libc address), the executable itself not read yet
    libc_addr = next(m.start for m in read_maps(prog.pid) if "libc" in m.path)
    sym.user(prog.pid, [libc_addr])
    prog.stop()
    exe.unlink()
    addr = prog.addrs["symtest_static_fn"]
    (f,) = sym.user(prog.pid, [addr])
    off = symbol_offset(str(built["pie"]), "symtest_static_fn")
    assert f == Frame(f"symtest_short+0x{off:x}", kind="unknown", module=str(exe), offset=off, address=addr)


def test_same_file_parsed_once(built):
    a, b = Prog(built["pie"]), Prog(built["pie"])
    try:
        cache = ElfCache()
        sym = Symbolizer(elf_cache=cache)
        for p in (a, b):
            assert sym.user(p.pid, [p.addrs["symtest_global_fn"]])[0].name == "symtest_global_fn"
        assert cache.loads == 1
    finally:
        a.stop()
        b.stop()


def test_pid_reuse_detected_by_start_time(pie):
    assert start_time(pie.pid) == start_time(pie.pid) is not None
    assert start_time(os.getpid()) != start_time(pie.pid) or os.getpid() == pie.pid
    assert ns_pid(pie.pid) == pie.pid  # same pid namespace here


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def test_container_process_resolves_through_its_root(tmp_path):
    """A process in its own mount + pid namespace (as in a container): its binary lives
    at a path that does not exist on the host, and its perf map is /tmp/perf-<nspid>.map
    in its own /tmp."""
    src = tmp_path / "ctr"
    src.mkdir()
    _run(
        ["gcc", *CFLAGS, "-fPIC", "-shared", "-o", str(src / "libsymtest.so"), str(CPROGS / "symtest_lib.c")]
    )
    _run(
        ["gcc", *CFLAGS, "-fPIE", "-pie", "-o", str(src / "symtest_ctr"), str(CPROGS / "symtest_main.c")]
        + ["-L", str(src), "-lsymtest", "-Wl,-rpath,$ORIGIN"]
    )
    script = (
        f"mount -t tmpfs none /srv && cp {src}/* /srv/ && mount -t tmpfs none /tmp && exec /srv/symtest_ctr"
    )
    unshare = ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", script]
    proc = subprocess.Popen(unshare, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        addrs = {}
        for line in proc.stdout:
            key, _, value = line.strip().rpartition(" ")
            if key == "ready":
                break
            addrs[key] = int(value, 16)
        (pid,) = _children(proc.pid)
        assert not os.path.exists("/srv/symtest_ctr")  # only inside the namespace
        assert ns_pid(pid) == 1
        sym = Symbolizer()
        names = ["symtest_static_fn", "symtest_lib_inner"]
        frames = sym.user(pid, [addrs[n] + 2 for n in names])
        assert [(f.name, f.module) for f in frames] == [
            ("symtest_static_fn", "/srv/symtest_ctr"),
            ("symtest_lib_inner", "/srv/libsymtest.so"),
        ]
        # the runtime writes its perf map as its own pid sees it, in its own /tmp
        Path(f"/proc/{pid}/root/tmp/perf-1.map").write_text("20000000 40 ctr_jitted\n")
        (jf,) = Symbolizer().user(pid, [0x20000010])
        assert (jf.name, jf.kind) == ("ctr_jitted", "jit")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


# ----------------------------------------------------- stripped + debug files
def test_stripped_binary_uses_build_id_debug_file(built, tmp_path):
    exe = tmp_path / "symtest_stripped"
    shutil.copy(built["pie"], exe)
    bid = read_build_id(str(exe))
    assert bid and len(bid) == 40
    dbg_dir = tmp_path / "debug"
    dbg = dbg_dir / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
    dbg.parent.mkdir(parents=True)
    _run(["objcopy", "--only-keep-debug", str(exe), str(dbg)])
    _run(["strip", "--strip-all", str(exe)])
    stripped = ElfSymbols.load(str(exe), debug_dirs=())
    assert "symtest_static_fn" not in stripped.names  # local symbol: gone with .symtab
    prog = Prog(exe)
    try:
        (f,) = Symbolizer(debug_dirs=[str(dbg_dir)]).user(prog.pid, [prog.addrs["symtest_static_fn"] + 1])
        assert f.name == "symtest_static_fn"
        (g,) = Symbolizer(debug_dirs=[str(tmp_path / "nowhere")]).user(
            prog.pid, [prog.addrs["symtest_static_fn"]]
        )
        assert g.kind == "unknown" and g.name.startswith("symtest_stripped+0x")
    finally:
        prog.stop()


def test_stripped_binary_uses_debuglink(built, tmp_path):
    exe = tmp_path / "symtest_dl"
    shutil.copy(built["nopie"], exe)
    _run(["objcopy", "--only-keep-debug", str(exe), str(tmp_path / "symtest_dl.debug")])
    _run(["strip", "--strip-all", "--remove-section=.note.gnu.build-id", str(exe)])
    _run(["objcopy", f"--add-gnu-debuglink={tmp_path / 'symtest_dl.debug'}", str(exe)])
    elf = ElfSymbols.load(str(exe), debug_dirs=())
    assert elf.debuglink is not None and elf.debuglink[0] == "symtest_dl.debug"
    assert str(tmp_path / "symtest_dl.debug") in elf.symbols_from
    assert "symtest_static_fn" in elf.names


def test_stripped_binary_uses_minidebuginfo(built, tmp_path):
    """Fedora-style MiniDebugInfo: an xz-compressed ELF holding .symtab in .gnu_debugdata."""
    import lzma

    exe = tmp_path / "symtest_mini"
    shutil.copy(built["pie"], exe)
    _run(["objcopy", "--only-keep-debug", str(exe), str(tmp_path / "mini.debug")])
    (tmp_path / "mini.xz").write_bytes(lzma.compress((tmp_path / "mini.debug").read_bytes()))
    _run(["strip", "--strip-all", "--remove-section=.note.gnu.build-id", str(exe)])
    _run(["objcopy", f"--add-section=.gnu_debugdata={tmp_path / 'mini.xz'}", str(exe)])
    elf = ElfSymbols.load(str(exe), debug_dirs=())
    assert "minidebuginfo" in elf.symbols_from
    assert "symtest_static_fn" in elf.names


# ------------------------------------------------------------ ELF / uprobes
def _libc_path() -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if re.search(r"/libc[.-][^/]*so", path):
                return path
    raise AssertionError("libc not mapped in this process")


def _load_segments(path: str) -> list[tuple[int, int, int]]:
    out = subprocess.run(["readelf", "-lW", path], check=True, capture_output=True, text=True).stdout
    segs = []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "LOAD":
            segs.append((int(parts[1], 16), int(parts[2], 16), int(parts[4], 16)))  # offset, vaddr, filesz
    return segs


def test_symbol_offset_agrees_with_nm_for_libc_malloc():
    libc = _libc_path()
    nm = subprocess.run(
        ["nm", "-D", "--defined-only", libc], check=True, capture_output=True, text=True
    ).stdout
    (vaddr,) = {
        int(line.split()[0], 16)
        for line in nm.splitlines()
        if re.fullmatch(r"malloc(@@?\S+)?", line.split()[-1])
    }
    seg = next(s for s in _load_segments(libc) if s[1] <= vaddr < s[1] + s[2])
    expected = vaddr - seg[1] + seg[0]
    assert symbol_offset(libc, "malloc") == expected
    assert ("malloc", expected) in find_symbols(libc, "mall*")
    assert all(n.startswith("mall") for n, _ in find_symbols(libc, "mall*"))
    assert find_symbols(libc, "malloc") == [("malloc", expected)]
    with pytest.raises(SymbolError):
        symbol_offset(libc, "no_such_function_xyz")


def test_symbol_offset_nopie_converts_vaddr(built):
    exe = str(built["nopie"])
    nm = subprocess.run(["nm", exe], check=True, capture_output=True, text=True).stdout
    vaddr = next(
        int(line.split()[0], 16) for line in nm.splitlines() if line.split()[-1] == "symtest_global_fn"
    )
    seg = next(s for s in _load_segments(exe) if s[1] <= vaddr < s[1] + s[2])
    assert vaddr >= 0x400000  # absolute address in a non-PIE executable
    assert symbol_offset(exe, "symtest_global_fn") == vaddr - seg[1] + seg[0]
    assert [n for n, _ in find_symbols(exe, "symtest_*_fn")] == ["symtest_global_fn", "symtest_static_fn"]


def test_elf_symbols_libc_lookup():
    libc = _libc_path()
    elf = ElfSymbols.load(libc)
    off = symbol_offset(libc, "malloc")
    vaddr = elf.offset_to_vaddr(off)
    assert elf.vaddr_to_offset(vaddr) == off
    name, start = elf.lookup(vaddr + 3)
    assert name == "malloc" and start == vaddr  # preferred over its alias __libc_malloc
    assert elf.build_id == read_build_id(libc)


def test_not_an_elf(tmp_path):
    p = tmp_path / "x.so"
    p.write_bytes(b"not an elf at all")
    with pytest.raises(SymbolError):
        ElfSymbols.load(str(p))


# ---------------------------------------------------------------- vdso, maps
def test_vdso_frame():
    maps = read_maps(os.getpid())
    vdso_map = next(m for m in maps if m.path == "[vdso]")
    sym = Symbolizer()
    from bpfscope.symbols.resolver import vdso_symbols

    vdso = vdso_symbols()
    assert vdso is not None
    i = next(i for i, n in enumerate(vdso.names) if "clock_gettime" in n)
    (f,) = sym.user(os.getpid(), [vdso_map.start + vdso.starts[i] + 1])
    assert "clock_gettime" in f.name and f.module == "[vdso]" and f.kind == "user"


def test_parse_maps_lines():
    data = (
        b"55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1234   /usr/bin/prog\n"
        b"55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 1234   /usr/bin/prog\n"
        b"7f0000000000-7f0000001000 r-xp 00000000 00:00 0 \n"
        b"7f0000002000-7f0000003000 r-xp 00002000 08:02 99     /opt/app/lib with space.so (deleted)\n"
        b"7ffd1a3f0000-7ffd1a3f2000 r-xp 00000000 00:00 0      [vdso]\n"
        b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]\n"
    )
    maps = parse_maps(data)
    assert [m.path for m in maps] == [
        "/usr/bin/prog",
        "",
        "/opt/app/lib with space.so",
        "[vdso]",
        "[vsyscall]",
    ]
    prog, anon, deleted, vdso, vsys = maps
    assert prog.offset == 0x1000 and prog.dev == (0xFD, 1) and prog.inode == 1234 and prog.file_backed
    assert prog.file_offset(0x55D0C0A01010) == 0x1010
    assert anon.anonymous and vdso.anonymous and vsys.anonymous
    assert deleted.deleted and deleted.file_backed and deleted.dev == (8, 2)
    assert len(parse_maps(data, exec_only=False)) == 6


# ------------------------------------------------------------------- kallsyms
def _unique_kernel_text_symbol() -> tuple[str, int]:
    seen: dict[int, list[str]] = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if parts[1] in "tT":
                seen.setdefault(int(parts[0], 16), []).append(parts[2])
    for name in ("vfs_read", "do_sys_openat2", "schedule", "ksys_write"):
        addrs = [a for a, ns in seen.items() if name in ns]
        if len(addrs) == 1 and seen[addrs[0]] == [name] and addrs[0]:
            return name, addrs[0]
    raise AssertionError("no well-known kernel symbol with a unique address (kptr_restrict?)")


def test_kallsyms_resolves_known_symbol():
    name, addr = _unique_kernel_text_symbol()
    ks = KernelSymbols()
    assert len(ks) > 1000
    f = ks.resolve(addr + 4)
    assert (f.name, f.kind, f.module, f.address) == (name, "kernel", "[kernel.kallsyms]", addr + 4)
    assert ks.resolve(addr).name == name
    assert ks.lookup_name(name) == addr
    assert ks.lookup_name("no_such_kernel_symbol_xyz") is None
    assert ks.resolve(0x1000).kind == "unknown"
    sym = Symbolizer(kernel_symbols=ks)
    frames = sym.kernel([addr, addr + 1, 0x1000])
    assert [fr.name for fr in frames] == [name, name, "[unknown]"]
    assert sym.resolved == 2 and sym.unresolved == 1


def test_kallsyms_parse_modules_and_aliases():
    data = (
        b"ffffffff81000000 T _stext\n"
        b"ffffffff81000000 T _text\n"
        b"ffffffff81000100 t __pfx_foo\n"
        b"ffffffff81000110 T foo\n"
        b"ffffffff81000110 t __foo_alias\n"
        b"ffffffff81200000 D some_data\n"
        b"0000000000000000 A fixed_percpu_data\n"
        b"ffffffffc0001000 t mod_fn\t[mymod]\n"
        b"ffffffffc0000f00 t mod_first\t[mymod]\n"
        b"ffffffffc0005000 t bpf_prog_6deef7357e7b4530_hello\t[bpf]\n"
    )
    ks = KernelSymbols(data=data)
    assert ks.resolve(0xFFFFFFFF81000115).name == "foo"
    assert ks.resolve(0xFFFFFFFF81000115).offset == 0x115  # relative to _text
    f = ks.resolve(0xFFFFFFFFC0001004)
    assert (f.name, f.module, f.offset) == ("mod_fn", "[mymod]", 0x104)
    assert ks.resolve(0xFFFFFFFFC0005010).name == "bpf_prog_6deef7357e7b4530_hello"
    assert ks.lookup_name("foo") == 0xFFFFFFFF81000110
    assert ks.resolve(0xFFFFFFFF81000000).name == "_text"  # "_stext"/"_text": shorter wins at equal rank


# ------------------------------------------------------------------ perf maps
def test_perf_map_parse():
    pm = PerfMap.parse(
        b"7f0010000000 40 py::compute:/app/x.py\n"
        b"7f0010000040 0x20 LazyCompile:*hot /app/y.js:3\n"
        b"garbage line\n"
        b"7f0010000100 10 old\n"
        b"7f0010000100 18 new\n"
    )
    assert len(pm) == 3
    assert pm.lookup(0x7F0010000010) == ("py::compute:/app/x.py", 0x7F0010000000)
    assert pm.lookup(0x7F001000005F) == ("LazyCompile:*hot /app/y.js:3", 0x7F0010000040)
    assert pm.lookup(0x7F0010000060) is None
    assert pm.lookup(0x7F0010000114)[0] == "new"  # later line for the same start wins
    assert pm.lookup(0x1000) is None


def test_perf_map_file_for_live_process(pie):
    path = Path(f"/tmp/perf-{pie.pid}.map")
    base = 0x10000000  # not mapped in the process: as for JIT code the maps missed
    path.write_text(f"{base:x} 100 jitted_one\n{base + 0x100:x} 80 jitted_two\n")
    try:
        frames = Symbolizer().user(pie.pid, [base + 8, base + 0x17F, base + 0x200])
        assert [(f.name, f.kind) for f in frames] == [
            ("jitted_one", "jit"),
            ("jitted_two", "jit"),
            ("[unknown]", "unknown"),
        ]
        assert frames[1].offset == 0x7F
    finally:
        path.unlink()


def test_node_perf_basic_prof(tmp_path):
    node = shutil.which("node")
    assert node, "node is part of this machine kind (perf map producer under test)"
    script = tmp_path / "jit.js"
    script.write_text(
        "function symtestHotLoop(n) { let s = 0; for (let i = 0; i < n; i++) s += i % 7; return s; }\n"
        "let t = 0; for (let k = 0; k < 2000; k++) t += symtestHotLoop(10000);\n"
        "process.stdout.write('ready ' + t + '\\n');\n"
        "process.stdin.resume(); process.stdin.on('end', () => process.exit(0));\n"
    )
    proc = subprocess.Popen(
        [node, "--perf-basic-prof", str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # node also writes an isolate-*-v8.log into its working directory
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        pm_path = Path(f"/tmp/perf-{proc.pid}.map")
        deadline = time.monotonic() + 10
        entry = None
        while entry is None and time.monotonic() < deadline:
            if pm_path.exists():
                for line in pm_path.read_text().splitlines():
                    if "symtestHotLoop" in line:
                        start, size, name = line.split(" ", 2)
                        entry = (int(start, 16), int(size, 16), name)
            time.sleep(0.1)
        assert entry is not None, "node wrote no perf map entry for the hot function"
        (f,) = Symbolizer().user(proc.pid, [entry[0] + entry[1] // 2])
        assert f.kind == "jit" and "symtestHotLoop" in f.name
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        Path(f"/tmp/perf-{proc.pid}.map").unlink(missing_ok=True)


# ------------------------------------------------------------------ demangling
def test_demangle_cxx():
    assert (
        demangle("_ZNSt6vectorIiSaIiEE9push_backERKi")
        == "std::vector<int, std::allocator<int> >::push_back(int const&)"
    )
    assert demangle("_Z3foov.cold") == "foo() [clone .cold]"


def test_demangle_passthrough():
    for name in ("main", "__libc_malloc", "vfs_read", "_start", "py::f:/x.py", "_Zbogus", ""):
        assert demangle(name) == name


def test_demangle_rust_legacy():
    assert demangle("_ZN3foo3bar17h0123456789abcdefE") == "foo::bar"
    assert (
        demangle(
            "_ZN71_$LT$Test$u20$$u2b$$u20$$u27$static$u20$as$u20$foo..Bar$LT$Test$GT$$GT$3bar17h930b740aa94f1d3aE"
        )
        == "<Test + 'static as foo::Bar<Test>>::bar"
    )
    assert demangle("_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17h2f1b8b2b2a1c0d3eE") == (
        "std::rt::lang_start::{{closure}}"
    )
    assert (
        demangle("_ZN4core3fmt9Formatter3pad17h5ee62e7a0bc5bb1dE.llvm.123456") == "core::fmt::Formatter::pad"
    )
    assert demangle_rust_legacy("_ZN3foo3barEv") is None  # C++ with parameters


def test_demangle_rust_v0():
    name = "_RINvMNtCsgEmfK2I1SDS_4core3stre18trim_start_matchesReECsgY6Mt91CT9J_14rustc_demangle"
    # pyderust when installed, else binutils c++filt; with neither the name passes through
    assert demangle(name) == ("<str>::trim_start_matches::<&str>" if rust_v0_backend() else name)
    assert demangle("_Rnot_valid") == "_Rnot_valid"
