"""stackcount: count the stack traces that led to an event, as BCC's stackcount.

PATTERN (BCC's forms):
  t:CATEGORY:EVENT        a tracepoint (t:sched:sched_switch)
  c:FUNC                  a libc function, uprobe (c:malloc)
  [p:]LIB:FUNC            a function of a library or program: LIB is a name (pthread ->
                          libpthread.so.N, or a program on PATH) or a path (/bin/bash:readline);
                          FUNC may hold * ? [..] wildcards
  FUNC, k:FUNC, p::FUNC   a kernel function: fentry, else kprobe, where the kernel has them
  sw:EVENT[:PERIOD]       a software perf event (sw:page-faults, sw:context-switches), counted on
                          every CPU; PERIOD events per sample, default 1 (every event; clocks:
                          1 ms). hw:EVENT[:PERIOD] for hardware events where the CPU has a PMU.
                          bpftrace's software:EVENT:PERIOD / hardware:... spellings work too

Each target kind is its own hook plan; the BPF object holds one program per hook type and
user space loads the one the pattern needs. A new kind (a software perf event, USDT...)
is one more entry in `parse_pattern` and `_attach`.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from ..bpf import mounts
from ..bpf.features import Features
from ..bpf.libbpf import BpfError
from ..bpf.object import BpfObject
from ..errors import BpfscopeError, ToolUnavailable, UsageError
from ..options import DURATION, PIDS, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Notice, Result
from ..toolkit import object_path, open_object
from . import _stacks as S

TRACEPOINT = HookPlan((Hook("tracepoint", ("tracepoint",), "tracepoint program"),))
UPROBE = HookPlan((Hook("uprobe", ("uprobe",), "uprobe on each matching function"),))
KFUNC = HookPlan(
    (
        Hook("fentry", ("fentry",), "fentry on the kernel function"),
        Hook("kprobe", ("kprobe",), "kprobe on the kernel function"),
    ),
    hint="count a tracepoint instead (t:CATEGORY:EVENT, e.g. t:sched:sched_switch) or a user function (c:malloc)",
)
PERF = HookPlan(
    (Hook("perf_event", ("perf_event",), "perf event on every CPU, a sample each PERIOD events"),),
    hint="perf events need perf_event_open and BPF perf_event programs (CONFIG_PERF_EVENTS, CONFIG_BPF_EVENTS)",
)
PLANS = {"tracepoint": TRACEPOINT, "uprobe": UPROBE, "kfunc": KFUNC, "perf": PERF}
PROGRAMS = {"tracepoint": "sc_tracepoint", "uprobe": "sc_uprobe", "fentry": "sc_fentry", "kprobe": "sc_kprobe",
            "perf_event": "sc_perf_event"}
PERF_PREFIXES = {"sw": "sw", "software": "sw", "hw": "hw", "hardware": "hw"}
CLOCK_PERIOD = 1_000_000  # default period of clock events: 1 ms of CPU time per sample
MAX_UPROBES = 256

LIB_DIRS = (
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
    "/usr/local/lib",
)
_NAME = re.compile(r"[A-Za-z0-9_.@$*?\[\]-]+")
_IDENT = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Target:
    kind: str  # "tracepoint" | "uprobe" | "kfunc" | "perf"
    name: str  # event / function (a glob for uprobes) / canonical perf event
    category: str = ""  # tracepoint category; perf: "sw" or "hw"
    library: str = ""  # uprobe: library or program as given
    period: int = 0  # perf: events per sample

    def describe(self) -> str:
        if self.kind == "tracepoint":
            return f"t:{self.category}:{self.name}"
        if self.kind == "perf":
            return f"{self.category}:{self.name}:{self.period}"
        if self.kind == "uprobe":
            return f"{self.library}:{self.name}"
        return self.name


def parse_pattern(pattern: str) -> Target:
    """PATTERN -> Target, or a UsageError saying what was expected."""
    p = pattern.strip()
    parts = p.split(":")
    bad = UsageError(f"bad pattern {pattern!r}: expected t:CATEGORY:EVENT, c:FUNC, LIB:FUNC, /path:FUNC or a "
                     "kernel FUNC")
    if parts[0] in PERF_PREFIXES:
        return _perf_target(pattern, PERF_PREFIXES[parts[0]], parts[1:])
    if parts[0] in ("t", "tracepoint"):
        if len(parts) != 3 or not all(_IDENT.fullmatch(x) for x in parts[1:]):
            raise UsageError(f"bad tracepoint {pattern!r}: expected t:CATEGORY:EVENT (no wildcards)")
        return Target("tracepoint", parts[2], category=parts[1])
    if len(parts) == 1 or (parts[0] in ("k", "kprobe", "p") and (len(parts) == 2 or parts[1] == "")):
        func = parts[-1]
        if len(parts) == 3 and parts[0] == "p" and parts[1] == "":
            func = parts[2]
        elif len(parts) > 2:
            raise bad
        if not _IDENT.fullmatch(func or ""):
            if func and _NAME.fullmatch(func):
                raise UsageError(f"kernel function patterns with wildcards are not supported: {func!r}")
            raise bad
        return Target("kfunc", func)
    if parts[0] in ("p", "u", "uprobe"):
        if parts[0] == "u":
            raise UsageError("USDT probes (u:LIB:PROBE) are not supported; use LIB:FUNC for a function")
        parts = parts[1:]
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise bad
    lib, func = parts
    if not _NAME.fullmatch(func):
        raise UsageError(f"bad function name {func!r}")
    if "/" not in lib and not _NAME.fullmatch(lib):
        raise UsageError(f"bad library name {lib!r}")
    return Target("uprobe", func, library=lib)


def _perf_target(pattern: str, prefix: str, rest: list[str]) -> Target:
    """sw:EVENT[:PERIOD] / hw:EVENT[:PERIOD] -> a perf Target (event names as perfstat's)."""
    from ._perfevents import KINDS, canonical, check_period

    if not 1 <= len(rest) <= 2 or not rest[0]:
        raise UsageError(f"bad perf event pattern {pattern!r}: expected {prefix}:EVENT[:PERIOD], e.g. sw:page-faults")
    event = canonical(rest[0])
    kind = "hw" if KINDS[event] == "hw" else "sw"
    if kind != prefix:
        raise UsageError(f"{event} is a {'hardware' if kind == 'hw' else 'software'} event: write {kind}:{event}")
    if len(rest) == 2 and rest[1]:
        if not rest[1].isdigit() or not 1 <= int(rest[1]) <= 2**40:
            raise UsageError(f"bad period {rest[1]!r} in {pattern!r}: a whole number of events, 1 to 2^40")
        period = int(rest[1])
    else:
        period = CLOCK_PERIOD if KINDS[event] == "clock" else 1
    check_period(event, period, flag=f"period of {event}")
    return Target("perf", event, category=kind, period=period)


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def resolve_binary(lib: str, pids: list[int]) -> str:
    """A uprobe target's file: a path as given, the library as a traced process maps it, a
    lib<name>.so.N of the system's library directories, or a program on PATH."""
    if "/" in lib:
        if not os.path.isfile(lib):
            raise UsageError(f"no such file: {lib}")
        if not _is_elf(lib):
            raise UsageError(f"{lib} is not an ELF file")
        return lib
    names = (f"lib{lib}.so", lib)
    for pid in pids[:1]:
        from ..symbols.procmaps import read_maps

        try:
            maps = read_maps(pid)
        except ProcessLookupError:
            maps = []
        for m in maps:
            base = os.path.basename(m.path)
            if m.file_backed and any(base == n or base.startswith(n + ".") or base.startswith(n + "-")
                                     for n in names):
                path = f"/proc/{pid}/root{m.path}"
                if _is_elf(path):
                    return path
    for d in LIB_DIRS:
        cands = sorted(glob.glob(os.path.join(glob.escape(d), f"lib{glob.escape(lib)}.so*")), key=len)
        for c in cands:
            if re.fullmatch(rf"lib{re.escape(lib)}\.so(\.[0-9]+)*", os.path.basename(c)) and _is_elf(c):
                return os.path.realpath(c)
    exe = shutil.which(lib)
    if exe and _is_elf(exe):
        return exe
    raise UsageError(f"can't find library or program {lib!r} (give a path: /path/to/file:FUNC)")


def tracepoint_exists(category: str, name: str) -> bool:
    return os.path.isdir(os.path.join(mounts.tracefs(), "events", category, name))


@register
class Stackcount(Tool):
    name = "stackcount"
    help = "count the stack traces that led to an event (tracepoint, user or kernel function, perf event)"
    description = (
        "PATTERN: t:CATEGORY:EVENT (tracepoint), c:FUNC (libc), LIB:FUNC or /path:FUNC (uprobe; FUNC may\n"
        "hold * ? wildcards), FUNC or k:FUNC (kernel function: fentry, else kprobe), sw:EVENT[:PERIOD]\n"
        "(software perf event: page-faults, context-switches...; every event by default),\n"
        "hw:EVENT[:PERIOD] (hardware event, needs a CPU PMU)."
    )
    output = "stacks"
    hooks = HookPlan(TRACEPOINT.alternatives + UPROBE.alternatives + KFUNC.alternatives + PERF.alternatives)
    options = [
        Option("pattern", str, None, "what to count: t:CATEGORY:EVENT, c:FUNC, LIB:FUNC, /path:FUNC, kernel FUNC, "
               "sw:EVENT[:PERIOD]",
               pattern=r"[A-Za-z0-9_.:/@$*?\[\]+-]{1,255}", metavar="PATTERN"),
        PIDS,
        S.USER_STACKS_ONLY,
        S.KERNEL_STACKS_ONLY,
        Option("perpid", bool, False, "display stacks separately for each process", ("-P", "--perpid")),
        S.STACK_STORAGE_SIZE,
        S.HASH_STORAGE_SIZE,
        Option("mode", str, None, "force a hook mode instead of the best this kernel supports", ("--mode",),
               choices=tuple(PROGRAMS), metavar="{" + ",".join(PROGRAMS) + "}"),
        DURATION,
    ]
    examples = [
        "bpfscope stackcount t:sched:sched_switch -d 5     # why threads leave the CPU",
        "bpfscope stackcount -p 185 c:malloc               # who calls malloc in PID 185",
        "bpfscope stackcount -U /usr/bin/bash:readline     # user stacks only",
        "bpfscope stackcount -f --svg sw.svg t:sched:sched_switch -d 10",
        "bpfscope stackcount submit_bio                    # kernel function (fentry or kprobe)",
        "bpfscope stackcount -p 185 sw:page-faults --svg faults.svg   # where a process faults pages in",
        "bpfscope stackcount sw:context-switches -d 5      # who leaves the CPU, every switch",
    ]

    def mode(self, opts: Options, features: Features) -> Hook:
        return self._choose(parse_pattern(opts.pattern), features, opts.get("mode"))

    @classmethod
    def mode_report(cls, features: Features) -> list[tuple[str, bool, str]]:
        rows = []
        for label, plan in (("t:CAT:EVENT", TRACEPOINT), ("LIB:FUNC", UPROBE), ("kernel FUNC", KFUNC),
                            ("sw:EVENT", PERF)):
            try:
                hook = plan.choose(features)
            except BpfscopeError as e:
                rows.append((label, False, str(e)))
                continue
            rows.append((label, True, f"{hook.mode} ({hook.description})"))
        return rows

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        S.check_stack_options(opts)
        if not opts.pattern:
            raise UsageError("give a PATTERN: t:CATEGORY:EVENT, c:FUNC, LIB:FUNC, a kernel FUNC or sw:EVENT")
        target = parse_pattern(opts.pattern)
        hook = self._choose(target, ctx.features, opts.get("mode"))  # a clear error before any work
        S.duration_of(opts, ctx)
        pids = S.check_pids(opts.pid)
        where = self._resolve(target, hook, pids)
        try:
            yield from self._run(opts, ctx, target, hook, where, pids)
        except _FentryRefused as e:
            if not ctx.features.has("kprobe") or opts.get("mode"):
                raise UsageError(f"cannot attach fentry to kernel function {target.name!r}: {e}") from None
            yield Notice(f"fentry refused for {target.name} ({e}); using a kprobe.", level="warning")
            yield from self._run(opts, ctx, target, KFUNC.choose(ctx.features, "kprobe"), where, pids)

    @staticmethod
    def _choose(target: Target, features: Features, force: str | None) -> Hook:
        try:
            return PLANS[target.kind].choose(features, force)
        except ToolUnavailable:
            if target.kind != "kfunc":
                raise
            f = features
            raise ToolUnavailable(
                f"kernel function {target.name!r} needs fentry or kprobes, which this kernel does not allow "
                f"(fentry: {f.detail('fentry')}; kprobe: {f.detail('kprobe')}). Count a tracepoint instead "
                "(t:CATEGORY:EVENT, e.g. t:sched:sched_switch) or a user function (c:malloc)"
            ) from None

    @staticmethod
    def _resolve(target: Target, hook: Hook, pids: list[int]) -> tuple[str, list[tuple[str, int]]]:
        """(file, [(function, file offset)]) for uprobes; checks tracepoints, kernel functions and
        that a hardware event has a PMU to count it."""
        if target.kind == "perf":
            from ._perfevents import require_pmu

            require_pmu([target.name], "stackcount", advice="software events work: sw:page-faults, "
                        "sw:context-switches, sw:cpu-migrations, sw:cpu-clock...")
            return "", []
        if target.kind == "tracepoint":
            if not tracepoint_exists(target.category, target.name):
                raise UsageError(f"no tracepoint {target.category}:{target.name} on this kernel "
                                 f"(see {mounts.tracefs()}/events)")
            return "", []
        if target.kind == "kfunc":
            from ..symbols import KernelSymbols

            if KernelSymbols.shared().lookup_name(target.name) is None:
                raise UsageError(f"no kernel function {target.name!r} in /proc/kallsyms")
            return "", []
        from ..symbols import SymbolError, find_symbols

        path = resolve_binary(target.library, pids)
        try:
            funcs = find_symbols(path, target.name)
        except (SymbolError, OSError) as e:
            raise UsageError(f"cannot read the symbols of {path}: {e}") from None
        if not funcs:
            raise UsageError(f"no function matching {target.name!r} in {path}")
        offsets: dict[int, str] = {}
        for name, off in funcs:
            offsets.setdefault(off, name)  # aliases (malloc / __libc_malloc) share one probe
        if len(offsets) > MAX_UPROBES:
            raise UsageError(f"{target.name!r} matches {len(offsets)} functions in {path}; at most {MAX_UPROBES}")
        return path, [(name, off) for off, name in sorted(offsets.items())]

    def _run(self, opts: Options, ctx: RunContext, target: Target, hook: Hook,
             where: tuple[str, list[tuple[str, int]]], pids: list[int]) -> Iterator[Result]:
        prog_name = PROGRAMS[hook.mode]
        path, funcs = where
        with open_object(object_path("stackcount"), needs_tracefs=target.kind == "tracepoint") as obj:
            coll = S.StackCollector(obj, opts, recover_collisions=True, trim_tracing=True)
            try:
                coll.configure()
                obj.only_programs({prog_name})
                obj.set_global("filter_pids", bool(pids))
                if hook.mode == "fentry":
                    obj.program(prog_name).set_attach_target(target.name)
                try:
                    obj.load()
                except BpfError as e:
                    if hook.mode == "fentry":
                        raise _FentryRefused(str(e).splitlines()[0]) from None
                    raise
                S.fill_id_filter(obj, "pids", pids)
                nprobes = self._attach(obj, prog_name, target, hook, path, funcs, pids)
                ctx.mode = hook.mode
                ctx.mark_attached()
                coll.start()
                what = {"uprobe": f"{nprobes} functions", "perf": f"{nprobes} CPUs"}.get(target.kind, f"1 {hook.mode}")
                yield Notice(f'Tracing {what} for "{target.describe()}" ({hook.mode} mode)... Hit Ctrl-C to end.')
                coll.wait(ctx)
                data = coll.finish()
            finally:
                coll.close()
        countname, sample_period = "samples", 0
        if target.kind == "perf":
            from ._perfevents import sample_labels

            countname, sample_period = sample_labels(target.name, target.period)
        sc = coll.stackcounts(data, countname=countname, palette="hot", per_pid=bool(opts.perpid),
                              sample_period=sample_period)
        sc.stats.update(probes=nprobes, mode=hook.mode)
        if target.kind == "perf":
            sc.stats.update(event=target.name, period=target.period)
        yield from coll.results(sc, ctx)

    @staticmethod
    def _attach(obj: BpfObject, prog_name: str, target: Target, hook: Hook, path: str,
                funcs: list[tuple[str, int]], pids: list[int]) -> int:
        prog = obj.program(prog_name)
        if hook.mode == "perf_event":
            from ..bpf import perf
            from ._perfevents import attach_all, open_sampling

            cpus = perf.online_cpus()
            try:
                fds = open_sampling(target.name, cpus, period=target.period)
            except perf.PerfOpenError as e:
                raise ToolUnavailable(f"cannot open perf event {target.name}: {os.strerror(e.errno)}") from None
            attach_all(prog, fds)
            return len(cpus)
        if hook.mode == "tracepoint":
            prog.attach_tracepoint(target.category, target.name)
            return 1
        if hook.mode == "fentry":
            prog.attach_trace()
            return 1
        if hook.mode == "kprobe":
            try:
                prog.attach_kprobe(target.name)
            except BpfError as e:
                raise UsageError(f"cannot attach a kprobe to {target.name!r}: {str(e).splitlines()[0]}") from None
            return 1
        pid = pids[0] if len(pids) == 1 else -1  # one process: the kernel filters for us
        for _name, off in funcs:
            prog.attach_uprobe(path, offset=off, pid=pid)
        return len(funcs)


class _FentryRefused(Exception):
    pass
