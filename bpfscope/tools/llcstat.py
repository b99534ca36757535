"""llcstat: last-level cache references and misses per process and CPU, with hit rate (BCC's).

Samples the CPU's cache-references and cache-misses events (or LLC-loads / LLC-load-misses with
--events llc) on every CPU, one BPF run every SAMPLE_PERIOD events, crediting the period to the
task on the CPU. Needs a hardware PMU: where the CPU exposes none (most VMs) it says so in one
line and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..bpf.perf import online_cpus
from ..options import Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Column, Event, Notice, Result, Summary
from ..toolkit import cstr, object_path, open_object
from . import _perfevents as pe

EVENT_SETS = {
    "cache": ("cache-references", "cache-misses"),  # BCC's: the last level on Intel and AMD
    "llc": ("LLC-loads", "LLC-load-misses"),  # generic hardware cache events, LLC read accesses
}


def build_rows(entries: Iterable[tuple[int, int, int, str, int, int]]) -> list[dict[str, Any]]:
    """(pid, tid, cpu, comm, references, misses) -> rows with HIT%, most references first."""
    rows = []
    for pid, tid, cpu, comm, ref, miss in entries:
        if not ref and not miss:
            continue
        rows.append({
            "pid": pid, "tid": tid, "comm": comm, "cpu": cpu, "references": ref, "misses": miss,
            "hit_percent": round(pe.hit_percent(ref, miss), 2),
        })
    rows.sort(key=lambda r: (-r["references"], -r["misses"], r["pid"], r["tid"], r["cpu"]))
    return rows


def total_line(rows: list[dict[str, Any]]) -> str:
    ref = sum(r["references"] for r in rows)
    miss = sum(r["misses"] for r in rows)
    return f"Total References: {ref} Total Misses: {miss} Hit Rate: {pe.hit_percent(ref, miss):.2f}%"


def collect(ctx: RunContext, ref_event: str, miss_event: str, period: int, per_thread: bool,
            banner: str = "") -> Iterator[Result]:
    """Sample ref_event and miss_event every `period` on each CPU until ctx stops; yield rows.

    llcstat runs it with the CPU's cache events; it takes any events perf_event_open knows, so
    the attribution path also runs, for real, where no PMU exists (tests use software events).
    """
    cpus = online_cpus()
    with open_object(object_path("llcstat"), needs_tracefs=False) as obj:
        obj.set_global("per_thread", per_thread)
        obj.load()
        for prog, event in (("on_reference", ref_event), ("on_miss", miss_event)):
            p = obj.program(prog)
            for cpu in cpus:
                p.attach_perf_event(pe.open_on_cpu(event, cpu, period=period))
        ctx.mode = "sample"
        ctx.mark_attached()
        yield Notice(banner or f"Sampling {ref_event} and {miss_event} every {period} events... Hit Ctrl-C to end.")
        while ctx.wait(3600.0):
            pass
        stats = obj.map("stats").typed(obj.struct("llc_key"), obj.struct("llc_value"))
        rows = build_rows((k.pid, k.tid, k.cpu, cstr(v.comm), int(v.ref), int(v.miss)) for k, v in stats.items())
        for r in rows:
            yield Event(r)
        yield Notice(total_line(rows))
        lost = obj.get_global("lost_events")
        ctx.lost_events = lost
        yield Summary(lost_events=lost)


@register
class Llcstat(Tool):
    name = "llcstat"
    help = "last-level cache references, misses and hit rate per process and CPU (needs a CPU PMU)"
    description = __doc__.split("\n\n", 1)[1] if __doc__ else ""
    output = "events"
    hooks = HookPlan(
        (Hook("sample", ("perf_event", "hw_pmu"), "hardware cache events sampled every SAMPLE_PERIOD"),),
        hint="llcstat counts hardware cache events: it needs a CPU PMU (in a VM, a virtual PMU: e.g. qemu -cpu host)",
    )
    options = [
        Option("sample_period", int, 100, "sample one in this many cache reference / miss events",
               ("-c", "--sample_period"), min=1, max=2**40, metavar="SAMPLE_PERIOD"),
        Option("tid", bool, False, "summarize cache references and misses by PID/TID", ("-t", "--tid")),
        Option("events", str, "cache", "cache: cache-references/cache-misses (BCC's); llc: LLC-loads/"
               "LLC-load-misses", ("--events",), choices=tuple(EVENT_SETS),
               metavar="{" + ",".join(EVENT_SETS) + "}"),
        Option("duration", float, 10.0, "duration, in seconds, to run", nargs="?", min=0.01, max=86400,
               metavar="duration"),
    ]
    examples = [
        "bpfscope llcstat              # 10 seconds, per process and CPU",
        "bpfscope llcstat -c 1000 20   # sample one in 1000 events, for 20 seconds",
        "bpfscope llcstat -t           # per thread",
    ]

    @classmethod
    def text_columns(cls, ns: Any) -> list[Column]:
        cols = [Column("PID", "pid", 8)]
        if getattr(ns, "tid", False):
            cols.append(Column("TID", "tid", 8))
        return cols + [
            Column("NAME", "comm", 16),
            Column("CPU", "cpu", 4),
            Column("REFERENCE", "references", 12, ">"),
            Column("MISS", "misses", 12, ">"),
            Column("HIT%", "hit_percent", 7, ">", fmt=lambda v, r: f"{v:.2f}%"),
        ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        ref_event, miss_event = EVENT_SETS[opts.events]
        pe.require_pmu([ref_event, miss_event], "llcstat",
                       "give the VM a virtual PMU (e.g. qemu -cpu host) or run on bare metal")
        secs = f"{opts.duration:g} seconds" if opts.duration else "ever"
        yield from collect(ctx, ref_event, miss_event, opts.sample_period, opts.tid,
                           banner=f"Running for {secs} or Hit Ctrl-C to end.")
