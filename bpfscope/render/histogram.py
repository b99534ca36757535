"""log2 histograms as BCC prints them, and as JSON / Prometheus buckets."""

from __future__ import annotations

from typing import Any

from ..results import Histogram

_BAR_WIDTH = 40


def _trimmed(h: Histogram) -> range:
    used = [i for i, c in enumerate(h.slots) if c]
    if not used:
        return range(0)
    return range(0 if h.linear_step else used[0], used[-1] + 1)


def format_histogram(h: Histogram) -> str:
    """`usecs : count distribution` with `*` bars; leading and trailing empty slots trimmed."""
    lines: list[str] = []
    if h.key is not None:
        lines.append(f"\n{h.key_label or 'key'} = {h.key}")
    idx = _trimmed(h)
    if not idx:
        lines.append(f"     {h.unit:<19} : count     distribution\n     (no events)")
        return "\n".join(lines)
    peak = max(h.slots[i] for i in idx) or 1
    wide = h.bounds(idx[-1])[1] >= 1 << 32
    if wide:
        lines.append(f"               {h.unit:<29} : count     distribution")
    else:
        lines.append(f"     {h.unit:<19} : count     distribution")
    for i in idx:
        lo, hi = h.bounds(i)
        c = h.slots[i]
        stars = "*" * int(c * _BAR_WIDTH / peak)
        bar = f"|{stars:<{_BAR_WIDTH}}|"
        if wide:
            lines.append(f"{lo:>20} -> {hi:<20} : {c:<8} {bar}")
        else:
            lines.append(f"{lo:>10} -> {hi:<10} : {c:<8} {bar}")
    return "\n".join(lines)


def histogram_json(h: Histogram) -> dict[str, Any]:
    """Each non-empty-range bucket's bounds and count, plus totals."""
    buckets = []
    for i in _trimmed(h):
        lo, hi = h.bounds(i)
        buckets.append({"low": lo, "high": hi, "count": h.slots[i]})
    out: dict[str, Any] = {"unit": h.unit, "buckets": buckets, "count": h.count, "sum": h.total}
    if h.key is not None:
        out["key"] = h.key
        out["key_label"] = h.key_label
    return out


def cumulative_buckets(h: Histogram) -> list[tuple[float, int]]:
    """Prometheus-style (le, cumulative count) pairs ending with +Inf."""
    out, acc = [], 0
    for i, c in enumerate(h.slots):
        acc += c
        out.append((float(h.bounds(i)[1]), acc))
    out.append((float("inf"), acc))
    return out
