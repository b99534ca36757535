"""Pick the renderer for a tool's result kind and the user's output flags."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from .results import Notice, StackCounts


class StackOutput:
    """Stacks go to files (SVG, pprof, speedscope) and/or stdout (text, folded, JSON)."""

    def __init__(self, ns: argparse.Namespace, out: TextIO, err: TextIO, inner: Any):
        self.ns, self.out, self.err, self.inner = ns, out, err, inner

    def render(self, item: Any) -> None:
        if not isinstance(item, StackCounts):
            self.inner.render(item)
            return
        ns = self.ns
        wrote_file = False
        if ns.svg:
            from .render.flamegraph import render_svg

            svg = render_svg(
                item.counts, title=ns.title or _default_title(item), width=ns.width, minwidth=ns.minwidth,
                inverted=ns.inverted, countname=ns.countname or item.countname, palette=item.palette,
            )
            _write(ns.svg, svg.encode())
            wrote_file = True
        if ns.pprof:
            from .render.pprof import to_pprof

            _write(ns.pprof, to_pprof(item))
            wrote_file = True
        if ns.speedscope:
            from .render.speedscope import to_speedscope

            _write(ns.speedscope, to_speedscope(item).encode())
            wrote_file = True
        if wrote_file:
            targets = ", ".join(p for p in (ns.svg, ns.pprof, ns.speedscope) if p)
            self.err.write(f"Wrote {targets} ({len(item.counts)} stacks, {item.total()} {item.countname}).\n")
        if ns.folded:
            from .render.folded import format_folded

            self.out.write(format_folded(item, annotate=ns.annotations))
            self.out.flush()
        elif ns.json or not wrote_file:
            self.inner.render(item)

    def close(self) -> None:
        pass


def _default_title(sc: StackCounts) -> str:
    return "Off-CPU Time Flame Graph" if sc.countname == "us" else "Flame Graph"


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class _Closing:
    def __init__(self, inner: Any):
        self.inner = inner

    def render(self, item: Any) -> None:
        self.inner.render(item)

    def close(self) -> None:
        pass


def make_renderer(cls: Any, ns: argparse.Namespace, out: TextIO, err: TextIO) -> Any:
    timestamp = bool(getattr(ns, "timestamp", False))
    if getattr(ns, "json", False):
        from .render.jsonl import JsonRenderer  # json is imported only when asked for

        inner: Any = JsonRenderer(out, err)
    else:
        from .render.text import TextRenderer

        inner = TextRenderer(out, err, columns=_columns(cls, ns), timestamp=timestamp)
    if cls.output == "stacks":
        return StackOutput(ns, out, err, inner)
    return _Closing(inner)


def _columns(cls: Any, ns: argparse.Namespace) -> list:
    cols = getattr(cls, "text_columns", None)
    if callable(cols):
        return cols(ns)
    return list(cls.columns)


__all__ = ["make_renderer", "Notice"]
