"""The public API for writing your own tools: the same pieces the built-in tools use.

    from bpfscope.api import Tool, register, Option, compile_bpf, open_object, ...

A tool file holds a Tool subclass decorated with @register. Run it with
`bpfscope run FILE.py [options]`, put it on BPFSCOPE_TOOL_PATH, or ship it in a package
with an entry point in the "bpfscope.tools" group: it then appears in the CLI, the REST
API and the web page like a built-in tool. See examples/ and docs/custom-tools.md.
"""

from __future__ import annotations

from .bpf.features import Features
from .bpf.maps import Map, possible_cpus, sum_percpu
from .bpf.object import BpfObject, Link, Program
from .bpf.perf import online_cpus, perf_event_open
from .bpf.ringbuf import RingBuffer
from .compile import CompileError, compile_bpf
from .errors import BpfscopeError, ToolUnavailable, UsageError
from .histograms import interval_loop, read_histograms
from .options import CGROUP, DURATION, INTERVAL, PID, PIDS, TIMESTAMP, Option, Options
from .registry import Hook, HookPlan, RunContext, Tool, register
from .results import (
    Column,
    Event,
    Frame,
    Histogram,
    HistogramSet,
    Notice,
    RateTable,
    StackCounts,
    Summary,
)
from .toolkit import cstr, monotonic_to_wall, open_object, stream_events

__all__ = [
    "BpfObject", "BpfscopeError", "CGROUP", "Column", "CompileError", "DURATION", "Event", "Features", "Frame",
    "Histogram", "HistogramSet", "Hook", "HookPlan", "INTERVAL", "Link", "Map", "Notice", "Option", "Options",
    "PID", "PIDS", "Program", "RateTable", "RingBuffer", "RunContext", "StackCounts", "Summary", "TIMESTAMP",
    "Tool", "ToolUnavailable", "UsageError", "compile_bpf", "cstr", "interval_loop", "monotonic_to_wall",
    "online_cpus", "open_object", "perf_event_open", "possible_cpus", "read_histograms", "register",
    "stream_events", "sum_percpu",
]
