"""funclatency: time functions and system calls, and print log2 histograms of their latency.

    bpfscope funclatency syscall:read          # read(2), all processes
    bpfscope funclatency -u -p 181 c:malloc     # libc's malloc in one process, microseconds
    bpfscope funclatency -F 'vfs_r*'            # kernel functions, one histogram each

Targets (BCC's syntax, plus system calls):
  FUNC, k:FUNC            kernel function: fentry/fexit, else kprobe/kretprobe (-k forces kprobe)
  LIB:FUNC, /path:FUNC    user function (LIB as BCC: c, pthread, ssl...): uprobe/uretprobe
  syscall:NAME            system call (t:syscalls:NAME too): sys_enter/sys_exit hooks
FUNC and NAME may be globs (or regular expressions with -r).

Hooks for system calls (bench/overhead.py on this project's 6.18 VM, best of 7 rounds, ns added
to each call):
                                       traced read(2)   any other syscall   exit (Ctrl-C)
  syscalls:sys_{enter,exit}_read            +397               +64             0.13 s
  tp_btf sys_enter/sys_exit by number       +322              +178             0.02 s
  raw_tp sys_enter/sys_exit by number       +347              +213             0.02 s
  (bpftrace with a tid-keyed start map and hist(): +950 per traced read)
Each tracepoint link costs 50-80 ms to detach, serialized in the kernel (21 links: ~1 s); the
tp_btf pair is two links whatever the number of system calls, but runs on every system call of
the machine.  So one or two system calls get tracepoints (2-4 links, nearly free for everything
else), more get the tp_btf pair; --mode picks one explicitly.  Start times live in task-local
storage: in the same harness a tid-keyed hash (update + delete per call) added ~280 ns more.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..bpf import mounts
from ..bpf.libbpf import BpfError
from ..errors import BpfscopeError, ToolUnavailable, UsageError
from ..histograms import UNIT_DIVISORS, interval_loop
from ..options import CGROUP, DURATION, INTERVAL, PID, TIMESTAMP, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Histogram, Notice, Result, Summary
from ..toolkit import object_path, open_object
from . import _syscalls
from ._task_filter import fill_cgroup_filter, set_task_filter

MAX_FUNCS = 20  # -F histograms and fentry slots (funclatency.bpf.c MAX_FUNCS)
MAX_PROBES = 500  # functions one run may attach to with kprobes/uprobes
TRACEPOINT_MAX_SYSCALLS = 2  # more system calls than this: one tp_btf pair instead of 2 links each

KERNEL_HOOKS = HookPlan(
    (
        Hook("fentry", ("fentry", "task_storage"), "fentry/fexit"),
        Hook("kprobe", ("kprobe", "task_storage"), "kprobe/kretprobe"),
    ),
    hint="Time the system call instead, e.g. `bpfscope funclatency syscall:read`.",
)
USER_HOOKS = HookPlan((Hook("uprobe", ("uprobe", "task_storage"), "uprobe/uretprobe"),))
SYSCALL_TP = Hook("tracepoint", ("tracepoint", "task_storage"), "syscalls:sys_enter_NAME/sys_exit_NAME")
SYSCALL_BTF = Hook("tp_btf", ("tp_btf", "task_storage"), "tp_btf sys_enter/sys_exit filtered by number")
SYSCALL_RAW = Hook("raw_tp", ("raw_tp", "task_storage"), "raw_tp sys_enter/sys_exit filtered by number")
SYSCALL_FEW = HookPlan((SYSCALL_TP, SYSCALL_BTF, SYSCALL_RAW))
SYSCALL_MANY = HookPlan((SYSCALL_BTF, SYSCALL_RAW, SYSCALL_TP))
ALL_MODES = ("fentry", "kprobe", "uprobe", "tracepoint", "tp_btf", "raw_tp")

ENTRY_EXIT = {  # mode -> (entry program, return program)
    "kprobe": ("kprobe_entry", "kprobe_return"),
    "uprobe": ("uprobe_entry", "uprobe_return"),
    "tracepoint": ("tp_sys_enter", "tp_sys_exit"),
    "tp_btf": ("btf_sys_enter", "btf_sys_exit"),
    "raw_tp": ("raw_sys_enter", "raw_sys_exit"),
}


# ------------------------------------------------------------------------------ targets
@dataclass
class Target:
    kind: str  # "kernel" | "user" | "syscall"
    pattern: str  # function / syscall name, glob or regex
    text: str  # as the user wrote it
    library: str = ""  # user functions: library short name or path


def parse_target(text: str) -> Target:
    """BCC's pattern syntax plus syscall:NAME: see the module docstring."""
    t = text.strip()
    if not t:
        raise UsageError("empty pattern")
    if any(c.isspace() or not c.isprintable() for c in t):
        raise UsageError(f"pattern {text!r} contains spaces or control characters")
    for prefix in ("syscall:", "syscalls:", "t:syscalls:", "tracepoint:syscalls:"):
        if t.startswith(prefix):
            return Target("syscall", _need(t[len(prefix):], text), text)
    if t.startswith(("t:", "tracepoint:")):
        raise UsageError(f"{text}: funclatency times calls; of tracepoints only t:syscalls:NAME is supported")
    if t.startswith(("k:", "kprobe:")):
        return Target("kernel", _need(t.split(":", 1)[1], text), text)
    if t.startswith(("u:", "uprobe:")):
        t = t.split(":", 1)[1]
        if ":" not in t:
            raise UsageError(f"{text}: expected u:LIBRARY:FUNCTION")
    if ":" not in t:
        return Target("kernel", t, text)
    lib, func = t.rsplit(":", 1)
    return Target("user", _need(func, text), text, library=_need(lib, text))


def _need(part: str, text: str) -> str:
    if not part:
        raise UsageError(f"{text}: missing function name")
    return part


_SKIP_KERNEL = re.compile(r"\.|^__ftrace_invalid_address")


def kernel_functions(pattern: str, regex: bool = False) -> list[str]:
    """Traceable kernel functions matching a glob or regex (available_filter_functions,
    else text symbols of /proc/kallsyms); compiler clones (foo.isra.0) left out."""
    import fnmatch

    names: set[str] = set()
    try:
        with open(os.path.join(mounts.tracefs(), "available_filter_functions")) as f:
            names = {line.split()[0] for line in f if line.strip()}
    except (OSError, BpfscopeError):
        pass
    if not names:
        try:
            with open("/proc/kallsyms") as f:
                names = {p[2] for p in (line.split() for line in f) if len(p) >= 3 and p[1] in "tT"}
        except OSError as e:
            raise BpfscopeError(f"cannot list kernel functions: {e.strerror}") from None
    rx = re.compile(pattern) if regex else None
    out = [n for n in names if not _SKIP_KERNEL.search(n)
           and (rx.match(n) if rx else fnmatch.fnmatchcase(n, pattern))]
    return sorted(out)


def _is_pattern(s: str, regex: bool) -> bool:
    return regex or any(c in s for c in "*?[")


def _syscall_alternative(func: str) -> str:
    """A system call to time instead of kernel function `func` (vfs_read -> syscall:read)."""
    base = func
    for prefix in ("__x64_sys_", "__se_sys_", "__do_sys_", "ksys_", "do_sys_", "sys_", "vfs_", "do_"):
        if base.startswith(prefix):
            base = base[len(prefix):]
            break
    name = _syscalls.canonical(base)
    return f"syscall:{name}" if name else "syscall:NAME"


@dataclass
class Plan:
    target: Target
    hook: Hook
    functions: list[str]  # display names, index i is function number i + 1
    offsets: list[int] = field(default_factory=list)  # uprobes: file offsets
    binary: str = ""  # uprobes: file attached to
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------- tool
@register
class Funclatency(Tool):
    name = "funclatency"
    help = "time functions and system calls: log2 latency histograms (kernel, user, syscall:NAME)"
    description = (
        "PATTERN: FUNC or k:FUNC (kernel function), LIB:FUNC or /path/to/binary:FUNC (user function),\n"
        "syscall:NAME or t:syscalls:NAME (system call). Globs allowed (regular expressions with -r)."
    )
    output = "histogram"
    hooks = HookPlan(SYSCALL_FEW.alternatives + USER_HOOKS.alternatives + KERNEL_HOOKS.alternatives)
    options = [
        Option("pattern", str, None, "what to time (see above)", metavar="PATTERN", max_len=512),
        PID,
        INTERVAL,
        DURATION,
        TIMESTAMP,
        Option("microseconds", bool, False, "microsecond histogram", ("-u", "--microseconds")),
        Option("milliseconds", bool, False, "millisecond histogram", ("-m", "--milliseconds")),
        Option("function", bool, False, f"one histogram per function (at most {MAX_FUNCS})", ("-F", "--function")),
        Option("regexp", bool, False, "PATTERN's function part is a regular expression", ("-r", "--regexp")),
        Option("kprobe", bool, False, "kernel functions: use kprobes even where fentry works", ("-k", "--kprobe")),
        Option("mode", str, None, "force a hook: " + ", ".join(ALL_MODES), ("--mode",), choices=ALL_MODES),
        CGROUP,
    ]
    examples = [
        "bpfscope funclatency syscall:read           # read(2) latency, nanoseconds",
        "bpfscope funclatency -u -p 181 c:malloc      # malloc in PID 181, microseconds",
        "bpfscope funclatency -m -i 5 vfs_fsync       # kernel function, every 5 s, milliseconds",
        "bpfscope funclatency -F 'syscall:*read*'     # one histogram per matching system call",
        "bpfscope funclatency /usr/bin/bash:readline  # a function of a program",
    ]

    # ---- modes -------------------------------------------------------------
    def mode(self, opts: Options, features) -> Hook:  # noqa: ANN001
        return self._choose(parse_target(opts.pattern or ""), opts, features, None)

    @staticmethod
    def _choose(target: Target, opts: Options, features, n_syscalls: int | None) -> Hook:  # noqa: ANN001
        force = opts.get("mode")
        if opts.get("kprobe"):
            if target.kind != "kernel":
                raise UsageError("-k applies to kernel functions only")
            if force and force != "kprobe":
                raise UsageError(f"-k contradicts --mode {force}")
            force = "kprobe"
        if target.kind == "kernel":
            plan = KERNEL_HOOKS
        elif target.kind == "user":
            plan = USER_HOOKS
        else:
            plan = SYSCALL_MANY if (n_syscalls or 1) > TRACEPOINT_MAX_SYSCALLS else SYSCALL_FEW
        if force and force not in {h.mode for h in plan.alternatives}:
            raise UsageError(f"--mode {force} cannot time a {target.kind} target "
                             f"(modes: {', '.join(h.mode for h in plan.alternatives)})")
        try:
            return plan.choose(features, force)
        except ToolUnavailable as e:
            if target.kind == "kernel":
                what = "does not allow kprobes" if force == "kprobe" else "allows neither fentry nor kprobes"
                alt = _syscall_alternative(target.pattern)
                raise ToolUnavailable(
                    f"cannot time kernel function {target.pattern!r}: this kernel {what} "
                    f"({'; '.join(_reasons(features, force))}). Time the system call instead: "
                    f"bpfscope funclatency {alt}"
                ) from None
            raise ToolUnavailable(f"cannot time {target.text!r}: {e}") from None

    @classmethod
    def mode_report(cls, features) -> list[tuple[str, bool, str]]:  # noqa: ANN001
        rows = []
        for label, plan in (("kernel function", KERNEL_HOOKS), ("user function", USER_HOOKS),
                            ("syscall:NAME", SYSCALL_FEW)):
            try:
                hook = plan.choose(features)
                rows.append((label, True, f"{hook.mode} ({hook.description})"))
            except BpfscopeError as e:
                rows.append((label, False, str(e)))
        return rows

    # ---- resolution ----------------------------------------------------------
    def plan(self, opts: Options, ctx: RunContext) -> Plan:
        if not opts.get("pattern"):
            raise UsageError("a PATTERN is required, e.g. syscall:read, c:malloc or vfs_read")
        if opts.microseconds and opts.milliseconds:
            raise UsageError("-u and -m are exclusive")
        if opts.pid and not os.path.exists(f"/proc/{opts.pid}"):
            raise UsageError(f"no process {opts.pid}")
        target = parse_target(opts.pattern)
        regex = bool(opts.regexp)
        if regex:
            try:
                re.compile(target.pattern)
            except re.error as e:
                raise UsageError(f"bad regular expression {target.pattern!r}: {e}") from None
        feats = ctx.features
        if target.kind == "syscall":
            names = _syscalls.match(target.pattern, regex)
            if not names:
                raise UsageError(f"no system call matches {target.pattern!r} (x86-64 names, e.g. read, openat)")
            self._check_count(names, opts, "system calls")
            hook = self._choose(target, opts, feats, len(names))
            notes = []
            if hook.mode == "tracepoint":
                tracefs = mounts.tracefs()
                missing = [n for n in names if _syscalls.tracepoint(n, tracefs) is None]
                if missing and len(missing) == len(names):
                    raise ToolUnavailable(f"this kernel has no syscalls:sys_enter_{missing[0]} tracepoint "
                                          "(system call not built in?)" + (
                                              "; try --mode tp_btf" if not opts.get("mode") else ""))
                if missing:
                    notes.append(f"no tracepoint for {', '.join(missing)}: not timed")
                    names = [n for n in names if n not in missing]
            return Plan(target, hook, names, notes=notes)
        if target.kind == "user":
            hook = self._choose(target, opts, feats, None)
            from ..bpf.uprobe import find_functions, resolve_binary

            binary = resolve_binary(target.library, opts.pid)
            found = find_functions(binary, target.pattern, regex)
            if not found:
                raise UsageError(f"no function matches {target.pattern!r} in {binary}")
            self._check_count(found, opts, "functions")
            return Plan(target, hook, [n for n, _ in found], offsets=[o for _, o in found], binary=binary)
        hook = self._choose(target, opts, feats, None)
        if _is_pattern(target.pattern, regex):
            funcs = kernel_functions(target.pattern, regex)
            if not funcs:
                raise UsageError(f"no traceable kernel function matches {target.pattern!r}")
        else:
            funcs = [target.pattern]
            known = kernel_functions(target.pattern)
            if not known:
                raise UsageError(f"no traceable kernel function {target.pattern!r} (not in "
                                 "available_filter_functions / kallsyms: inlined, or misspelt?)")
        self._check_count(funcs, opts, "kernel functions")
        notes: list[str] = []
        if hook.mode != "fentry":
            return Plan(target, hook, funcs, notes=notes)
        forced = opts.get("mode") == "fentry"
        typed = _in_vmlinux_btf(funcs)
        why = ""
        if len(funcs) > MAX_FUNCS:
            why = f"{len(funcs)} functions: more than fentry's {MAX_FUNCS} slots"
        elif len(typed) < len(funcs):
            why = f"{len(funcs) - len(typed)} of the functions ({', '.join(sorted(set(funcs) - typed)[:3])}) lack BTF"
        if why and not forced and feats.has("kprobe"):
            notes.append(f"{why}: using kprobes")
            return Plan(target, KERNEL_HOOKS.choose(feats, "kprobe"), funcs, notes=notes)
        if len(funcs) > MAX_FUNCS:
            raise UsageError(f"{target.pattern!r} matches {len(funcs)} kernel functions; fentry mode "
                             f"times at most {MAX_FUNCS}: narrow the pattern")
        if not typed:
            raise ToolUnavailable(f"no BTF for {', '.join(funcs[:3])}: fentry cannot attach"
                                  + ("" if feats.has("kprobe") else " and this kernel has no kprobes"))
        if len(typed) < len(funcs):
            notes.append(f"{why}: not timed")
            funcs = [f for f in funcs if f in typed]
        return Plan(target, hook, funcs, notes=notes)

    @staticmethod
    def _check_count(items: list, opts: Options, what: str) -> None:
        if opts.function and len(items) > MAX_FUNCS:
            raise UsageError(f"-F: the pattern matches {len(items)} {what}; at most {MAX_FUNCS} histograms "
                             "(narrow the pattern)")
        if len(items) > MAX_PROBES:
            raise UsageError(f"the pattern matches {len(items)} {what}; at most {MAX_PROBES} (narrow it)")

    # ---- run -----------------------------------------------------------------
    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        plan = self.plan(opts, ctx)
        mode = plan.hook.mode
        unit = "msecs" if opts.milliseconds else "usecs" if opts.microseconds else "nsecs"
        with open_object(object_path("funclatency")) as obj:
            cg_fd = set_task_filter(obj, opts.pid, opts.cgroup)
            obj.set_global("unit_div", UNIT_DIVISORS[unit])
            obj.set_global("per_func", bool(opts.function))
            obj.set_global("match_sp", mode == "uprobe")
            n = len(plan.functions)
            if mode == "fentry":
                progs = [f"fentry_{i}" for i in range(n)] + [f"fexit_{i}" for i in range(n)]
                obj.only_programs(progs)
                for i, func in enumerate(plan.functions):
                    for kind in ("fentry", "fexit"):
                        try:
                            obj.program(f"{kind}_{i}").set_attach_target(func)
                        except BpfError as e:
                            raise BpfscopeError(f"cannot use fentry on {func}: {_why(e)} (not in BTF, inlined or "
                                                "static? try -k)") from None
            else:
                obj.only_programs(ENTRY_EXIT[mode])
            _load(obj, mode)
            fill_cgroup_filter(obj, cg_fd)
            attached = self._attach(obj, plan, opts)
            ctx.mode = mode
            ctx.mark_attached()
            what = plan.target.text
            where = f" in {plan.binary}" if plan.binary else ""
            yield Notice(f'Tracing {attached} function{"s" if attached != 1 else ""} for "{what}"{where} '
                         f"({mode} mode: {plan.hook.description})... Hit Ctrl-C to end.")
            for note in plan.notes:
                yield Notice(note, "warning")

            reader = HistReader(obj, plan.functions if opts.function else None, unit)
            for hs in interval_loop(ctx, opts.interval, reader.read):
                yield hs
                for line in _averages(hs.histograms, unit):
                    yield Notice(line)
            lost = obj.get_global("lost_events")
            ctx.lost_events = lost
            yield Notice("Detaching...")
            yield Summary(lost_events=lost)

    def _attach(self, obj, plan: Plan, opts: Options) -> int:  # noqa: ANN001
        """Returns first, then entries: every entry seen then has its return seen too."""
        mode, funcs = plan.hook.mode, plan.functions
        glob = len(funcs) > 1 or _is_pattern(plan.target.pattern, bool(opts.regexp))
        if mode == "fentry":
            for i in range(len(funcs)):
                obj.program(f"fexit_{i}").attach_trace()
            for i in range(len(funcs)):
                obj.program(f"fentry_{i}").attach_trace()
            return len(funcs)
        entry, ret = (obj.program(p) for p in ENTRY_EXIT[mode])
        if mode in ("tracepoint", "tp_btf", "raw_tp"):
            m = obj.map("syscall_funcs")
            for i, name in enumerate(funcs):
                m.update(_syscalls.number(name), i + 1)
            if mode == "tracepoint":
                tracefs = mounts.tracefs()
                tps = [_syscalls.tracepoint(n, tracefs) for n in funcs]
                for tp in tps:
                    ret.attach_tracepoint("syscalls", f"sys_exit_{tp}")
                for tp in tps:
                    entry.attach_tracepoint("syscalls", f"sys_enter_{tp}")
            elif mode == "tp_btf":
                ret.attach_trace()
                entry.attach_trace()
            else:
                ret.attach_raw_tracepoint("sys_exit")
                entry.attach_raw_tracepoint("sys_enter")
            return len(funcs)

        pid = opts.pid or -1

        def attach(prog, i: int, retprobe: bool):  # noqa: ANN001, ANN202
            if mode == "kprobe":
                return prog.attach_kprobe(funcs[i], retprobe=retprobe, cookie=i + 1)
            return prog.attach_uprobe(plan.binary, offset=plan.offsets[i], retprobe=retprobe, pid=pid,
                                      cookie=i + 1)

        ok: list[int] = []
        failed: list[str] = []
        for i, name in enumerate(funcs):
            try:
                attach(ret, i, True)
                ok.append(i)
            except BpfError as e:
                if not glob:
                    raise BpfscopeError(f"cannot attach to {name}: {_why(e)}") from None
                failed.append(name)
        for i in ok:
            try:
                attach(entry, i, False)
            except BpfError as e:
                if not glob:
                    raise BpfscopeError(f"cannot attach to {funcs[i]}: {_why(e)}") from None
                failed.append(funcs[i])
        if failed and len(failed) >= len(funcs):
            raise BpfscopeError(f"could not attach to any of the {len(funcs)} matching functions")
        if failed:
            plan.notes.append(f"could not attach to {len(failed)} function(s): {', '.join(failed[:5])}"
                              + (" ..." if len(failed) > 5 else ""))
        return len(funcs) - len(failed)


def _in_vmlinux_btf(funcs: list[str]) -> set[str]:
    """The functions the kernel's BTF describes (what fentry needs); all of them when the BTF
    cannot be read (loading will say what is wrong)."""
    from ..bpf import libbpf as L

    btf = L.lib.btf__load_vmlinux_btf()
    if not btf:
        return set(funcs)
    try:
        return {f for f in funcs if L.lib.btf__find_by_name_kind(btf, f.encode(), 12) >= 0}  # BTF_KIND_FUNC
    finally:
        L.lib.btf__free(btf)


def _why(e: BpfError) -> str:
    return os.strerror(e.errno) if e.errno else str(e).splitlines()[0]


def _reasons(features, force: str | None) -> list[str]:  # noqa: ANN001
    modes = ("kprobe",) if force == "kprobe" else ("fentry", "kprobe")
    return [f"{m}: {features.detail(m)}" for m in modes if not features.has(m)]


def _load(obj, mode: str) -> None:  # noqa: ANN001
    try:
        obj.load()
    except BpfError as e:
        if mode == "fentry" and e.errno:
            raise BpfscopeError(f"loading fentry programs failed: {os.strerror(e.errno)} (try -k for kprobes)") from None
        raise


def _averages(hists: list[Histogram], unit: str) -> list[str]:
    """BCC's closing line: avg = N unit, total: N unit, count: N (per function with -F)."""
    lines = []
    for h in hists:
        if not h.count:
            continue
        prefix = f"{h.key}: " if h.key is not None else ""
        lines.append(f"{prefix}avg = {h.total // h.count} {unit}, total: {h.total} {unit}, count: {h.count}")
    return lines


class HistReader:
    """Reads the never-cleared per-CPU `hists` array and returns what each interval added."""

    def __init__(self, obj, functions: list[str] | None, unit: str):  # noqa: ANN001
        self.map = obj.map("hists")
        self.hist_t = obj.struct("hist")
        self.map.value_type = self.hist_t
        self.functions = functions
        self.unit = unit
        self.div = UNIT_DIVISORS[unit]
        n = len(functions) if functions else 1
        self.nslots = len(self.hist_t().slots)
        self.prev = [([0] * self.nslots, 0) for _ in range(n)]

    def _total(self, i: int) -> tuple[list[int], int]:
        slots = [0] * self.nslots
        total = 0
        values = self.map.lookup(i) or []
        for v in values if isinstance(values, list) else [values]:
            for j, c in enumerate(v.slots):
                if c:
                    slots[j] += c
            total += v.sum
        return slots, total

    def read(self) -> list[Histogram]:
        out = []
        for i, (pslots, psum) in enumerate(self.prev):
            slots, total = self._total(i)
            self.prev[i] = (slots, total)
            delta = [a - b for a, b in zip(slots, pslots, strict=True)]
            while delta and not delta[-1]:
                delta.pop()
            if self.functions is not None and not delta:
                continue
            out.append(Histogram(
                slots=delta, unit=self.unit,
                key=self.functions[i] if self.functions is not None else None,
                key_label="Function" if self.functions is not None else "",
                total=(total - psum) // self.div,
            ))
        return out


__all__ = ["Funclatency", "parse_target", "kernel_functions"]
