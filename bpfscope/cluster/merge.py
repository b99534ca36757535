"""Merge the JSON results of one run on many nodes into the typed results the renderers take.

    stacks      one StackCounts: counts of equal stacks added; optionally a frame naming the node
                at the root of every stack (kind "node"), so a flame graph splits by node first
    histograms  one HistogramSet: equal keys summed over the nodes (every interval of a run
                summed too); per_node keeps one histogram per node (key "node")
    events      one list, every record with a "node" field, in wall-clock order
    rates       the i-th table of every node in one, rows labelled with the node

Input per node: the agent's GET /api/v1/runs/{id}/result?format=json document.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..results import Frame, Histogram, HistogramSet, RateTable, StackCounts

NodeResult = tuple[str, dict[str, Any]]  # (node name, result document)


def _results(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in doc.get("results") or [] if isinstance(r, dict) and r.get("type") == kind]


# -------------------------------------------------------------------------------------- stacks
def merge_stacks(nodes: Iterable[NodeResult], node_frame: bool = False) -> StackCounts:
    counts: dict[tuple[Frame, ...], int] = {}
    countname = ""
    stats: dict[str, Any] = {}
    per_node: dict[str, Any] = {}
    for node, doc in nodes:
        for r in _results(doc, "stacks"):
            countname = countname or r.get("countname") or "samples"
            per_node[node] = r.get("stats") or {}
            root = (Frame(node, "node"),) if node_frame else ()
            for s in r.get("stacks") or []:
                names = s.get("frames") or []
                kinds = s.get("kinds") or ["unknown"] * len(names)
                stack = root + tuple(Frame(str(n), str(k)) for n, k in zip(names, kinds, strict=False))
                counts[stack] = counts.get(stack, 0) + int(s.get("count") or 0)
    for node_stats in per_node.values():
        for k, v in node_stats.items():
            if isinstance(v, int) and not isinstance(v, bool):
                stats[k] = stats.get(k, 0) + v
    if per_node:
        stats["nodes"] = per_node
    countname = countname or "samples"
    return StackCounts(counts=counts, countname=countname, palette="cold" if countname == "us" else "hot",
                       stats=stats)


# ---------------------------------------------------------------------------------- histograms
def _is_log2_bucket(low: int, high: int) -> bool:
    if low == 0:
        return high == 1
    return low & (low - 1) == 0 and high == 2 * low - 1


def _slots(buckets: list[tuple[int, int, int]]) -> tuple[list[int], int]:
    """(low, high, count) buckets -> (slots, linear_step); log2 when every bucket is a log2 slot."""
    if all(_is_log2_bucket(lo, hi) for lo, hi, _ in buckets):
        idx = [(0 if lo == 0 else lo.bit_length() - 1, c) for lo, hi, c in buckets]
        step = 0
    else:
        step = max(1, buckets[0][1] - buckets[0][0] + 1)
        idx = [(lo // step, c) for lo, hi, c in buckets]
    slots = [0] * (max((i for i, _ in idx), default=-1) + 1)
    for i, c in idx:
        slots[i] += c
    return slots, step


def merge_histograms(nodes: Iterable[NodeResult], per_node: bool = False) -> HistogramSet:
    """Sum equal histograms (same key and unit) over nodes and intervals."""
    acc: dict[tuple[str | None, str], dict[str, Any]] = {}
    last_ts = 0.0
    for node, doc in nodes:
        for hs in _results(doc, "histograms"):
            last_ts = max(last_ts, float(hs.get("timestamp") or 0))
            for h in hs.get("histograms") or []:
                key, label = h.get("key"), h.get("key_label") or ""
                if per_node:
                    key, label = (node, "node") if key is None else (f"{node} {key}", f"node {label}".strip())
                unit = h.get("unit") or "usecs"
                slot = acc.setdefault((None if key is None else str(key), unit),
                                      {"label": label, "buckets": {}, "total": 0})
                slot["total"] += int(h.get("sum") or 0)
                for b in h.get("buckets") or []:
                    lo, hi = int(b["low"]), int(b["high"])
                    slot["buckets"][(lo, hi)] = slot["buckets"].get((lo, hi), 0) + int(b.get("count") or 0)
    out = []
    for (key, unit), slot in acc.items():
        buckets = sorted((lo, hi, c) for (lo, hi), c in slot["buckets"].items())
        slots, step = _slots(buckets) if buckets else ([], 0)
        out.append(Histogram(slots=slots, unit=unit, key=key, key_label=slot["label"], total=slot["total"],
                             linear_step=step))
    if per_node:
        out.sort(key=lambda h: str(h.key))
    return HistogramSet(histograms=out, timestamp=last_ts or time.time())


# -------------------------------------------------------------------------------------- events
def event_time(rec: dict[str, Any], run: dict[str, Any], first_ns: int | None, index: int,
               attached_at: float | None = None) -> float:
    """Wall-clock seconds of one event: its own wall time if it has one; else its offset from the
    attach of the node's probes (elapsed), placed at the time the client saw the attach (or, without
    that, at the run's start on the node); else kernel timestamps relative to the run's first event."""
    for k in ("timestamp", "time", "wall_time"):
        v = rec.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1e9:
            return float(v)
    start = attached_at if attached_at is not None else float(run.get("started") or run.get("created") or 0.0)
    v = rec.get("elapsed")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return start + float(v)
    ns = rec.get("timestamp_ns")
    if isinstance(ns, int) and first_ns is not None:
        return start + (ns - first_ns) / 1e9
    return start + index * 1e-9


def merge_events(nodes: Iterable[NodeResult], attached_at: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Every node's events with a "node" field, interleaved by wall-clock time (stable per node).
    attached_at: node -> wall time its probes were attached, as the client saw it (ClusterRun)."""
    attached_at = attached_at or {}
    keyed = []
    for order, (node, doc) in enumerate(nodes):
        run = doc.get("run") or {}
        events = [e for e in doc.get("events") or [] if isinstance(e, dict)]
        ns = [e["timestamp_ns"] for e in events if isinstance(e.get("timestamp_ns"), int)]
        first_ns = min(ns) if ns else None
        for i, rec in enumerate(events):
            t = event_time(rec, run, first_ns, i, attached_at.get(node))
            keyed.append((t, order, i, {"node": node, **rec}))
    keyed.sort(key=lambda t: t[:3])
    return [t[3] for t in keyed]


# --------------------------------------------------------------------------------------- rates
def rate_columns(rows: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if not isinstance(v, (dict, list)):
                keys.setdefault(k, None)
    upper = [k for k in keys if k != "node" and k.upper() == k and any(c.isalpha() for c in k)]
    return upper or [k for k in keys if k != "node"]


def merge_rates(nodes: Iterable[NodeResult]) -> list[RateTable]:
    """The i-th table of every node merged into one (rows labelled with their node, column NODE),
    in interval order; the columns are the same for every table of the run."""
    per_node = []
    for node, doc in nodes:
        tables = [*_results(doc, "rates"), *_results(doc, "table")]
        per_node.append((node, tables))
    rows_all = [{"NODE": node, **r} for node, tables in per_node for t in tables for r in t.get("rows") or []
                if isinstance(r, dict)]
    cols = ["NODE", *(c for c in rate_columns(rows_all) if c != "NODE")]
    out = []
    for i in range(max((len(t) for _, t in per_node), default=0)):
        rows: list[dict[str, Any]] = []
        stamp, interval = 0.0, 0.0
        for node, tables in per_node:
            if i < len(tables):
                t = tables[i]
                stamp = max(stamp, float(t.get("timestamp") or 0))
                interval = max(interval, float(t.get("interval") or 0))
                rows += [{"NODE": node, "node": node, **r} for r in t.get("rows") or [] if isinstance(r, dict)]
        out.append(RateTable(columns=cols, rows=rows, interval=interval, timestamp=stamp or time.time()))
    return out
