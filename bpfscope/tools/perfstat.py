"""perfstat: perf event counts per process or per cgroup, with IPC and miss rates.

    bpfscope perfstat -e page-faults,context-switches -p 1234 -d 10
    bpfscope perfstat -e cycles,instructions --by cgroup -i 5

Software events (cpu-clock, task-clock, page-faults, minor/major-faults, context-switches,
cpu-migrations) work everywhere; hardware events (cycles, instructions, cache-references,
cache-misses, branch-*, LLC-loads, LLC-load-misses) need a CPU PMU, and fail with one clear
line where there is none.

How counts reach a task (--mode):
  read    (default) one counting perf event per CPU and event; BPF reads them at every
          sched_switch and credits what they moved since the last switch to the task leaving
          the CPU. Exact for every kind of event (clocks and hardware counters too), nothing
          per counted event: ~200 ns per context switch plus ~70-90 ns per counter read
          (BPF run time, bench/perfstat.py). context-switches itself is counted at the switch.
  sample  every event samples with a period (-c, 1 for software events) and BPF credits the
          period to the current task: one program run per sample (~190 ns of BPF plus perf's
          overflow handling), so a fault-heavy load pays per fault: 1.25 runs and ~240 ns of
          BPF per page fault against ~40 ns per fault for read mode in the same bench.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..bpf.maps import possible_cpus
from ..bpf.perf import online_cpus
from ..errors import UsageError
from ..k8s.filters import CGROUP_FILTER_OPTIONS, resolve_cgroup_filter
from ..options import DURATION, INTERVAL, PID, TIMESTAMP, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Notice, RateTable, Result, Summary
from ..toolkit import cstr, object_path, open_object
from . import _perfevents as pe

MAX_EVENTS = 8  # perfstat.bpf.c MAX_EVENTS
DEFAULT_SOFTWARE = ["task-clock", "context-switches", "cpu-migrations", "page-faults"]
DEFAULT_HARDWARE = ["cycles", "instructions"]
DEFAULT_PERIOD = {"sw": 1, "clock": 1_000_000, "hw": 100_000}  # sample mode
MODES = ("read", "read-rawtp", "sample")
HOUSEKEEPING = 5.0  # seconds between map reads when no -i is given


@dataclass
class Entry:
    """One (process, cgroup) line of the stats map: counts per event, in -e order."""

    tgid: int
    cgroup_id: int
    comm: str
    values: list[int]


class Deltas:
    """Turns the map's running totals into counts since the previous read.

    The map is never cleared under the BPF side's feet (a delete would drop what a CPU adds
    between our read and the delete); entries of processes that are gone are deleted after they
    were read, and forgotten here, so a late re-creation counts from zero.
    """

    def __init__(self) -> None:
        self.last: dict[tuple[int, int], list[int]] = {}

    def step(self, entries: Iterable[Entry]) -> list[Entry]:
        out = []
        for e in entries:
            key = (e.tgid, e.cgroup_id)
            prev = self.last.get(key)
            self.last[key] = list(e.values)
            diff = e.values if prev is None else [max(0, v - p) for v, p in zip(e.values, prev, strict=True)]
            if any(diff):
                out.append(Entry(e.tgid, e.cgroup_id, e.comm, list(diff)))
        return out

    def forget(self, key: tuple[int, int]) -> None:
        self.last.pop(key, None)


def table_columns(events: list[str], by: str) -> list[str]:
    head = ["CGROUP"] if by == "cgroup" else ["PID", "COMM"]
    return head + [pe.column(e) for e in events] + pe.ratio_columns(events)


def build_rows(entries: Iterable[Entry], events: list[str], by: str,
               cgroup_name: Callable[[int], str] = str) -> list[dict]:
    """Sum entries per process (PID, COMM) or per cgroup; add derived ratios; busiest first."""
    groups: dict[object, dict] = {}
    for e in entries:
        gk = e.cgroup_id if by == "cgroup" else e.tgid
        g = groups.get(gk)
        if g is None:
            g = groups[gk] = {"key": gk, "comm": e.comm, "sums": [0] * len(events)}
        for i, v in enumerate(e.values[: len(events)]):
            g["sums"][i] += v
        if e.comm:
            g["comm"] = e.comm
    rows = []
    for g in groups.values():
        if by == "cgroup":
            row: dict = {"CGROUP": cgroup_name(g["key"])}
        else:
            comm = g["comm"]
            row = {"PID": g["key"], "COMM": "swapper" if g["key"] == 0 else comm}
        raw = dict(zip(events, g["sums"], strict=True))
        for ev in events:
            row[pe.column(ev)] = pe.display_value(ev, raw[ev])
        row.update(pe.derive(raw))
        rows.append((g["sums"][0] if events else 0, row))
    rows.sort(key=lambda r: -r[0])
    return [r for _, r in rows]


@register
class Perfstat(Tool):
    name = "perfstat"
    help = "count perf events (page-faults, context-switches, cycles...) per process or cgroup"
    description = (
        "Modes: read (default) reads per-CPU counters at every context switch and credits each "
        "task exactly, at a cost per switch; sample credits a period per sample (-c), at a cost "
        "per sample. Hardware events need a CPU PMU."
    )
    output = "rates"
    hooks = HookPlan(
        (
            Hook("read", ("tp_btf", "perf_event"), "per-CPU counters read at tp_btf/sched_switch"),
            Hook("read-rawtp", ("raw_tp", "perf_event"), "per-CPU counters read at raw_tp/sched_switch"),
            Hook("sample", ("perf_event",), "perf_event sampling, period credited to the current task"),
        ),
        hint="perfstat needs perf_event_open and BPF perf_event programs (CONFIG_PERF_EVENTS)",
    )
    options = [
        Option("events", str, None,
               "events to count, comma-separated or repeated (default: " + ",".join(DEFAULT_SOFTWARE)
               + ", plus " + ",".join(DEFAULT_HARDWARE) + " where a PMU exists); known: "
               + ", ".join(list(pe.KINDS)),
               ("-e", "--event"), multiple=True, pattern=pe.EVENT_PATTERN, metavar="EVENT[,EVENT...]"),
        PID,
        *CGROUP_FILTER_OPTIONS,
        Option("by", str, "process", "one row per process (PID, COMM) or per cgroup", ("--by",),
               choices=("process", "cgroup"), metavar="{process,cgroup}"),
        INTERVAL,
        DURATION,
        TIMESTAMP,
        Option("top", int, None, "show only the N rows with the highest first event", ("--top",),
               min=1, max=100000),
        Option("period", int, None, "sample mode: credit every Nth event (default: 1 for software "
               "events, 1000000 ns for clocks, 100000 for hardware events)", ("-c", "--period"),
               min=1, max=2**40),
        Option("mode", str, None, "force how counts are taken: read (counters read at each context "
               "switch) or sample (a program run every PERIOD events)", ("--mode",), choices=MODES,
               metavar="{read,sample}"),
    ]
    examples = [
        "bpfscope perfstat -e page-faults -p 1234 -d 5   # faults of one process over 5 s",
        "bpfscope perfstat -e cs,migrations -i 1         # per second, every process",
        "bpfscope perfstat -e cycles,instructions        # with IPC (needs a hardware PMU)",
        "bpfscope perfstat --by cgroup --cgroup /system.slice -e task-clock,page-faults",
    ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        default = DEFAULT_SOFTWARE + (DEFAULT_HARDWARE if not opts.events and pe.pmu_present() else [])
        events = pe.parse_events(opts.events, default, MAX_EVENTS)
        mode = opts.mode
        if mode == "read":  # --mode read: tp_btf where possible, raw_tp otherwise
            mode = None if ctx.features.has("tp_btf") else "read-rawtp"
        hook = self.hooks.choose(ctx.features, mode)
        sampling = hook.mode == "sample"
        if opts.period and not sampling:
            raise UsageError("-c/--period applies to sample mode only (add --mode sample)")
        pe.require_pmu(events)
        if opts.pid and not os.path.exists(f"/proc/{opts.pid}"):
            raise UsageError(f"no process with PID {opts.pid}")
        flt = resolve_cgroup_filter(opts)
        cpus = online_cpus()
        ncpu = possible_cpus()
        switch_idx = events.index("context-switches") if "context-switches" in events and not sampling else None

        with open_object(object_path("perfstat"), needs_tracefs=False) as obj:
            obj.set_global("nr_events", len(events))
            obj.set_global("nr_cpus", ncpu)
            if opts.pid:
                obj.set_global("targ_tgid", opts.pid)
            if switch_idx is not None:
                obj.set_global("switch_event", switch_idx)
            # hardware counters can be multiplexed: read them with enabled/running times
            obj.set_global("scaled_mask", sum(1 << i for i, ev in enumerate(events) if pe.KINDS[ev] == "hw"))
            if flt:
                flt.before_load(obj)
            if sampling:
                obj.only_programs({f"sample_{i}" for i in range(len(events))})
            else:
                prog_name = "read_switch_btf" if hook.mode == "read" else "read_switch_raw"
                obj.only_programs({prog_name})
                obj.map("counters").resize(max(1, len(events) * ncpu))
            obj.load()
            if flt:
                flt.after_load(obj)

            if sampling:
                for i, ev in enumerate(events):
                    period = opts.period or DEFAULT_PERIOD[pe.KINDS[ev]]
                    prog = obj.program(f"sample_{i}")
                    for cpu in cpus:
                        prog.attach_perf_event(pe.open_on_cpu(ev, cpu, period=period))
            else:
                counters = obj.map("counters")
                for i, ev in enumerate(events):
                    if i == switch_idx:
                        continue  # counted per sched_switch in BPF
                    for cpu in cpus:
                        counters.update(i * ncpu + cpu, obj.own_fd(pe.open_on_cpu(ev, cpu)))
                if hook.mode == "read":
                    obj.program(prog_name).attach_trace()
                else:
                    obj.program(prog_name).attach_raw_tracepoint("sched_switch")
                pe.visit_cpus(cpus)  # a first switch on every CPU: baselines everywhere
            ctx.mode = hook.mode
            ctx.mark_attached()
            what = f"PID {opts.pid}" if opts.pid else ("cgroup" if opts.by == "cgroup" else "process")
            how = (f"sample mode: {hook.description}" if sampling else f"read mode: {hook.description}")
            yield Notice(f"Counting {', '.join(events)} per {what} ({how})"
                         + (f", {flt.description}" if flt else "") + "... Hit Ctrl-C to end.")

            stats = obj.map("stats").typed(obj.struct("stat_key"), obj.struct("stat_counts"))
            reader = MapReader(stats, len(events))
            names = _cgroup_namer() if opts.by == "cgroup" else str
            columns = table_columns(events, opts.by)
            last = time.monotonic()
            while True:
                # without -i, still read every HOUSEKEEPING seconds: exited processes' entries
                # are then freed and the map does not fill up on a long run
                running = ctx.wait(opts.interval or HOUSEKEEPING)
                emit = bool(opts.interval) or not running
                if emit and not sampling:
                    pe.visit_cpus(cpus)  # credit what running tasks counted up to now
                reader.collect()
                if not emit:
                    continue
                rows = build_rows(reader.take(), events, opts.by, names)
                if opts.top:
                    rows = rows[: opts.top]
                now = time.monotonic()
                yield RateTable(columns, rows, interval=now - last)
                last = now
                if not running:
                    break
            extra: dict[str, int] = {}
            for name, key in (("read_errors", "counter_read_errors"), ("scaled_slices", "multiplexed_slices_scaled"),
                              ("untraced_switches", "switches_without_tracepoint")):
                v = obj.get_global(name)
                if v:
                    extra[key] = v
            lost = obj.get_global("lost_events")
            ctx.lost_events = lost
            yield Summary(lost_events=lost, extra=extra)


class MapReader:
    """Reads the stats map into counts since the last take(), freeing exited processes' entries.

    An entry whose process is gone is deleted only when it was already gone at the previous
    read: its last context switch (which credits its final slice) is then long past.
    """

    def __init__(self, stats: Any, nevents: int):
        self.stats, self.nevents = stats, nevents
        self.deltas = Deltas()
        self.acc: dict[tuple[int, int], Entry] = {}
        self.gone: set[tuple[int, int]] = set()

    def read(self) -> list[Entry]:
        return [Entry(k.tgid, k.cgroup_id, cstr(v.comm), [int(x) for x in list(v.values)[: self.nevents]])
                for k, v in self.stats.items()]

    def collect(self) -> None:
        entries = self.read()
        for e in self.deltas.step(entries):
            key = (e.tgid, e.cgroup_id)
            have = self.acc.get(key)
            if have is None:
                self.acc[key] = e
            else:
                have.values = [a + b for a, b in zip(have.values, e.values, strict=True)]
                have.comm = e.comm or have.comm
        gone = {(e.tgid, e.cgroup_id) for e in entries if e.tgid and not os.path.exists(f"/proc/{e.tgid}")}
        key_t = self.stats.key_type
        for key in gone & self.gone:
            self.stats.delete(key_t(tgid=key[0], cgroup_id=key[1]))
            self.deltas.forget(key)
        self.gone = gone - self.gone

    def take(self) -> list[Entry]:
        out, self.acc = list(self.acc.values()), {}
        return out


def _cgroup_namer():  # noqa: ANN202
    from ..k8s.cgroups import CgroupResolver

    resolver = CgroupResolver()

    def name(cgid: int) -> str:
        return resolver.path_of(cgid) or f"unknown:{cgid}"

    return name
