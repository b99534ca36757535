"""opensnoop: trace open(), openat(), openat2() and creat(), as BCC's opensnoop prints them."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from typing import Any

from ..errors import ToolUnavailable, UsageError
from ..options import DURATION, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Column, Notice, Result
from ..toolkit import cstr, object_path, open_object, stream_events
from ._histtool import tracepoint_exists

SYSCALLS = ("open", "openat", "openat2", "creat")  # index = enum in opensnoop.bpf.c

# open(2) flags by name (this host's values; BPF sees the same ABI), most specific first.
_FLAG_NAMES = [
    "O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK",
    "O_DSYNC", "O_ASYNC", "O_DIRECT", "O_LARGEFILE", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME",
    "O_CLOEXEC", "O_PATH", "O_TMPFILE", "O_SYNC",
]
OPEN_FLAGS = {n: getattr(os, n) for n in _FLAG_NAMES if hasattr(os, n)}
OPEN_FLAGS["O_LARGEFILE"] = OPEN_FLAGS.get("O_LARGEFILE") or 0o100000  # Python reports 0 on x86-64
FLAG_CHOICES = ("O_RDONLY", *OPEN_FLAGS)


def flags_text(flags: int) -> str:
    """O_WRONLY|O_CREAT|O_TRUNC style (O_SYNC includes O_DSYNC; O_TMPFILE includes O_DIRECTORY)."""
    acc = flags & 3
    parts = [{0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}.get(acc, "O_ACCMODE")]
    rest = flags & ~3
    for name in ("O_TMPFILE", "O_SYNC"):  # multi-bit flags first
        bits = OPEN_FLAGS.get(name, 0)
        if bits and rest & bits == bits:
            parts.append(name)
            rest &= ~bits
    for name, bits in OPEN_FLAGS.items():
        if name in ("O_WRONLY", "O_RDWR") or not bits:
            continue
        if rest & bits == bits:
            parts.append(name)
            rest &= ~bits
    if rest:
        parts.append(f"0x{rest:x}")
    return "|".join(parts)


@register
class Opensnoop(Tool):
    name = "opensnoop"
    help = "trace open()/openat()/openat2()/creat(): PID COMM FD ERR PATH"
    output = "events"
    streaming = True
    hooks = HookPlan((Hook("tracepoint", ("tracepoint",), "syscalls:sys_{enter,exit}_{open,openat,openat2,creat}"),))
    options = [
        Option("timestamp", bool, False, "include a timestamp column (seconds since tracing started)",
               ("-T", "--timestamp")),
        Option("print_uid", bool, False, "print a UID column", ("-U", "--print-uid")),
        Option("failed", bool, False, "only show failed opens", ("-x", "--failed")),
        Option("pid", int, None, "trace this process ID only (filtered in the kernel)", ("-p", "--pid"),
               min=1, max=2**22, metavar="PID"),
        Option("tid", int, None, "trace this thread ID only (filtered in the kernel)", ("-t", "--tid"),
               min=1, max=2**22, metavar="TID"),
        Option("uid", int, None, "trace this UID only (filtered in the kernel)", ("-u", "--uid"),
               min=0, max=2**32 - 2, metavar="UID"),
        Option("name", str, None, "only processes whose name contains NAME (filtered in the kernel)",
               ("-n", "--name"), pattern=r"[^\x00/]{1,15}", metavar="NAME", max_len=15),
        Option("extended_fields", bool, False, "show extended fields (FLAGS)", ("-e", "--extended_fields")),
        Option("flag_filter", str, None, "only opens with this flag, e.g. O_WRONLY (repeat for any of several)",
               ("-f", "--flag_filter"), multiple=True, choices=FLAG_CHOICES, metavar="FLAG"),
        DURATION,
    ]
    examples = [
        "bpfscope opensnoop            # trace all open() syscalls",
        "bpfscope opensnoop -T         # include a timestamp column",
        "bpfscope opensnoop -x         # only failed opens",
        "bpfscope opensnoop -p 181     # only PID 181",
        "bpfscope opensnoop -n main    # only process names containing 'main'",
        "bpfscope opensnoop -e         # show the FLAGS column",
        "bpfscope opensnoop -f O_WRONLY -f O_RDWR  # only opens for writing",
        "bpfscope opensnoop --json     # one JSON object per open",
    ]

    @classmethod
    def text_columns(cls, ns: Any) -> list[Column]:
        cols = []
        if getattr(ns, "timestamp", False):
            cols.append(Column("TIME(s)", "elapsed", 14, fmt=lambda v, r: f"{v:.9f}"))
        if getattr(ns, "print_uid", False):
            cols.append(Column("UID", "uid", 6))
        cols += [
            Column("TID" if getattr(ns, "tid", None) else "PID", "tid" if getattr(ns, "tid", None) else "pid", 6),
            Column("COMM", "comm", 16),
            Column("FD", "fd", 4, align=">"),
            Column("ERR", "err", 3, align=">"),
        ]
        if getattr(ns, "extended_fields", False):
            cols.append(Column("FLAGS", "flags", 8, fmt=lambda v, r: f"{v:08o}"))
        cols.append(Column("PATH", "path"))
        return cols

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        present = [s for s in SYSCALLS if tracepoint_exists("syscalls", f"sys_enter_{s}")
                   and tracepoint_exists("syscalls", f"sys_exit_{s}")]
        if not present:
            raise ToolUnavailable("no syscalls:sys_enter_open* tracepoints (kernel without CONFIG_FTRACE_SYSCALLS)")
        with open_object(object_path("opensnoop")) as obj:
            if opts.pid:
                obj.set_global("targ_tgid", opts.pid)
            if opts.tid:
                obj.set_global("targ_tid", opts.tid)
            if opts.uid is not None:
                obj.set_global("targ_uid", opts.uid)
            obj.set_global("targ_failed", bool(opts.failed))
            if opts.name:
                raw = opts.name.encode()
                if len(raw) > 15:
                    raise UsageError("name: process names (comm) are at most 15 bytes")
                obj.set_global("targ_comm", raw)
                obj.set_global("targ_comm_len", len(raw))
            if opts.flag_filter:
                mask = 0
                for f in opts.flag_filter:
                    if f == "O_RDONLY":
                        obj.set_global("targ_flags_rdonly", True)
                    else:
                        mask |= OPEN_FLAGS[f]
                obj.set_global("targ_flags", mask)
            obj.only_programs({f"tp_{d}_{s}" for s in present for d in ("enter", "exit")})
            obj.load()
            start_ns = time.monotonic_ns()
            me = os.getpid()  # our own opens while attaching (tracefs ids) are noise
            for s in present:
                for d in ("enter", "exit"):
                    obj.program(f"tp_{d}_{s}").attach_tracepoint("syscalls", f"sys_{d}_{s}")
            ctx.mode = "tracepoint"
            ctx.mark_attached()
            yield Notice(f"Tracing {', '.join(present)} (tracepoint mode)... Hit Ctrl-C to end.")

            event_t = obj.struct("event")
            size = ctypes.sizeof(event_t)

            def decode(raw: bytes) -> dict[str, Any] | None:
                e = event_t.from_buffer_copy(raw[:size].ljust(size, b"\0"))
                if e.pid == me:
                    return None
                ret = e.ret
                return {
                    "pid": e.pid,
                    "tid": e.tid,
                    "uid": e.uid,
                    "comm": cstr(e.comm),
                    "fd": ret if ret >= 0 else -1,
                    "err": -ret if ret < 0 else 0,
                    "ret": ret,
                    "flags": e.flags,
                    "flags_text": flags_text(e.flags),
                    "mode": e.mode,
                    "syscall": SYSCALLS[e.syscall] if e.syscall < len(SYSCALLS) else str(e.syscall),
                    "path": cstr(e.path),
                    "path_truncated": e.path_len >= len(e.path),
                    "cgroup_id": e.cgroup_id,
                    "timestamp_ns": e.ts_ns,
                    "elapsed": (e.ts_ns - start_ns) / 1e9,
                    "time_of_day": time.strftime("%H:%M:%S"),
                }

            yield from stream_events(obj, ctx, decode)
