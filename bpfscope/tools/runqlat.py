"""runqlat: run queue (scheduler) latency as log2 histograms, as BCC's runqlat prints them."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import UsageError
from ..histograms import read_histograms
from ..options import DURATION, TIMESTAMP, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Histogram, Notice, Result, Summary
from ..toolkit import object_path, open_object
from ._histtool import COUNT_POS, INTERVAL_FLAG, INTERVAL_POS, JSON_J, interval_count, intervals, mode_option

MODES = ("tp_btf", "raw_tp")
EVENTS = ("wakeup", "wakeup_new", "switch")


@register
class Runqlat(Tool):
    name = "runqlat"
    help = "summarize run queue (scheduler) latency as a histogram"
    output = "histogram"
    hooks = HookPlan(
        (
            Hook("tp_btf", ("tp_btf", "task_storage"), "sched_wakeup{,_new} + sched_switch, task storage"),
            Hook("raw_tp", ("raw_tp",), "raw tracepoints sched_wakeup{,_new} + sched_switch, tid hash"),
        ),
        hint="runqlat needs BTF-typed or raw tracepoints",
    )
    options = [
        TIMESTAMP,
        Option("milliseconds", bool, False, "millisecond histogram", ("-m", "--milliseconds")),
        Option("pids", bool, False, "print a histogram per process ID", ("-P", "--pids")),
        Option("tids", bool, False, "print a histogram per thread ID", ("-L", "--tids")),
        Option("pid", int, None, "trace this PID only", ("-p", "--pid"), min=1, max=2**22, metavar="PID"),
        JSON_J,
        DURATION,
        mode_option(MODES),
        INTERVAL_POS,
        COUNT_POS,
        INTERVAL_FLAG,
    ]
    examples = [
        "bpfscope runqlat            # summarize run queue latency as a histogram",
        "bpfscope runqlat 1 10       # print 1 second summaries, 10 times",
        "bpfscope runqlat -mT 1      # 1s summaries, milliseconds, and timestamps",
        "bpfscope runqlat -P         # show each PID separately",
        "bpfscope runqlat -p 185     # trace PID 185 only",
        "bpfscope runqlat --json 5 1 # one 5 second histogram as JSON",
    ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        if opts.pids and opts.tids:
            raise UsageError("-P and -L exclude each other (per process or per thread)")
        interval, count = interval_count(opts)
        hook = self.mode(opts, ctx.features)
        prefix = "btf" if hook.mode == "tp_btf" else "raw"
        unit = "msecs" if opts.milliseconds else "usecs"
        with open_object(object_path("runqlat")) as obj:
            obj.set_global("targ_per_process", bool(opts.pids))
            obj.set_global("targ_per_thread", bool(opts.tids))
            obj.set_global("targ_ms", bool(opts.milliseconds))
            if opts.pid:
                obj.set_global("targ_tgid", opts.pid)
            if prefix == "btf":
                obj.map("start_hash").resize(1)
            else:  # kernels without task storage must not even create the map
                obj.map("start_ts").set_autocreate(False)
            obj.only_programs({f"{prefix}_{e}" for e in EVENTS})
            obj.load()
            for e in EVENTS:
                prog = obj.program(f"{prefix}_{e}")
                if prefix == "btf":
                    prog.attach_trace()
                else:
                    prog.attach_raw_tracepoint(f"sched_{e}")
            ctx.mode = hook.mode
            ctx.mark_attached()
            yield Notice(f"Tracing run queue latency ({hook.mode} mode)... Hit Ctrl-C to end.")

            hists, hist_t = obj.map("hists"), obj.struct("hist")
            label = "pid" if opts.pids else "tid" if opts.tids else ""

            def key_format(key: bytes) -> str | None:
                return str(int.from_bytes(key[:4], "little")) if label else None

            def read() -> list[Histogram]:
                out = read_histograms(hists, hist_t, unit, label, key_format)
                if label:
                    out.sort(key=lambda h: int(h.key or 0))
                return out or ([] if label else [Histogram([], unit)])  # "(no events)"

            yield from intervals(ctx, interval, count, read)
            lost = obj.get_global("lost_events")
            ctx.lost_events = lost
            yield Summary(lost_events=lost)
