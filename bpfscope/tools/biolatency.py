"""biolatency: block device I/O latency as log2 histograms, as BCC's biolatency prints them."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import ToolUnavailable
from ..histograms import read_histograms
from ..options import TIMESTAMP, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Histogram, Notice, Result, Summary
from ..toolkit import cstr, object_path, open_object
from ._histtool import (
    COUNT_POS,
    INTERVAL_FLAG,
    INTERVAL_POS,
    JSON_J,
    disk_dev,
    disk_name,
    interval_count,
    intervals,
    mode_option,
    tracepoint_exists,
)

MODES = ("tp_btf", "raw_tp", "tracepoint")
PREFIX = {"tp_btf": "btf", "raw_tp": "raw", "tracepoint": "tp"}


@register
class Biolatency(Tool):
    name = "biolatency"
    help = "summarize block device I/O latency as a histogram"
    output = "histogram"
    hooks = HookPlan(
        (
            Hook("tp_btf", ("tp_btf",), "block_rq_{issue,complete} (typed struct request)"),
            Hook("raw_tp", ("raw_tp",), "raw tracepoints block_rq_{issue,complete}"),
            Hook("tracepoint", ("tracepoint",), "block:block_rq_{issue,complete}, keyed by (dev, sector)"),
        ),
        hint="biolatency needs the block tracepoints",
    )
    options = [
        TIMESTAMP,
        Option("queued", bool, False, "include OS queued time in I/O time (start at block_rq_insert)",
               ("-Q", "--queued")),
        Option("milliseconds", bool, False, "millisecond histogram", ("-m", "--milliseconds")),
        Option("disks", bool, False, "print a histogram per disk device", ("-D", "--disks")),
        Option("disk", str, None, "trace this disk only (e.g. vda, nvme0n1)", ("-d", "--disk"),
               pattern=r"(/dev/)?[A-Za-z0-9_.:!+-]{1,64}", metavar="DISK"),
        JSON_J,
        Option("duration", float, None, "stop after this many seconds (default: until Ctrl-C)", ("--duration",),
               min=0.01, max=86400, metavar="SECONDS"),
        mode_option(MODES),
        INTERVAL_POS,
        COUNT_POS,
        INTERVAL_FLAG,
    ]
    examples = [
        "bpfscope biolatency             # summarize block I/O latency as a histogram",
        "bpfscope biolatency 1 10        # print 1 second summaries, 10 times",
        "bpfscope biolatency -mT 1       # 1s summaries, milliseconds, and timestamps",
        "bpfscope biolatency -Q          # include OS queued time in I/O time",
        "bpfscope biolatency -D          # show each disk device separately",
        "bpfscope biolatency -d vda      # trace vda only",
        "bpfscope biolatency -j          # JSON: bucket bounds, counts, total count and sum",
    ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        interval, count = interval_count(opts)
        hook = self.mode(opts, ctx.features)
        prefix = PREFIX[hook.mode]
        dev = disk_dev(opts.disk) if opts.disk else None
        if not (tracepoint_exists("block", "block_rq_issue") and tracepoint_exists("block", "block_rq_complete")):
            raise ToolUnavailable("this kernel has no block:block_rq_issue/block_rq_complete tracepoints")
        events = ["issue", "complete"]
        if opts.queued:
            events.append("insert")
            if tracepoint_exists("block", "block_rq_merge"):
                events.append("merge")
        unit = "msecs" if opts.milliseconds else "usecs"
        with open_object(object_path("biolatency")) as obj:
            obj.set_global("targ_per_disk", bool(opts.disks))
            obj.set_global("targ_queued", bool(opts.queued))
            obj.set_global("targ_ms", bool(opts.milliseconds))
            if dev is not None:
                obj.set_global("filter_dev", True)
                obj.set_global("targ_dev", dev)
            obj.map("start_sector" if prefix != "tp" else "start").resize(1)  # the other mode's map
            obj.only_programs({f"{prefix}_rq_{e}" for e in events})
            obj.load()
            for e in events:
                prog = obj.program(f"{prefix}_rq_{e}")
                if prefix == "btf":
                    prog.attach_trace()
                elif prefix == "raw":
                    prog.attach_raw_tracepoint(f"block_rq_{e}")
                else:
                    prog.attach_tracepoint("block", f"block_rq_{e}")
            ctx.mode = hook.mode
            ctx.mark_attached()
            what = f" on {opts.disk}" if opts.disk else ""
            yield Notice(f"Tracing block device I/O{what} ({hook.mode} mode"
                         f"{', from insert' if opts.queued else ''})... Hit Ctrl-C to end.")

            hists, names = obj.map("hists"), obj.map("disk_names")
            hist_t = obj.struct("hist")

            def label(key: bytes) -> str | None:
                if not opts.disks:
                    return None
                kdev = int.from_bytes(key[:4], "little")
                raw = names.lookup(key)
                return cstr(raw) if raw else disk_name(kdev)

            def read() -> list[Histogram]:
                out = read_histograms(hists, hist_t, unit, "disk", label)
                if opts.disks:
                    names.clear()  # rewritten with each disk's next histogram
                return out or ([] if opts.disks else [Histogram([], unit)])  # "(no events)"

            yield from intervals(ctx, interval, count, read)
            lost = obj.get_global("lost_events")
            ctx.lost_events = lost
            yield Summary(lost_events=lost)
