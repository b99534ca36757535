"""Example custom tool: syscalls per process, printed every interval (top N).

    bpfscope run examples/syscount.py -i 1 --top 10
"""

from __future__ import annotations

from pathlib import Path

from bpfscope.api import (
    DURATION,
    INTERVAL,
    PID,
    Hook,
    HookPlan,
    Notice,
    Option,
    RateTable,
    Tool,
    compile_bpf,
    cstr,
    open_object,
    register,
    sum_percpu,
)


@register
class Syscount(Tool):
    name = "syscount-example"
    help = "count syscalls per process (example of a custom tool)"
    output = "rates"
    hooks = HookPlan((Hook("raw_tp", ("raw_tp",), "raw_tp/sys_enter"),))
    options = [PID, INTERVAL, DURATION,
               Option("top", int, 10, "show the N busiest processes", ("--top",), min=1, max=1000)]

    def run(self, opts, ctx):
        with open_object(compile_bpf(Path(__file__).with_name("syscount.bpf.c"))) as obj:
            if opts.pid:
                obj.set_global("targ_pid", opts.pid)
            obj.load()
            obj.program("count_sys_enter").attach_raw_tracepoint("sys_enter")
            ctx.mark_attached()
            yield Notice("Counting syscalls per process (raw_tp mode)... Hit Ctrl-C to end.")
            counts = obj.map("counts").typed(obj.struct("proc_key"))
            interval = opts.interval or 3600.0
            while True:
                running = ctx.wait(interval)
                rows = []
                for key, per_cpu in counts.pop_all():
                    total = sum_percpu([int.from_bytes(v, "little") for v in per_cpu])
                    rows.append({"PID": key.pid, "COMM": cstr(key.comm), "SYSCALLS": total})
                rows.sort(key=lambda r: -r["SYSCALLS"])
                yield RateTable(["PID", "COMM", "SYSCALLS"], rows[: opts.top], interval)
                if not running:
                    return
