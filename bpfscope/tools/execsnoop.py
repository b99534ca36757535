"""execsnoop: trace new processes through execve/execveat, as BCC's execsnoop prints them."""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Iterator
from typing import Any

from ..options import DURATION, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Column, Notice, Result
from ..toolkit import cstr, object_path, open_object, stream_events

PROGRAMS = ("tp_enter_execve", "tp_exit_execve", "tp_enter_execveat", "tp_exit_execveat")


@register
class Execsnoop(Tool):
    name = "execsnoop"
    help = "trace new processes (execve/execveat): PCOMM PID PPID RET ARGS"
    output = "events"
    streaming = True
    hooks = HookPlan((Hook("tracepoint", ("tracepoint",), "syscalls:sys_{enter,exit}_execve{,at}"),))
    options = [
        Option("time", bool, False, "include a time column (seconds since start)", ("-t", "--time")),
        Option("timestamp", bool, False, "include a time of day column", ("-T", "--timestamp")),
        Option("fails", bool, False, "include failed exec()s", ("-x", "--fails")),
        Option("uid", int, None, "trace this UID only", ("-u", "--uid"), min=0, max=2**32 - 2),
        Option("pid", int, None, "trace exec()s by this PID only", ("-p", "--pid"), min=1, max=2**22),
        Option("ppid", int, None, "trace exec()s by children of this PID only", ("--ppid",), min=1, max=2**22),
        Option("name", str, None, "only commands matching this regex", ("-n", "--name"), regex=True, metavar="NAME"),
        Option("line", str, None, "only commands whose arguments match this regex", ("-l", "--line"),
               regex=True, metavar="LINE"),
        Option("max_args", int, 20, "maximum number of arguments captured", ("--max-args",), min=1, max=60),
        DURATION,
    ]
    examples = [
        "bpfscope execsnoop            # trace all exec() syscalls",
        "bpfscope execsnoop -x         # include failed exec()s",
        "bpfscope execsnoop -T -u 1000 # time of day, UID 1000 only",
        "bpfscope execsnoop -n bash    # only commands matching 'bash'",
        "bpfscope execsnoop --json     # one JSON object per exec",
    ]

    @classmethod
    def text_columns(cls, ns: Any) -> list[Column]:
        cols = []
        if getattr(ns, "timestamp", False):
            cols.append(Column("TIME", "time_of_day", 8))
        if getattr(ns, "time", False):
            cols.append(Column("TIME(s)", "elapsed", 7, fmt=lambda v, r: f"{v:.3f}"))
        cols += [
            Column("PCOMM", "comm", 16),
            Column("PID", "pid", 7),
            Column("PPID", "ppid", 7),
            Column("RET", "retval", 3, align=">"),
            Column("ARGS", "args_text"),
        ]
        return cols

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        name_re = re.compile(opts.name) if opts.name else None
        line_re = re.compile(opts.line) if opts.line else None
        with open_object(object_path("execsnoop")) as obj:
            if opts.uid is not None:
                obj.set_global("targ_uid", opts.uid)
            if opts.pid:
                obj.set_global("targ_pid", opts.pid)
            if opts.ppid:
                obj.set_global("targ_ppid", opts.ppid)
            obj.set_global("ignore_failed", not opts.fails)
            obj.set_global("max_args", opts.max_args)
            obj.load()
            for prog in PROGRAMS:
                tp = prog.split("_", 1)[1]  # enter_execve -> sys_enter_execve
                obj.program(prog).attach_tracepoint("syscalls", f"sys_{tp}")
            ctx.mode = "tracepoint"
            ctx.mark_attached()
            start_ns = time.monotonic_ns()
            yield Notice("Tracing exec()s (tracepoint mode)... Hit Ctrl-C to end.")

            event_t = obj.struct("event")
            size = ctypes.sizeof(event_t)
            args_off = event_t.args.offset

            def decode(raw: bytes) -> dict[str, Any] | None:
                e = event_t.from_buffer_copy(raw[:size].ljust(size, b"\0"))
                blob = raw[args_off : args_off + e.args_size]
                argv = [a.decode("utf-8", "backslashreplace") for a in blob.split(b"\0")[: e.args_count]]
                filename = cstr(e.filename)
                comm = cstr(e.comm)
                text = " ".join([filename, *argv[1:]]) + (" ..." if e.truncated else "")
                if name_re and not name_re.search(comm):
                    return None
                if line_re and not line_re.search(text):
                    return None
                return {
                    "pid": e.pid,
                    "ppid": e.ppid,
                    "tid": e.tid,
                    "uid": e.uid,
                    "comm": comm,
                    "filename": filename,
                    "argv": argv,
                    "args_truncated": bool(e.truncated),
                    "retval": e.retval,
                    "timestamp_ns": e.ts_ns,
                    "cgroup_id": e.cgroup_id,
                    "elapsed": (e.ts_ns - start_ns) / 1e9,
                    "time_of_day": time.strftime("%H:%M:%S"),
                    "args_text": text,
                }

            yield from stream_events(obj, ctx, decode)
