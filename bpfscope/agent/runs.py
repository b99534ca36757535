"""On-demand runs of registered tools inside the agent: start, watch, cancel, fetch results.

Each run executes the tool's run() in its own thread with its own BPF objects, so two
concurrent runs never share results. Limits (duration, concurrency overall and per tool,
result count and age, event buffer size) are enforced here, not in the HTTP layer, so every
frontend gets the same behaviour. Events go to a bounded buffer: a slow reader loses
events (and is told how many), tracing never waits for it.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import registry
from ..errors import BpfscopeError, ToolUnavailable, UsageError
from ..results import Event, HistogramSet, Notice, RateTable, StackCounts, Summary


class LimitError(BpfscopeError):
    """Too many runs: the HTTP layer answers 429 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(BpfscopeError):
    pass


@dataclass
class Limits:
    max_duration: float = 300.0
    max_concurrent: int = 8
    max_per_tool: int = 4
    keep_results: int = 100
    result_ttl: float = 3600.0
    max_events: int = 10000
    max_result_bytes: int = 64 * 1024 * 1024


class EventBuffer:
    """Bounded, sequence-numbered event log that many readers follow at their own pace."""

    def __init__(self, capacity: int):
        self._items: deque[tuple[int, dict[str, Any]]] = deque(maxlen=capacity)
        self._next = 1
        self._cond = threading.Condition()
        self.closed = False

    def append(self, record: dict[str, Any]) -> None:
        with self._cond:
            self._items.append((self._next, record))
            self._next += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def last_id(self) -> int:
        return self._next - 1

    def read_after(self, after: int, timeout: float) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """Events with id > after (waiting up to timeout for one), and how many were lost
        because they left the buffer before this reader got to them."""
        with self._cond:
            if self._next - 1 <= after and not self.closed:
                self._cond.wait(timeout)
            items = [(i, r) for i, r in self._items if i > after]
            first_kept = self._items[0][0] if self._items else self._next
            lost = max(0, first_kept - after - 1) if after < first_kept - 1 else 0
            return items, lost

    def all(self) -> list[dict[str, Any]]:
        with self._cond:
            return [r for _, r in self._items]


@dataclass
class Run:
    id: str
    tool: str
    options: dict[str, Any]
    duration: float
    state: str = "pending"  # pending | running | done | failed | cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    mode: str | None = None
    lost_events: int = 0
    notices: list[str] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)  # HistogramSet / RateTable / StackCounts
    summary: dict[str, Any] = field(default_factory=dict)
    output: str = "events"
    events: EventBuffer | None = None
    ctx: registry.RunContext | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id, "tool": self.tool, "options": self.options, "duration": self.duration,
            "state": self.state, "created": self.created, "started": self.started, "finished": self.finished,
            "error": self.error, "mode": self.mode, "lost_events": self.lost_events, "output": self.output,
            "events": self.events.last_id if self.events else 0, "notices": self.notices[-20:],
            "summary": self.summary,
        }

    @property
    def active(self) -> bool:
        return self.state in ("pending", "running")


class RunManager:
    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    # ---- lifecycle ---------------------------------------------------------
    def start(self, tool: str, options: dict[str, Any] | None, duration: float | None) -> Run:
        """Validate strictly (REST input), check limits, start the run's thread."""
        cls = registry.get(tool)
        opts_raw = dict(options or {})
        if duration is None:
            duration = opts_raw.pop("duration", None)
        else:
            opts_raw.pop("duration", None)
        if duration is None:
            duration = self.limits.max_duration
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration <= 0:
            raise UsageError("duration: expected a positive number of seconds")
        if duration > self.limits.max_duration:
            raise UsageError(f"duration: at most {self.limits.max_duration:g} s")
        if any(o.name == "duration" for o in cls.options):
            opts_raw["duration"] = float(duration)
        cli_only = {o.name for o in cls.options if o.cli_only}
        bad = sorted(set(opts_raw) & cli_only)
        if bad:
            raise UsageError(f"option(s) not available over the API: {', '.join(bad)}")
        opts = cls.validate(opts_raw, strict=True)
        with self._lock:
            self._expire()
            active = [r for r in self._runs.values() if r.active]
            if len(active) >= self.limits.max_concurrent:
                raise LimitError(f"{len(active)} runs in progress (limit {self.limits.max_concurrent})")
            if sum(r.tool == tool for r in active) >= self.limits.max_per_tool:
                raise LimitError(f"{tool}: {self.limits.max_per_tool} runs in progress (limit per tool)")
            run = Run(
                id=f"{next(self._counter)}-{uuid.uuid4().hex[:8]}", tool=tool, options=opts.as_dict(),
                duration=float(duration), output=cls.output,
                events=EventBuffer(self.limits.max_events) if cls.output == "events" else None,
            )
            run.ctx = registry.RunContext(duration=float(duration))
            self._runs[run.id] = run
        threading.Thread(target=self._execute, args=(run, cls, opts), name=f"run-{run.id}", daemon=True).start()
        return run

    def _execute(self, run: Run, cls: type[registry.Tool], opts: Any) -> None:
        assert run.ctx is not None
        run.state = "running"
        run.started = time.time()
        try:
            for item in cls().run(opts, run.ctx):
                self._collect(run, item)
            run.state = "cancelled" if run.state == "cancelling" else "done"
        except BpfscopeError as e:
            run.state, run.error = "failed", str(e)
        except Exception as e:  # noqa: BLE001 - a broken tool must not take the agent down
            run.state, run.error = "failed", f"internal error: {type(e).__name__}: {e}"
        finally:
            if run.state == "cancelling":
                run.state = "cancelled"
            run.mode = run.ctx.mode
            run.lost_events = max(run.lost_events, run.ctx.lost_events)
            run.finished = time.time()
            if run.events:
                run.events.close()
            run.done.set()

    def _collect(self, run: Run, item: Any) -> None:
        if isinstance(item, Event):
            assert run.events is not None
            run.events.append(item.record)
        elif isinstance(item, Notice):
            run.notices.append(item.message)
        elif isinstance(item, Summary):
            run.lost_events += item.lost_events
            run.summary.update(item.extra)
        elif isinstance(item, (HistogramSet, RateTable)):
            run.results.append(item)
            if len(run.results) > 1000:
                del run.results[0]
        elif isinstance(item, StackCounts):
            run.results = [item]

    def cancel(self, run_id: str) -> Run:
        run = self.get(run_id)
        if run.active:
            run.state = "cancelling"
            assert run.ctx is not None
            run.ctx.stop.set()
            run.done.wait(10)
        return run

    def wait(self, run_id: str, timeout: float) -> Run:
        run = self.get(run_id)
        run.done.wait(timeout)
        return run

    def get(self, run_id: str) -> Run:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run

    def list(self) -> list[Run]:
        with self._lock:
            self._expire()
            return sorted(self._runs.values(), key=lambda r: r.created)

    def _expire(self) -> None:
        """Drop finished runs past their age, then the oldest beyond the count limit."""
        now = time.time()
        finished = [r for r in self._runs.values() if not r.active]
        for r in finished:
            if r.finished and now - r.finished > self.limits.result_ttl:
                del self._runs[r.id]
        finished = sorted((r for r in self._runs.values() if not r.active), key=lambda r: r.finished or 0)
        while len(finished) > self.limits.keep_results:
            del self._runs[finished.pop(0).id]

    def shutdown(self) -> None:
        """Stop every run and wait for its BPF objects to be released."""
        runs = [r for r in self.list() if r.active]
        for r in runs:
            assert r.ctx is not None
            r.ctx.stop.set()
        for r in runs:
            r.done.wait(10)

    # ---- results -------------------------------------------------------------
    def formats(self, run: Run) -> list[str]:
        return {
            "events": ["json", "text"],
            "histogram": ["json", "text"],
            "rates": ["json", "text"],
            "table": ["json", "text"],
            "stacks": ["json", "text", "folded", "svg", "pprof", "speedscope"],
        }[run.output]

    def result(self, run_id: str, fmt: str, **svg_opts: Any) -> tuple[str, bytes]:
        """(content type, body) of a run's result in `fmt`."""
        run = self.get(run_id)
        if fmt not in self.formats(run):
            raise UsageError(f"format {fmt!r} not available for {run.tool}; use one of {', '.join(self.formats(run))}")
        if run.active and run.output != "events":
            raise UsageError(f"run {run.id} is still {run.state}; its result is ready when it ends")
        body = _render(run, fmt, svg_opts)
        if len(body) > self.limits.max_result_bytes:
            raise UsageError(f"result larger than {self.limits.max_result_bytes} bytes")
        return _CONTENT_TYPES[fmt], body

    def stream(self, run_id: str, last_id: int = 0, heartbeat: float = 15.0) -> Iterator[tuple[str, Any, int]]:
        """(kind, data, id) for SSE: kind is event | lost | heartbeat | end."""
        run = self.get(run_id)
        if run.events is None:
            raise UsageError(f"{run.tool} is not an event tool; fetch its result instead")
        after = last_id
        while True:
            items, lost = run.events.read_after(after, heartbeat)
            if lost:
                yield "lost", {"lost": lost}, after
            for i, rec in items:
                yield "event", rec, i
                after = i
            if not items and not lost:
                if run.events.closed:
                    yield "end", run.status(), after
                    return
                yield "heartbeat", None, after


_CONTENT_TYPES = {
    "json": "application/json",
    "text": "text/plain; charset=utf-8",
    "folded": "text/plain; charset=utf-8",
    "svg": "image/svg+xml",
    "pprof": "application/octet-stream",
    "speedscope": "application/json",
}


def _render(run: Run, fmt: str, svg_opts: dict[str, Any]) -> bytes:
    import io
    import json

    from ..render.jsonl import to_json

    if fmt == "json":
        if run.output == "events":
            payload: Any = {"run": run.status(), "events": run.events.all() if run.events else []}
        else:
            payload = {"run": run.status(), "results": [to_json(r) for r in run.results]}
        return json.dumps(payload, ensure_ascii=False, default=str).encode()
    if fmt == "text":
        from ..render.text import TextRenderer

        out, err = io.StringIO(), io.StringIO()
        cls = registry.get(run.tool)
        cols = getattr(cls, "text_columns", None)
        ns = _Namespace(run.options)
        r = TextRenderer(out, err, columns=cols(ns) if callable(cols) else list(cls.columns),
                         timestamp=bool(run.options.get("timestamp")))
        if run.events:
            for rec in run.events.all():
                r.render(Event(rec))
        for item in run.results:
            r.render(item)
        return out.getvalue().encode()
    stacks = next((r for r in run.results if isinstance(r, StackCounts)), None)
    if stacks is None:
        raise UsageError("this run produced no stacks")
    if fmt == "folded":
        from ..render.folded import format_folded

        return format_folded(stacks).encode()
    if fmt == "svg":
        from ..render.flamegraph import render_svg

        title = svg_opts.get("title") or ("Off-CPU Time Flame Graph" if stacks.countname == "us" else "Flame Graph")
        return render_svg(stacks.counts, title=title, countname=stacks.countname, palette=stacks.palette,
                          **{k: v for k, v in svg_opts.items() if k != "title" and v is not None}).encode()
    if fmt == "pprof":
        from ..render.pprof import to_pprof

        return to_pprof(stacks)
    if fmt == "speedscope":
        from ..render.speedscope import to_speedscope

        return to_speedscope(stacks).encode()
    raise UsageError(f"unknown format {fmt}")


class _Namespace:
    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        return None


__all__ = ["Limits", "LimitError", "NotFound", "Run", "RunManager", "ToolUnavailable"]
