"""Text output in BCC's look: event tables, rate tables, histograms, stack listings."""

from __future__ import annotations

import time
from typing import Any, TextIO

from ..results import Column, Event, HistogramSet, Notice, RateTable, StackCounts, Summary
from .histogram import format_histogram


class TextRenderer:
    """Streams results to `out` (stdout) and notices to `err` (stderr)."""

    def __init__(self, out: TextIO, err: TextIO, columns: list[Column] | None = None,
                 timestamp: bool = False):
        self.out, self.err = out, err
        self.columns = columns or []
        self.timestamp = timestamp
        self._header_done = False

    def header(self) -> None:
        if self._header_done or not self.columns:
            return
        self._header_done = True
        self.out.write(" ".join(_cell(c, c.title) for c in self.columns).rstrip() + "\n")

    def render(self, item: Any) -> None:
        if isinstance(item, Event) and item.text is not None:
            self.out.write(item.text)  # raw output (a terminal's bytes), no columns
        elif isinstance(item, Event):
            self.header()
            rec = item.record
            cells = []
            for c in self.columns:
                v = rec.get(c.key, "")
                cells.append(_cell(c, c.fmt(v, rec) if c.fmt else v))
            self.out.write(" ".join(cells).rstrip() + "\n")
        elif isinstance(item, Notice):
            self.err.write(item.message + "\n")
            self.err.flush()
        elif isinstance(item, Summary):
            if item.lost_events:
                self.err.write(f"Lost {item.lost_events} events (ring buffer full).\n")
            for k, v in item.extra.items():
                if v:
                    self.err.write(f"{k}: {v}\n")
        elif isinstance(item, HistogramSet):
            if self.timestamp:
                self.out.write(time.strftime("%H:%M:%S", time.localtime(item.timestamp)) + "\n")
            for h in item.histograms:
                self.out.write(format_histogram(h) + "\n")
            self.out.write("\n")
        elif isinstance(item, RateTable):
            self.out.write(format_rates(item, self.timestamp))
        elif isinstance(item, StackCounts):
            self.out.write(format_stacks(item))
        self.out.flush()


def _cell(c: Column, v: Any) -> str:
    s = str(v)
    if not c.width:
        return s
    return f"{s:{c.align}{c.width}}"


def format_rates(t: RateTable, timestamp: bool) -> str:
    lines = []
    if t.title:
        lines.append(t.title)
    cols = t.columns
    widths = {c: max(t.width, len(c), *(len(_fmt_rate(r.get(c, ""))) for r in t.rows)) if t.rows
              else max(t.width, len(c)) for c in cols}
    stamp = time.strftime("%H:%M:%S", time.localtime(t.timestamp)) if timestamp else None
    head = " ".join(f"{c:>{widths[c]}}" for c in cols)
    if t.header:
        lines.append((f"{'TIME':<8} " if stamp else "") + head)
    for r in t.rows:
        row = " ".join(f"{_fmt_rate(r.get(c, '')):>{widths[c]}}" for c in cols)
        lines.append((f"{stamp:<8} " if stamp else "") + row)
    return "\n".join(lines) + "\n"


def _fmt_rate(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"
    return str(v)


def format_stacks(sc: StackCounts) -> str:
    """BCC style: leaf first, one frame per line, `-` between kernel and user parts, then count."""
    out: list[str] = []
    for stack, count in sorted(sc.counts.items(), key=lambda kv: kv[1]):
        frames = list(reversed(stack))
        comm = [f for f in frames if f.kind == "comm"]
        body = [f for f in frames if f.kind != "comm"]
        prev_kind = None
        for f in body:
            if f.kind == "delim":
                out.append("    --")
                continue
            if prev_kind == "kernel" and f.kind != "kernel":
                out.append("    --")
            out.append(f"    {f.name}")
            prev_kind = f.kind
        if comm:  # BCC: "    -                comm (pid)"; a comm frame's address is its pid, if any
            c = comm[0]
            out.append(f"    -                {c.name}" + (f" ({c.address})" if c.address else ""))
        out.append(f"        {count}\n")
    return "\n".join(out) + ("\n" if out else "")
