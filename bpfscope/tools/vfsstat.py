"""vfsstat: VFS operations per second, one row per interval, as BCC's vfsstat prints them.

Kernel mode counts calls of vfs_read, vfs_write, vfs_fsync, vfs_open, vfs_create, vfs_unlink,
vfs_mkdir and vfs_rmdir (fentry, else kprobes).  Where neither is allowed, syscall mode counts
system calls at sys_enter, mapped to the same columns:

  READ    read readv pread64 preadv preadv2       WRITE   write writev pwrite64 pwritev pwritev2
  FSYNC   fsync fdatasync                          OPEN    open openat openat2 creat open_by_handle_at
  CREATE  creat, and opens with O_CREAT            UNLINK  unlink, unlinkat
  MKDIR   mkdir mkdirat                            RMDIR   rmdir, unlinkat(AT_REMOVEDIR)

The two modes differ where the kernel does: a readv() is one vfs_readv call, open(O_CREAT) calls
the filesystem's create directly (vfs_create sees mknod and stacked filesystems), exec() opens
files through vfs_open.  The header says which mode runs.  Counters are per-CPU and never
cleared (rates are differences), so nothing is lost.

Which syscall hook (bench/overhead.py, this project's 6.18 VM, best of 7 rounds, ns added per call):
                                  counted read(2)   other syscalls   exit (Ctrl-C)
  tp_btf sys_enter (1 link)            +138            +151             0.02 s
  raw_tp sys_enter (1 link)            +139             +76             0.02 s
  per-syscall tracepoints (20 links)   +177             +41             0.89 s
One filtered program on sys_enter runs for every system call of the machine; per-syscall
tracepoints cost the uncounted calls less, but each of their 20 links takes 50-80 ms to detach,
serialized in the kernel.  The default is the single tp_btf link (Ctrl-C returns at once, raw_tp
where there is no BTF); --mode syscall-tp trades a ~1 s exit for less cost on the system calls
vfsstat does not count.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..bpf import libbpf as L
from ..bpf import mounts
from ..errors import BpfscopeError, UsageError
from ..options import CGROUP, PID, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Notice, RateTable, Result, Summary
from ..toolkit import object_path, open_object
from . import _syscalls
from ._task_filter import fill_cgroup_filter, set_task_filter

if TYPE_CHECKING:
    from ..bpf.object import BpfObject

STATS = ("READ", "WRITE", "FSYNC", "OPEN", "CREATE", "UNLINK", "MKDIR", "RMDIR")
COLUMNS = [f"{s}/s" for s in STATS]
# kernel function -> column; the last two are static and may be inlined away
KERNEL_FUNCS = {
    "vfs_read": "READ", "vfs_write": "WRITE", "vfs_fsync": "FSYNC", "vfs_open": "OPEN",
    "vfs_create": "CREATE", "vfs_unlink": "UNLINK", "vfs_mkdir": "MKDIR", "vfs_rmdir": "RMDIR",
    "vfs_readv": "READ", "vfs_writev": "WRITE",
}
OPTIONAL_FUNCS = {"vfs_readv", "vfs_writev"}
# flag kinds of vfsstat.bpf.c (enum flag_kind)
K_PLAIN, K_OPEN, K_OPENAT, K_OPENAT2, K_UNLINKAT, K_CREAT = range(6)
SYSCALLS = {  # name -> (column, kind)
    **{n: ("READ", K_PLAIN) for n in ("read", "readv", "pread64", "preadv", "preadv2")},
    **{n: ("WRITE", K_PLAIN) for n in ("write", "writev", "pwrite64", "pwritev", "pwritev2")},
    "fsync": ("FSYNC", K_PLAIN), "fdatasync": ("FSYNC", K_PLAIN),
    "open": ("OPEN", K_OPEN), "openat": ("OPEN", K_OPENAT), "openat2": ("OPEN", K_OPENAT2),
    "creat": ("OPEN", K_CREAT), "open_by_handle_at": ("OPEN", K_PLAIN),
    "unlink": ("UNLINK", K_PLAIN), "unlinkat": ("UNLINK", K_UNLINKAT),
    "mkdir": ("MKDIR", K_PLAIN), "mkdirat": ("MKDIR", K_PLAIN),
    "rmdir": ("RMDIR", K_PLAIN),
}
HOOKS = HookPlan(
    (
        Hook("fentry", ("fentry",), "fentry on vfs_read, vfs_write, vfs_fsync, vfs_open, vfs_create..."),
        Hook("kprobe", ("kprobe",), "kprobes on vfs_read, vfs_write, vfs_fsync, vfs_open, vfs_create..."),
        Hook("syscall", ("tp_btf",), "tp_btf sys_enter of the read/write/fsync/open/creat/unlink/mkdir/rmdir calls"),
        Hook("syscall-raw", ("raw_tp",), "raw_tp sys_enter of the read/write/fsync/open/creat/unlink/mkdir/rmdir calls"),
        Hook("syscall-tp", ("tracepoint",), "syscalls:sys_enter_<name> tracepoints of the read/write/fsync/open/... calls"),
    ),
    hint="vfsstat needs fentry, kprobes or raw tracepoints",
)


@register
class Vfsstat(Tool):
    name = "vfsstat"
    help = "count VFS calls per second: READ/s WRITE/s FSYNC/s OPEN/s CREATE/s UNLINK/s MKDIR/s RMDIR/s"
    description = (
        "Kernel mode hooks the vfs_* functions (fentry, else kprobes); syscall mode (no kprobes, no\n"
        "fentry) counts the read/write/fsync/open/creat/unlink/mkdir/rmdir system calls at sys_enter.\n"
        "The header line says which mode runs."
    )
    output = "rates"
    hooks = HOOKS
    options = [
        Option("interval", float, 1.0, "output interval, seconds", nargs="?", min=0.1, max=86400),
        Option("count", int, None, "number of outputs (default: until Ctrl-C)", nargs="?", min=1, max=10**9),
        PID,
        CGROUP,
        Option("timestamp", bool, True, "TIME column (always on, as in BCC's vfsstat)", ("-T", "--timestamp")),
        Option("mode", str, None, "force a hook: fentry, kprobe, syscall (one tp_btf link), syscall-raw (one raw_tp"
               " link), syscall-tp (a tracepoint link per system call)", ("--mode",),
               choices=("fentry", "kprobe", "syscall", "syscall-raw", "syscall-tp")),
    ]
    examples = [
        "bpfscope vfsstat          # one row per second until Ctrl-C",
        "bpfscope vfsstat 5 10     # ten 5-second rows",
        "bpfscope vfsstat -p 181   # one process only",
        "bpfscope vfsstat --json   # one JSON object per interval (rates and counts)",
    ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        if opts.pid and not os.path.exists(f"/proc/{opts.pid}"):
            raise UsageError(f"no process {opts.pid}")
        hook = self.mode(opts, ctx.features)
        mode = hook.mode
        with open_object(object_path("vfsstat")) as obj:
            cg_fd = set_task_filter(obj, opts.pid, opts.cgroup)
            funcs = _kernel_funcs(need_btf=mode == "fentry") if mode in ("fentry", "kprobe") else []
            obj.only_programs(programs(mode, funcs))
            obj.load()
            fill_cgroup_filter(obj, cg_fd)
            title = attach(obj, mode, funcs)
            ctx.mode = mode
            ctx.mark_attached()
            yield Notice(f"Tracing VFS operations ({mode} mode)... Hit Ctrl-C to end.")
            yield from self._loop(obj, opts, ctx, title)
            yield Summary(lost_events=0)

    def _loop(self, obj, opts: Options, ctx: RunContext, title: str) -> Iterator[RateTable]:  # noqa: ANN001
        counters = obj.map("counters")
        counters.value_type = ctypes.c_uint64

        def read() -> list[int]:
            return [sum(v) if isinstance(v, list) else v for v in counters.array_values()]

        # the map was created empty at load: counting started from zero before attach
        prev, last = [0] * len(STATS), ctx.attached_at or time.monotonic()
        printed = 0
        while ctx.wait(opts.interval):
            cur, now = read(), time.monotonic()
            dt = now - last
            delta = [c - p for c, p in zip(cur, prev, strict=True)]
            prev, last = cur, now
            row = {col: round(d / dt) for col, d in zip(COLUMNS, delta, strict=True)}
            row["counts"] = dict(zip(STATS, delta, strict=True))
            yield RateTable(COLUMNS, [row], interval=dt, title=title if not printed else "",
                            header=not printed, width=8)
            printed += 1
            if opts.count and printed >= opts.count:
                return


def programs(mode: str, funcs: list[str]) -> list[str]:
    """The programs of vfsstat.bpf.o that mode loads (funcs: _kernel_funcs() in the kernel modes)."""
    if mode in ("fentry", "kprobe"):
        return [f"{mode}_{f}" for f in funcs]
    if mode == "syscall-tp":
        return ["vfsstat_tp", "vfsstat_tp_args"]
    return ["vfsstat_btf" if mode == "syscall" else "vfsstat_raw"]


def attach(obj: BpfObject, mode: str, funcs: list[str]) -> str:
    """Attaches the loaded programs(mode, funcs); returns the header line that names the hooks."""
    if mode == "fentry":
        for f in funcs:
            obj.program(f"fentry_{f}").attach_trace()
        return "Kernel mode (fentry on " + " ".join(funcs) + ")"
    if mode == "kprobe":
        for f in funcs:
            obj.program(f"kprobe_{f}").attach_kprobe(f)
        return "Kernel mode (kprobes on " + " ".join(funcs) + ")"
    m = obj.map("syscall_stats")
    for name, (stat, kind) in SYSCALLS.items():
        m.update(_syscalls.number(name), (kind << 8) | (STATS.index(stat) + 1))
    if mode == "syscall":
        obj.program("vfsstat_btf").attach_trace()
    elif mode == "syscall-raw":
        obj.program("vfsstat_raw").attach_raw_tracepoint("sys_enter")
    else:
        tracefs = mounts.tracefs()
        for name, (_, kind) in SYSCALLS.items():
            tp = _syscalls.tracepoint(name, tracefs)
            if tp:
                prog = "vfsstat_tp" if kind in (K_PLAIN, K_CREAT) else "vfsstat_tp_args"
                obj.program(prog).attach_tracepoint("syscalls", f"sys_enter_{tp}")
    hook_name = {"syscall": "tp_btf sys_enter", "syscall-raw": "raw_tp sys_enter",
                 "syscall-tp": "syscalls:sys_enter_<name> tracepoints"}[mode]
    return f"Syscall mode ({hook_name} of read/write/fsync/open/creat/unlink/mkdir/rmdir system calls)"


def _kernel_funcs(need_btf: bool) -> list[str]:
    """The vfs_* functions this kernel has (in BTF too, for fentry)."""
    present: set[str] = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in KERNEL_FUNCS and parts[1] in "tT":
                    present.add(parts[2])
    except OSError as e:
        raise BpfscopeError(f"cannot read /proc/kallsyms: {e.strerror}") from None
    if need_btf:
        btf = L.lib.btf__load_vmlinux_btf()
        if btf:
            try:
                present = {f for f in present if L.lib.btf__find_by_name_kind(btf, f.encode(), 12) >= 0}
            finally:
                L.lib.btf__free(btf)
    missing = [f for f in KERNEL_FUNCS if f not in present and f not in OPTIONAL_FUNCS]
    if missing:
        raise BpfscopeError(f"this kernel has no {', '.join(missing)} to hook"
                            f"{' in its BTF' if need_btf else ''}; try --mode syscall")
    return [f for f in KERNEL_FUNCS if f in present]
