"""JSON lines: one object per event / interval / result, for jq and log shippers."""

from __future__ import annotations

import json
from typing import Any, TextIO

from ..results import Event, HistogramSet, Notice, RateTable, StackCounts, Summary
from .histogram import histogram_json


def to_json(item: Any) -> dict[str, Any] | None:
    if isinstance(item, Event):
        return item.record
    if isinstance(item, Summary):
        return {"type": "summary", "lost_events": item.lost_events, **item.extra}
    if isinstance(item, HistogramSet):
        return {
            "type": "histograms",
            "timestamp": item.timestamp,
            "interval": item.interval,
            "histograms": [histogram_json(h) for h in item.histograms],
        }
    if isinstance(item, RateTable):
        return {"type": "rates", "timestamp": item.timestamp, "interval": item.interval, "rows": item.rows}
    if isinstance(item, StackCounts):
        return {
            "type": "stacks",
            "countname": item.countname,
            "stats": item.stats,
            "stacks": [
                {"frames": [f.name for f in stack], "kinds": [f.kind for f in stack], "count": n}
                for stack, n in sorted(item.counts.items(), key=lambda kv: -kv[1])
            ],
        }
    if isinstance(item, Notice):
        return None
    return None


class JsonRenderer:
    def __init__(self, out: TextIO, err: TextIO):
        self.out, self.err = out, err

    def render(self, item: Any) -> None:
        if isinstance(item, Notice):
            self.err.write(item.message + "\n")
            self.err.flush()
            return
        obj = to_json(item)
        if obj is not None:
            self.out.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
            self.out.flush()
