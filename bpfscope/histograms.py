"""Reading in-kernel log2 histograms (`struct hist` maps) into HistogramSet results,
and the interval loop every latency tool shares (-i INTERVAL, -d DURATION, Ctrl-C)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from .bpf.maps import Map, sum_percpu
from .registry import RunContext
from .results import Histogram, HistogramSet

UNIT_DIVISORS = {"nsecs": 1, "usecs": 1000, "msecs": 1_000_000}


def read_histograms(
    hmap: Map,
    hist_type: Any,
    unit: str,
    key_label: str = "",
    key_format: Callable[[Any], str | None] | None = None,
    clear: bool = True,
) -> list[Histogram]:
    """One Histogram per key of a map whose values are `struct hist` (per-CPU values summed).

    key_format turns a decoded key into its label (None for an unkeyed histogram).
    """
    hmap.value_type = hist_type
    items = hmap.pop_all() if clear else hmap.items()
    out = []
    for key, value in items:
        if isinstance(value, list):
            value = sum_percpu(value)
        slots = list(value.slots)
        while slots and not slots[-1]:
            slots.pop()
        label = key_format(key) if key_format else None
        out.append(Histogram(slots=slots, unit=unit, key=label, key_label=key_label, total=int(value.sum)))
    out.sort(key=lambda h: (h.key is not None, str(h.key)))
    return out


def interval_loop(
    ctx: RunContext, interval: float | None, read: Callable[[], list[Histogram]]
) -> Iterator[HistogramSet]:
    """Yield a HistogramSet each interval (read clears), and a last one when the run ends."""
    last = time.monotonic()
    while True:
        running = ctx.wait(interval if interval else 3600.0)
        if interval or not running:
            now = time.monotonic()
            yield HistogramSet(read(), interval=now - last)
            last = now
        if not running:
            return
