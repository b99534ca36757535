"""BpfObject: one compiled .bpf.o through its life: open, configure, load, attach, close.

A run is a context manager: links are destroyed and the object closed on normal exit,
exceptions and signals (the CLI turns SIGINT/SIGTERM into an orderly stop).
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from . import libbpf as L
from .btfstruct import Btf
from .maps import Map


class Link:
    """An attachment; destroying it detaches the program."""

    def __init__(self, ptr: int, description: str):
        self._ptr = ptr
        self.description = description

    def destroy(self) -> None:
        if self._ptr:
            L.lib.bpf_link__destroy(self._ptr)  # also closes a perf event link's event fd
            self._ptr = 0

    def __repr__(self) -> str:
        return f"Link({self.description})"


class Program:
    def __init__(self, obj: BpfObject, ptr: int):
        self._obj = obj
        self._ptr = ptr
        self.name = L.lib.bpf_program__name(ptr).decode()
        self.section = (L.lib.bpf_program__section_name(ptr) or b"").decode()

    @property
    def fd(self) -> int:
        return L.lib.bpf_program__fd(self._ptr)

    @property
    def autoload(self) -> bool:
        return bool(L.lib.bpf_program__autoload(self._ptr))

    @autoload.setter
    def autoload(self, value: bool) -> None:
        L.check_int(L.lib.bpf_program__set_autoload(self._ptr, value), f"autoload {self.name}")

    def set_attach_target(self, func: str) -> None:
        """Target of an fentry/fexit/tp_btf program whose SEC() names none; before load."""
        L.check_int(
            L.lib.bpf_program__set_attach_target(self._ptr, 0, func.encode()), f"attach target {func}"
        )

    # ---- attach ----------------------------------------------------------
    def _link(self, ptr: int | None, what: str) -> Link:
        link = Link(L.check_ptr(ptr, f"attach {self.name} to {what}"), what)
        self._obj.links.append(link)
        return link

    def attach(self) -> Link:
        """Attach as the SEC() name says (libbpf auto-attach)."""
        return self._link(L.lib.bpf_program__attach(self._ptr), self.section)

    def attach_tracepoint(self, category: str, name: str) -> Link:
        return self._link(
            L.lib.bpf_program__attach_tracepoint(self._ptr, category.encode(), name.encode()),
            f"tracepoint:{category}:{name}",
        )

    def attach_raw_tracepoint(self, name: str) -> Link:
        return self._link(L.lib.bpf_program__attach_raw_tracepoint(self._ptr, name.encode()), f"raw_tp:{name}")

    def attach_trace(self) -> Link:
        """fentry/fexit/tp_btf/fmod_ret: target fixed at load time."""
        return self._link(L.lib.bpf_program__attach_trace(self._ptr), self.section)

    def attach_kprobe(self, func: str, retprobe: bool = False, cookie: int = 0) -> Link:
        """cookie: a value the program reads with bpf_get_attach_cookie() (kernel >= 5.15)."""
        opts = L.BpfKprobeOpts(sz=ctypes.sizeof(L.BpfKprobeOpts), retprobe=retprobe, bpf_cookie=cookie)
        return self._link(
            L.lib.bpf_program__attach_kprobe_opts(self._ptr, func.encode(), ctypes.byref(opts)),
            f"{'kretprobe' if retprobe else 'kprobe'}:{func}",
        )

    def attach_uprobe(
        self, path: str, offset: int = 0, func: str | None = None, retprobe: bool = False, pid: int = -1,
        cookie: int = 0,
    ) -> Link:
        """Attach at `offset` in `path` (file offset), or at symbol `func` resolved by libbpf.
        cookie: a value the program reads with bpf_get_attach_cookie() (kernel >= 5.15)."""
        opts = L.BpfUprobeOpts(sz=ctypes.sizeof(L.BpfUprobeOpts), retprobe=retprobe, bpf_cookie=cookie)
        if func:
            opts.func_name = func.encode()
        return self._link(
            L.lib.bpf_program__attach_uprobe_opts(self._ptr, pid, path.encode(), offset, ctypes.byref(opts)),
            f"{'uretprobe' if retprobe else 'uprobe'}:{path}:{func or hex(offset)}",
        )

    def attach_perf_event(self, pfd: int) -> Link:
        """Attach to an open perf event fd; the link then owns the fd (closed on destroy)."""
        try:
            return self._link(L.lib.bpf_program__attach_perf_event(self._ptr, pfd), f"perf_event fd {pfd}")
        except L.BpfError:
            os.close(pfd)
            raise

    def attach_cgroup(self, cgroup_path: str) -> Link:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ptr = L.lib.bpf_program__attach_cgroup(self._ptr, fd)
            return self._link(ptr, f"cgroup:{cgroup_path}")
        finally:
            os.close(fd)


class BpfObject:
    """An opened BPF object file. Configure (rodata, map sizes, autoload) before load()."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.exists():
            raise L.BpfError(
                f"BPF object {self.path} is missing: build it with `make bpf` (needs clang)", 2
            )
        self._ptr = L.check_ptr(L.lib.bpf_object__open_file(str(self.path).encode(), None), f"open {self.path}")
        self.links: list[Link] = []
        self.loaded = False
        self._btf: Btf | None = None
        self._maps: dict[str, Map] = {}
        self._programs: dict[str, Program] = {}
        self._extra_fds: list[int] = []

    # ---- lifecycle -------------------------------------------------------
    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detach(self) -> None:
        """Destroy every link now; the object stays loaded so its maps can still be read."""
        links, self.links = self.links, []
        _destroy_all(links)

    def close(self) -> None:
        """Detach everything, then free the object (its programs and maps go with the last fd)."""
        self.detach()
        for fd in self._extra_fds:
            os.close(fd)
        self._extra_fds = []
        if self._ptr:
            L.lib.bpf_object__close(self._ptr)
            self._ptr = 0

    def own_fd(self, fd: int) -> int:
        """Close this fd with the object (perf event fds read by programs, cgroup fds...)."""
        self._extra_fds.append(fd)
        return fd

    def load(self) -> None:
        L.recent_log.clear()
        ret = L.lib.bpf_object__load(self._ptr)
        if ret < 0:
            raise L.BpfError(f"loading {self.path.name} failed: {os.strerror(-ret)}", -ret, _verifier_tail())
        self.loaded = True

    # ---- parts -----------------------------------------------------------
    @property
    def btf(self) -> Btf:
        if self._btf is None:
            self._btf = Btf(L.check_ptr(L.lib.bpf_object__btf(self._ptr), f"BTF of {self.path.name}"))
        return self._btf

    def struct(self, name: str) -> type[ctypes.Structure]:
        """ctypes class for `struct name` as compiled into this object."""
        return self.btf.struct(name)

    def programs(self) -> list[Program]:
        out, ptr = [], None
        while True:
            ptr = L.lib.bpf_object__next_program(self._ptr, ptr)
            if not ptr:
                return out
            out.append(self.program(L.lib.bpf_program__name(ptr).decode()))

    def program(self, name: str) -> Program:
        if name not in self._programs:
            ptr = L.lib.bpf_object__find_program_by_name(self._ptr, name.encode())
            if not ptr:
                raise KeyError(f"no program {name!r} in {self.path.name}")
            self._programs[name] = Program(self, ptr)
        return self._programs[name]

    def only_programs(self, names: set[str] | list[str]) -> None:
        """Load just these programs: the chosen hook mode's, not the alternatives."""
        wanted = set(names)
        for prog in self.programs():
            prog.autoload = prog.name in wanted

    def map(self, name: str) -> Map:
        if name not in self._maps:
            ptr = L.lib.bpf_object__find_map_by_name(self._ptr, name.encode())
            if not ptr:
                raise KeyError(f"no map {name!r} in {self.path.name}")
            self._maps[name] = Map(self, ptr)
        return self._maps[name]

    def _section_map(self, section: str) -> Map:
        key = "section" + section
        if key not in self._maps:
            ptr = None
            while True:
                ptr = L.lib.bpf_object__next_map(self._ptr, ptr)
                if not ptr:
                    raise KeyError(f"{self.path.name} has no {section} section")
                if L.lib.bpf_map__name(ptr).decode().endswith(section):
                    self._maps[key] = Map(self, ptr)
                    break
        return self._maps[key]

    # ---- globals (const volatile rodata before load; .bss/.data live) -----
    def _global_var(self, name: str) -> tuple[str, int, int]:
        for section in (".rodata", ".bss", ".data"):
            var = self.btf.datasec_vars(section).get(name)
            if var:
                return section, var[0], var[1]
        raise KeyError(f"no global {name!r} in {self.path.name}")

    def set_global(self, name: str, value: int | bytes | bool) -> None:
        """Set a global before load (`const volatile` rodata: how options reach the BPF side)."""
        if self.loaded:
            raise RuntimeError(f"{name}: globals are set before load")
        section, offset, size = self._global_var(name)
        base = L.check_ptr(
            L.lib.bpf_map__initial_value(self._section_map(section)._ptr, ctypes.byref(L.c_size_t())), section
        )
        if isinstance(value, (bytes, bytearray)):
            if len(value) > size:
                raise ValueError(f"{name}: {len(value)} bytes do not fit in {size}")
            raw = bytes(value).ljust(size, b"\0")
        else:
            raw = int(value).to_bytes(size, "little", signed=int(value) < 0)
        ctypes.memmove(base + offset, raw, size)

    def get_global(self, name: str) -> int:
        """An integer global's value; after load, read from the kernel's copy (.bss/.data)."""
        section, offset, size = self._global_var(name)
        m = self._section_map(section)
        if self.loaded:
            raw = m.lookup(0)
            if raw is None:
                raise KeyError(f"{section} of {self.path.name} not readable")
            return int.from_bytes(raw[offset : offset + size], "little")
        base = L.check_ptr(L.lib.bpf_map__initial_value(m._ptr, ctypes.byref(L.c_size_t())), section)
        return int.from_bytes(ctypes.string_at(base + offset, size), "little")

    def has_global(self, name: str) -> bool:
        return any(name in self.btf.datasec_vars(s) for s in (".rodata", ".bss", ".data"))


def _destroy_all(links: list[Link]) -> None:
    """Detach links concurrently: each tracepoint detach waits ~70 ms for an RCU grace
    period in the kernel, and concurrent detaches share those waits."""
    if len(links) <= 1:
        for link in links:
            link.destroy()
        return
    import threading

    threads = [threading.Thread(target=link.destroy) for link in links]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


_LOG_BEGIN = re.compile(r"-- BEGIN PROG LOAD LOG --")


def _verifier_tail(lines: int = 25) -> str:
    """The last lines of the verifier log libbpf printed for the failing program."""
    log = list(L.recent_log)
    start = max((i for i, s in enumerate(log) if _LOG_BEGIN.search(s)), default=-1)
    body = log[start + 1 :] if start >= 0 else log
    body = [s for s in body if "END PROG LOAD LOG" not in s]
    return "\n".join(body[-lines:])


def loaded_program_ids() -> set[int]:
    """Ids of every BPF program in the kernel (tests use it to prove nothing leaked)."""
    ids: set[int] = set()
    cur = ctypes.c_uint32(0)
    nxt = ctypes.c_uint32(0)
    while L.lib.bpf_prog_get_next_id(cur.value, ctypes.byref(nxt)) == 0:
        ids.add(nxt.value)
        cur.value = nxt.value
    return ids


def program_names(ids: set[int] | None = None) -> dict[int, str]:
    """id -> name of loaded programs (bpf_prog_info.name sits at offset 64)."""
    out: dict[int, str] = {}
    for pid in sorted(ids if ids is not None else loaded_program_ids()):
        fd = L.lib.bpf_prog_get_fd_by_id(pid)
        if fd < 0:
            continue
        try:
            info = ctypes.create_string_buffer(256)
            size = ctypes.c_uint32(256)
            if L.lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) == 0:
                out[pid] = info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
        finally:
            os.close(fd)
    return out
