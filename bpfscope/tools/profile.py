"""profile: CPU profile by sampling stack traces at a timed interval, as BCC's profile.

A perf event per online CPU (cpu-clock; hardware cycles where the CPU has a PMU) runs
profile.bpf.c's perf_event program on each sample; it counts samples per (process, user
stack, kernel stack, comm). After the run the stacks are symbolized and rendered as BCC's
text, folded stacks, an SVG flame graph, pprof or speedscope (bpfscope.output).

The sampled event is a parameter of the run (`sampling_event`): a later `-e EVENT` only
adds an option (page-faults with a period, cache misses...), nothing else changes.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..bpf import perf
from ..bpf.features import Features
from ..errors import UsageError
from ..options import CGROUP, DURATION, PIDS, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Notice, Result
from ..toolkit import object_path, open_object
from . import _stacks as S
from ._perfevents import KINDS, attach_all, check_period, max_sample_rate, open_sampling, sample_labels

DEFAULT_HZ = 49


def sampling_event(opts: Options, features: Features) -> str:
    """The perf event a run samples: -e EVENT when a tool offers it, else cycles where the
    CPU has a PMU and cpu-clock otherwise (and always for -I: cycles stop in idle)."""
    explicit = opts.get("event")
    if explicit:
        return str(explicit)
    if opts.get("include_idle") or opts.get("count"):
        return "cpu-clock"
    return "cycles" if features.has("hw_pmu") else "cpu-clock"


@register
class Profile(Tool):
    name = "profile"
    help = "profile CPU usage by sampling stack traces at a timed interval (flame graphs, pprof)"
    description = (
        "Samples every CPU with a perf event (cpu-clock, or cycles with a hardware PMU) and counts\n"
        "user + kernel stacks per process. Output: BCC's text (default), -f folded stacks,\n"
        "--svg flame graph, --pprof, --speedscope."
    )
    output = "stacks"
    hooks = HookPlan(
        (Hook("perf_event", ("perf_event",), "cpu-clock sampling on every CPU (cycles with a hardware PMU)"),),
        hint="profile needs perf_event_open and BPF perf_event programs (CONFIG_PERF_EVENTS, CONFIG_BPF_EVENTS)",
    )
    options = [
        PIDS,
        Option("tid", int, None, "profile these threads only (repeat or comma-separate)", ("-L", "--tid"),
               multiple=True, min=1, max=2**22, metavar="TID"),
        S.USER_STACKS_ONLY,
        S.KERNEL_STACKS_ONLY,
        Option("frequency", int, None, f"sample frequency, Hertz (default: {DEFAULT_HZ})", ("-F", "--frequency"),
               min=1, max=1_000_000, metavar="HZ"),
        Option("count", int, None, "sample period, number of events (nanoseconds of cpu-clock)", ("-c", "--count"),
               min=1, max=2**40, metavar="COUNT"),
        Option("event", str, None, "sample this perf event instead of cpu-clock/cycles (e.g. page-faults, "
               "context-switches; counted events default to -c 1: every event)", ("-e", "--event"),
               pattern=r"[A-Za-z0-9_-]{1,40}", metavar="EVENT"),
        Option("include_idle", bool, False, "include CPU idle stacks", ("-I", "--include-idle")),
        CGROUP,
        S.STACK_STORAGE_SIZE,
        S.HASH_STORAGE_SIZE,
        DURATION,
        S.DURATION_POS,
    ]
    examples = [
        "bpfscope profile                     # all CPUs, 49 Hz, until Ctrl-C",
        "bpfscope profile -F 99 10            # 99 Hz for 10 seconds",
        "bpfscope profile -p 185 -d 5 --svg cpu.svg   # one process, flame graph",
        "bpfscope profile -U -f 5 > out.folded        # user stacks, folded",
        "bpfscope profile --pprof cpu.pb.gz 30        # for pprof / Pyroscope / Grafana",
    ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        S.check_stack_options(opts)
        if opts.frequency and opts.count:
            raise UsageError("give -F (frequency) or -c (period), not both")
        if opts.pid and opts.tid:
            raise UsageError("give -p (processes) or -L (threads), not both")
        duration = S.duration_of(opts, ctx)
        pids = S.check_pids(opts.pid)
        tids = S.check_pids(opts.tid, "thread")
        counted = None
        if opts.event:
            from ._perfevents import canonical, require_pmu

            counted = canonical(opts.event)
            require_pmu([counted], "profile")
            if KINDS[counted] != "clock" and not opts.frequency and not opts.count:
                opts.values["count"] = 1  # a counted event: one sample per event, exact counts
        freq = 0 if opts.count else (opts.frequency or DEFAULT_HZ)
        max_rate = max_sample_rate()
        if freq and max_rate and freq > max_rate:
            raise UsageError(f"-F {freq}: above the kernel's maximum sampling rate "
                             f"(kernel.perf_event_max_sample_rate = {max_rate})")
        period = opts.count or 0
        event = sampling_event(opts, ctx.features)
        check_period(event, period)
        flt = None
        if opts.cgroup:
            from ..k8s.filters import resolve_cgroup_filter

            flt = resolve_cgroup_filter(opts)
        cpus = perf.online_cpus()

        with open_object(object_path("profile"), needs_tracefs=False) as obj:
            coll = S.StackCollector(obj, opts, recover_collisions=True)
            try:
                coll.configure()
                obj.set_global("include_idle", bool(opts.include_idle))
                obj.set_global("filter_pids", bool(pids))
                obj.set_global("filter_tids", bool(tids))
                if flt:
                    flt.before_load(obj)
                obj.load()
                S.fill_id_filter(obj, "pids", pids)
                S.fill_id_filter(obj, "tids", tids)
                if flt:
                    flt.after_load(obj)
                try:
                    fds = open_sampling(event, cpus, freq=freq, period=period)
                except perf.PerfOpenError:
                    if event != "cycles" or opts.get("event"):
                        raise
                    event = "cpu-clock"  # a PMU that counts but cannot sample (some VMs)
                    fds = open_sampling(event, cpus, freq=freq, period=period)
                attach_all(obj.program("do_sample"), fds)
                ctx.mode = "perf_event"
                ctx.mark_attached()
                coll.start()
                yield Notice(self._banner(opts, event, freq, period, pids, tids, flt, duration))
                coll.wait(ctx)
                data = coll.finish()
            finally:
                coll.close()
        countname, sample_period = sample_labels(event, period, freq)
        if not counted:
            countname = "samples"
        sc = coll.stackcounts(data, countname=countname, palette="hot", sample_period=sample_period)
        sc.stats.update(event=event, frequency=freq, period=period, cpus=len(cpus))
        yield from coll.results(sc, ctx)

    @staticmethod
    def _banner(opts: Options, event: str, freq: int, period: int, pids: list[int], tids: list[int],
                flt: object, duration: float | None) -> str:
        if pids:
            who = "PID " + ",".join(map(str, pids))
        elif tids:
            who = "TID " + ",".join(map(str, tids))
        else:
            who = "all threads"
        if flt is not None:
            who += f" in {getattr(flt, 'description', 'the cgroup')}"
        rate = f"{freq} Hertz" if freq else f"every {period} events"
        end = f" for {duration:g} secs." if duration else "... Hit Ctrl-C to end."
        return (f"Sampling at {rate} of {who} by {S.stack_context(opts)} stack "
                f"(perf_event mode, {event} on {len(perf.online_cpus())} CPUs){end}")


__all__ = ["Profile", "sampling_event"]
