"""execcount: successful exec()s per command name, per interval; the agent's "execs" collector.

One raw tracepoint (sched_process_exec) adds one to a hash keyed by the new comm. As a collector
it exports bpfscope_execs_total{comm} with bounded cardinality: at most `top` comms get a series
of their own (the busiest among those seen while slots were free; a series, once given, stays),
every other exec counts in comm="other". Both only grow: a comm promoted to a series of its own
leaves what "other" already exported in "other".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ..agent.collector import Collector
from ..k8s.filters import CGROUP_FILTER_OPTIONS, resolve_cgroup_filter
from ..options import CGROUP, DURATION, TIMESTAMP, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Notice, RateTable, Result, Summary
from ..toolkit import cstr
from ._attached import AttachedObject

HOOKS = HookPlan((Hook("raw_tp", ("raw_tp",), "sched:sched_process_exec"),))
OTHER = "other"


class ExecCounts(AttachedObject):
    """execcount.bpf.o loaded and attached; reads comm -> count."""

    def __init__(self, flt: Any = None):
        self.flt = flt

    def open(self) -> ExecCounts:
        self.map = self._open_object("execcount", self._setup).map("exec_counts")
        return self

    def _setup(self, obj: Any) -> None:
        if self.flt:
            self.flt.before_load(obj)
        obj.load()
        if self.flt:
            self.flt.after_load(obj)
        obj.program("execcount_exec").attach_raw_tracepoint("sched_process_exec")

    def read(self) -> dict[bytes, int]:
        return {k: int.from_bytes(v, "little") for k, v in self.map.items_raw()}

    def take(self, key: bytes) -> int:
        raw = self.map.take(key)
        return int.from_bytes(raw, "little") if raw else 0

    def unkeyed(self) -> int:
        return self.obj.get_global("unkeyed_execs") if self.obj else 0


def comm_name(key: bytes) -> str:
    return cstr(key)


@register
class Execcount(Tool):
    name = "execcount"
    help = "count successful exec()s per command name, per interval"
    output = "rates"
    hooks = HOOKS
    options = [
        Option("interval", float, 1.0, "print every INTERVAL seconds", ("-i", "--interval"),
               min=0.1, max=86400, metavar="INTERVAL"),
        DURATION,
        TIMESTAMP,
        Option("top", int, 20, "print the N busiest commands of each interval", ("--top",), min=1, max=10000),
        *CGROUP_FILTER_OPTIONS,
    ]
    examples = [
        "bpfscope execcount -i 5            # execs per comm every 5 seconds",
        "bpfscope execcount --cgroup system.slice/cron.service",
        "bpfscope execcount --namespace ci  # pods of a namespace (Kubernetes API)",
    ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        hook = self.mode(opts, ctx.features)
        flt = resolve_cgroup_filter(opts)
        with ExecCounts(flt) as ec:
            ctx.mode = hook.mode
            ctx.mark_attached()
            yield Notice(f"Counting exec()s per command ({hook.mode} mode: {hook.description}"
                         + (f"; only {flt.description}" if flt else "") + ")... Hit Ctrl-C to end.")
            prev: dict[bytes, int] = {}
            last = time.monotonic()
            while True:
                running = ctx.wait(opts.interval)
                now = time.monotonic()
                dt = max(now - last, 1e-9)
                last = now
                cur = ec.read()
                deltas = [(k, v - prev.get(k, 0)) for k, v in cur.items() if v != prev.get(k, 0)]
                prev = cur
                deltas.sort(key=lambda kv: (-kv[1], kv[0]))
                rows = [{"EXECS": d, "EXECS/s": d / dt, "COMM": comm_name(k), "comm": comm_name(k),
                         "execs": d, "execs_per_sec": d / dt} for k, d in deltas[: opts.top]]
                yield RateTable(columns=["EXECS", "EXECS/s", "COMM"], rows=rows, interval=dt)
                if not running:
                    break
            yield Summary(lost_events=0, extra={"execs whose command found no room in the map": ec.unkeyed()})


class ExecsCollector(Collector):
    name = "execs"
    help = "successful exec()s by command name (top N + other)"
    settings = [
        Option("top", int, 50, "comms with a series of their own; the rest count as comm=\"other\"",
               min=1, max=1000),
        Option("cgroup", str, None, "count only execs in this cgroup and below (e.g. kubepods.slice)",
               pattern=CGROUP.pattern, metavar="PATH"),
    ]

    def __init__(self, settings: Any = None, env: Any = None):
        super().__init__(settings, env)
        self.ec: ExecCounts | None = None
        self.promoted: dict[bytes, int] = {}  # comm -> count already exported inside "other"
        self.in_other: dict[bytes, int] = {}  # non-promoted comm -> its part of the last "other"
        self.folded = 0  # counts of comms deleted from the map to keep it small (inside "other")

    def start(self) -> None:
        HOOKS.choose(self.env.ctx.features)
        flt = resolve_cgroup_filter({"cgroup": self.opts.cgroup}) if self.opts.cgroup else None
        self.ec = ExecCounts(flt).open()
        self.mode = "raw_tp"

    def close(self) -> None:
        if self.ec is not None:
            self.ec.close()
            self.ec = None

    def bpf_objects(self) -> list[Any]:
        return [self.ec.obj] if self.ec and self.ec.obj else []

    def series(self) -> dict[str, int]:
        assert self.ec is not None
        with self.lock:
            counts = self.ec.read()
            # promote the busiest comms not yet seen by a scrape while slots are free
            free = self.opts.top - len(self.promoted)
            if free > 0:
                fresh = sorted((k for k in counts if k not in self.promoted and k not in self.in_other),
                               key=lambda k: -counts[k])
                for k in fresh[:free]:
                    self.promoted[k] = 0
            # keep the map small: fold comms without a series into "other" once it is 3/4 full
            if len(counts) > self.ec.map.max_entries * 3 // 4:
                for k in [k for k in counts if k not in self.promoted]:
                    self.folded += self.ec.take(k)
                    counts.pop(k)
                    self.in_other.pop(k, None)
            out: dict[str, int] = {}
            other = self.folded + self.ec.unkeyed()
            in_other = {}
            for k, v in counts.items():
                if k in self.promoted:
                    out[comm_name(k)] = out.get(comm_name(k), 0) + v - self.promoted[k]
                    other += self.promoted[k]
                else:
                    in_other[k] = v
                    other += v
            for k, base in self.promoted.items():
                if k not in counts:  # never happens unless someone else deleted it
                    other += base
            self.in_other = in_other
            out[OTHER] = out.get(OTHER, 0) + other
            return out

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily("bpfscope_execs", "successful exec()s by new command name (top N, rest as other)",
                                  labels=["comm"])
        for comm, n in sorted(self.series().items()):
            fam.add_metric([comm], n)
        yield fam


Execcount.collector = ExecsCollector
