"""Typed results every tool returns, and every frontend (CLI, REST, Prometheus) renders.

A tool's run yields these; renderers in bpfscope.render turn each into text, JSON,
folded stacks, SVG or pprof. Keeping them plain dataclasses means the agent can hold
results without holding any BPF object.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


# --------------------------------------------------------------------------- events
@dataclass(slots=True)
class Column:
    """One text column of an event table: header, width, record key, optional formatter."""

    title: str
    key: str
    width: int = 0  # 0: last column, not padded
    align: str = "<"  # "<" or ">"
    fmt: Any = None  # callable(value, record) -> str


@dataclass(slots=True)
class Event:
    """One record of an event stream (execsnoop row, tcplife session, tty write...)."""

    record: dict[str, Any]
    text: str | None = None  # text mode writes this verbatim instead of a table row (ttysnoop)


@dataclass(slots=True)
class Notice:
    """A line for the user that is not data (mode banner, warnings). Goes to stderr in text mode."""

    message: str
    level: str = "info"


@dataclass(slots=True)
class Summary:
    """Last record of any run: lost events and other counters the user must see."""

    lost_events: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------- histograms
@dataclass(slots=True)
class Histogram:
    """A log2 histogram: slots[i] counts values in [2**i, 2**(i+1)) (slot 0 holds 0 and 1).

    `key` names which histogram this is when a tool keeps several (per pid, per disk...).
    """

    slots: list[int]
    unit: str = "usecs"
    key: str | None = None
    key_label: str = ""
    total: int = 0  # sum of values, in `unit`
    linear_step: int = 0  # 0 = log2; >0 = linear buckets of this width

    @property
    def count(self) -> int:
        return sum(self.slots)

    def bounds(self, i: int) -> tuple[int, int]:
        """Inclusive low/high bound of slot i, as BCC prints them."""
        if self.linear_step:
            return i * self.linear_step, (i + 1) * self.linear_step - 1
        if i == 0:
            return 0, 1
        return 1 << i, (1 << (i + 1)) - 1


@dataclass(slots=True)
class HistogramSet:
    """All histograms of one interval, with the interval's wall-clock stamp."""

    histograms: list[Histogram]
    timestamp: float = field(default_factory=time.time)
    interval: float | None = None


# ------------------------------------------------------------------------- rates
@dataclass(slots=True)
class RateTable:
    """Counters over an interval (vfsstat, cgnet): one row per key, columns are counters."""

    columns: list[str]
    rows: list[dict[str, Any]]
    interval: float
    timestamp: float = field(default_factory=time.time)
    title: str = ""
    header: bool = True  # text: print the column header (False: rows continue the last table, as vfsstat)
    width: int = 0  # text: minimum column width (BCC's vfsstat: 8), keeps rows aligned across tables


# ------------------------------------------------------------------------- stacks
@dataclass(frozen=True, slots=True)
class Frame:
    """One symbolized stack frame. kind: kernel | user | jit | unknown | comm | node | delim."""

    name: str
    kind: str = "user"
    module: str = ""
    offset: int = 0  # offset within module (for pprof / [unknown] frames)
    address: int = 0


@dataclass(slots=True)
class StackCounts:
    """Counts per stack; stacks are tuples of Frames, root first (comm, user..., kernel...)."""

    counts: dict[tuple[Frame, ...], int]
    countname: str = "samples"  # "samples" or "us" (off-CPU time)
    palette: str = "hot"  # "hot" (CPU), "cold" (off-CPU), "mem"...
    stats: dict[str, Any] = field(default_factory=dict)  # collisions, lost, unresolved ratio
    sample_period: int = 0  # for pprof: ns per sample when sampling by time

    def total(self) -> int:
        return sum(self.counts.values())

    def folded(self) -> dict[str, int]:
        """Frames joined by ';' (root first), counts merged for equal names."""
        out: dict[str, int] = {}
        for stack, n in self.counts.items():
            line = ";".join(f.name for f in stack)
            out[line] = out.get(line, 0) + n
        return out


Result = Event | Notice | Summary | HistogramSet | RateTable | StackCounts


def as_mapping(obj: Any) -> Mapping[str, Any]:
    """Plain-dict view used by JSON renderers."""
    from dataclasses import asdict

    return asdict(obj)
