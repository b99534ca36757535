"""Perf events by name for perfstat, llcstat, profile and stackcount (private: not a tool).

- names, aliases and kinds (software count, software clock, hardware) of the events we count;
- per-CPU perf_event_open with one clear line when an event cannot be opened (no PMU in a VM),
  counting or sampling (open_sampling + attach_all for the stack tools' perf_event programs);
- derived ratios (IPC, miss rates) from counts, pure functions so they are unit-tested;
- visit_cpus(): make every CPU switch tasks once, so per-switch accounting is current.
"""

from __future__ import annotations

import errno as E
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..bpf import perf
from ..errors import ToolUnavailable, UsageError

if TYPE_CHECKING:
    from ..bpf.object import Program

# canonical name -> kind: "sw" (counts of discrete software events), "clock" (ns), "hw" (PMU)
KINDS: dict[str, str] = {
    "cpu-clock": "clock", "task-clock": "clock",
    "page-faults": "sw", "minor-faults": "sw", "major-faults": "sw",
    "context-switches": "sw", "cpu-migrations": "sw",
    "cycles": "hw", "instructions": "hw", "cache-references": "hw", "cache-misses": "hw",
    "branch-instructions": "hw", "branch-misses": "hw", "bus-cycles": "hw", "ref-cycles": "hw",
    "LLC-loads": "hw", "LLC-load-misses": "hw",
}
ALIASES = {
    "faults": "page-faults", "cs": "context-switches", "migrations": "cpu-migrations",
    "cpu-cycles": "cycles", "branches": "branch-instructions",
}
SOFTWARE = [n for n, k in KINDS.items() if k != "hw"]
HARDWARE = [n for n, k in KINDS.items() if k == "hw"]

# derived column, numerator, denominator, factor
RATIOS: list[tuple[str, str, str, float]] = [
    ("IPC", "instructions", "cycles", 1.0),
    ("cache-miss%", "cache-misses", "cache-references", 100.0),
    ("LLC-miss%", "LLC-load-misses", "LLC-loads", 100.0),
    ("branch-miss%", "branch-misses", "branch-instructions", 100.0),
]

EVENT_PATTERN = r"[A-Za-z0-9_,-]{1,200}"


def canonical(name: str) -> str:
    """The canonical name of an event (aliases resolved); UsageError listing known ones."""
    name = ALIASES.get(name, name)
    if name not in KINDS:
        known = ", ".join(sorted(set(KINDS) | set(ALIASES), key=str.lower))
        raise UsageError(f"unknown event {name!r}; known events: {known}")
    return name


def parse_events(raw: Iterable[str] | None, default: list[str], max_events: int) -> list[str]:
    """-e values ('a,b' and/or repeated -e) -> canonical names, in order, without duplicates."""
    out: list[str] = []
    for item in raw or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            ev = canonical(part)
            if ev not in out:
                out.append(ev)
    if not out:
        out = list(default)
    if len(out) > max_events:
        raise UsageError(f"at most {max_events} events at once, got {len(out)}: {', '.join(out)}")
    return out


def column(event: str) -> str:
    """Column / JSON key of an event: clocks are shown in milliseconds."""
    return f"{event}(ms)" if KINDS[event] == "clock" else event


def display_value(event: str, value: int) -> int | float:
    return round(value / 1e6, 3) if KINDS[event] == "clock" else int(value)


def derive(counts: Mapping[str, float]) -> dict[str, float]:
    """Ratios whose two events were counted: IPC = instructions/cycles, miss% = misses/refs*100.

    A ratio over a zero denominator is left out (nothing to divide), never reported as 0.
    """
    out: dict[str, float] = {}
    for name, num, den, factor in RATIOS:
        if num in counts and den in counts and counts[den]:
            out[name] = round(factor * counts[num] / counts[den], 2)
    return out


def ratio_columns(events: Iterable[str]) -> list[str]:
    evs = set(events)
    return [name for name, num, den, _ in RATIOS if num in evs and den in evs]


def hit_percent(refs: int, misses: int) -> float:
    """BCC llcstat's HIT%: (refs - misses) / refs, 0 when misses exceed the sampled refs."""
    if refs <= 0 or misses >= refs:
        return 0.0
    return 100.0 * (refs - misses) / refs


# ------------------------------------------------------------------------------- opening events
def pmu_present() -> bool:
    return perf.has_hardware_pmu()


def no_pmu_message(events: Iterable[str], tool: str = "perfstat", advice: str = "") -> str:
    advice = advice or f"software events work: {', '.join(SOFTWARE)}"
    return (f"{tool}: cannot count {', '.join(events)}: hardware events need a CPU PMU and this "
            f"machine exposes none to the kernel (no /sys/bus/event_source/devices/cpu*; usual in VMs "
            f"without a virtual PMU); {advice}")


def require_pmu(events: Iterable[str], tool: str = "perfstat", advice: str = "") -> None:
    hw = [e for e in events if KINDS[e] == "hw"]
    if hw and not pmu_present():
        raise ToolUnavailable(no_pmu_message(hw, tool, advice))


def max_sample_rate() -> int | None:
    """kernel.perf_event_max_sample_rate (samples/s per CPU), None when unreadable."""
    try:
        with open("/proc/sys/kernel/perf_event_max_sample_rate") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def min_clock_period() -> int:
    """The shortest sampling period, ns, of a clock event: the kernel's maximum sample rate
    (default 100,000/s, i.e. 10 us; the kernel also never runs its timer faster than 10 us).
    Shorter periods only flood the ring and the stack map; -c 1 on cpu-clock took an agent
    to 11 GiB before this limit."""
    rate = max_sample_rate() or 100_000
    return max(10_000, 1_000_000_000 // max(rate, 1))


def check_period(event: str, period: int, flag: str = "-c") -> None:
    """A clear UsageError for a clock event sampled faster than the kernel allows."""
    if period and KINDS.get(event) == "clock" and period < min_clock_period():
        raise UsageError(f"{flag} {period}: {event} counts nanoseconds; the shortest period is "
                         f"{min_clock_period()} ns (kernel.perf_event_max_sample_rate = {max_sample_rate()})")


def spec(event: str) -> tuple[int, int]:
    return perf.event_spec(event)


def open_on_cpu(event: str, cpu: int, period: int = 0) -> int:
    """A system-wide perf event on one CPU: counting (period 0) or sampling every `period`."""
    type_, config = spec(event)
    try:
        return perf.perf_event_open(type_, config, cpu, -1, period=period)
    except perf.PerfOpenError as e:
        if KINDS[event] == "hw" and e.errno in (E.ENOENT, E.ENODEV, E.EOPNOTSUPP):
            raise ToolUnavailable(f"cannot count {event}: this CPU's PMU does not provide it "
                                  f"({os.strerror(e.errno)})") from None
        raise ToolUnavailable(f"cannot open {event} on CPU {cpu}: {os.strerror(e.errno)}") from None


def open_sampling(event: str, cpus: list[int], freq: int = 0, period: int = 0) -> list[int]:
    """One sampling perf event per CPU (pid -1: every task on it). Closes what it opened on error."""
    type_, config = perf.event_spec(event)
    fds: list[int] = []
    try:
        for cpu in cpus:
            fds.append(perf.perf_event_open(type_, config, cpu=cpu, pid=-1, freq=freq, period=period))
    except perf.PerfOpenError as e:
        for fd in fds:
            os.close(fd)
        if e.errno == E.EINVAL and freq:
            raise UsageError(f"-F {freq}: the kernel refuses this sampling rate (kernel.perf_event_max_sample_rate "
                             f"is {max_sample_rate()})") from None
        raise
    return fds


def attach_all(prog: Program, fds: list[int]) -> None:
    """Attach prog to every perf event fd; each link then owns its fd (the rest are closed on error)."""
    for i, fd in enumerate(fds):
        try:
            prog.attach_perf_event(fd)
        except BaseException:
            for rest in fds[i + 1 :]:
                os.close(rest)
            raise


def sample_labels(event: str, period: int, freq: int = 0) -> tuple[str, int]:
    """(count name, sample period in ns) of stacks sampled on `event`: a clock's samples stand
    for time (pprof / speedscope show it); a counted event at period 1 is one sample per event,
    so the counts are the events themselves."""
    if KINDS.get(event) == "clock":
        return "samples", period or int(1e9 / freq)
    return (event if period == 1 else "samples"), 0


def visit_cpus(cpus: Iterable[int]) -> int:
    """Run this thread once on each CPU, then restore its affinity; returns CPUs visited.

    Moving onto a CPU is a context switch there: the task that was running on it goes through
    sched_switch, so per-switch accounting (perfstat's read mode) takes its counts up to now.
    """
    try:
        orig = os.sched_getaffinity(0)
    except OSError:
        return 0
    done = 0
    try:
        for cpu in cpus:
            try:
                os.sched_setaffinity(0, {cpu})
                done += 1
            except OSError:  # not in our cpuset, or went offline
                continue
    finally:
        try:
            os.sched_setaffinity(0, orig)
        except OSError:
            pass
    return done
