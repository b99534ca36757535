"""On-demand runs of registered tools inside the agent: start, watch, cancel, fetch results.

Each run executes the tool's run() in its own thread with its own BPF objects, so two
concurrent runs never share results. Limits (duration, concurrency overall and per tool,
result count and age, event buffer size) are enforced here, not in the HTTP layer, so every
frontend gets the same behaviour. Events go to a bounded buffer: a slow reader loses
events (and is told how many), tracing never waits for it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import registry
from ..errors import BpfscopeError, ToolUnavailable, UsageError
from ..results import Event, HistogramSet, Notice, RateTable, StackCounts, Summary


def trim_heap() -> None:
    """Hand freed heap back to the kernel. libbpf parses the kernel's BTF (megabytes) for every
    object it loads and frees it after the load; glibc would keep those pages resident."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


def limit_malloc_arenas(n: int = 2, mmap_threshold: int = 128 * 1024) -> None:
    """Keep the agent's heap small: few glibc malloc arenas (each run thread would otherwise grow
    one of its own), and large blocks (libbpf's copy of the kernel BTF, megabytes per object
    load or kernel probe) always mmap'ed, so freeing them unmaps them at once; glibc's dynamic
    threshold would otherwise move them into a thread's heap, which it never shrinks."""
    try:
        libc = _libc()
        libc.mallopt(-8, n)  # M_ARENA_MAX
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD (fixed: no dynamic adjustment)
    except (OSError, AttributeError):
        pass


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return _LIBC


class LimitError(BpfscopeError):
    """Too many runs: the HTTP layer answers 429 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(BpfscopeError):
    pass


class NotReady(UsageError):
    """The run's result is not there yet (it is still running): HTTP 409."""


@dataclass
class Limits:
    max_duration: float = 300.0
    max_concurrent: int = 8
    max_per_tool: int = 4
    keep_results: int = 100
    result_ttl: float = 3600.0
    max_events: int = 10000
    max_result_bytes: int = 64 * 1024 * 1024
    max_stored_events: int = 100000  # over all kept runs: oldest finished runs go first


class EventBuffer:
    """Bounded, sequence-numbered event log that many readers follow at their own pace.

    Records are serialized to JSON once, on append: every reader (SSE subscribers, result
    downloads) shares that text. The newest events stay as text; older ones are kept in
    zlib-compressed blocks (JSON compresses ~8x), so a deep resume buffer costs little memory.
    It always holds exactly the last `capacity` events; a reader resuming at any id reads only
    what it has not seen, and is told how many left the buffer before it got to them.
    """

    def __init__(self, capacity: int, block: int = 256):
        self.capacity = max(1, int(capacity))
        self.block = max(1, min(block, self.capacity // 8))
        self._blocks: deque[tuple[int, int, bytes]] = deque()  # (first id, count, zlib("\n".join(json)))
        self._tail: list[str] = []  # the newest events, ids _tail_first...
        self._tail_first = 1
        self._next = 1
        self._cache: dict[int, list[str]] = {}  # a few decompressed blocks, by first id
        self._cond = threading.Condition()
        self._sse: tuple[int, int, bytes] | None = None  # the last SSE chunk made: (after, last id, bytes)
        self.closed = False

    def append(self, record: dict[str, Any]) -> None:
        data = json.dumps(record, ensure_ascii=False, default=str)  # never holds a raw newline
        if not data.isascii():
            try:
                data.encode()
            except UnicodeEncodeError:  # lone surrogates (surrogateescape'd names): escape them
                data = json.dumps(record, default=str)
        with self._cond:
            self._tail.append(data)
            self._next += 1
            full = len(self._tail) >= self.block
            if not full:
                self._drop_old()
                self._cond.notify_all()
                return
            tail, tail_first = self._tail, self._tail_first
        # Compress without the lock: readers (the web server's event loop among them) never wait
        # for zlib. One writer (the run's thread) appends, so the tail is still this one after.
        packed = zlib.compress("\n".join(tail).encode(), 1)
        with self._cond:
            self._blocks.append((tail_first, len(tail), packed))
            self._tail, self._tail_first = self._tail[len(tail):], tail_first + len(tail)
            self._drop_old()
            self._cond.notify_all()

    def _drop_old(self) -> None:
        first = self.first_id
        while self._blocks and self._blocks[0][0] + self._blocks[0][1] <= first:
            self._cache.pop(self._blocks.popleft()[0], None)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def last_id(self) -> int:
        return self._next - 1

    @property
    def first_id(self) -> int:
        """The oldest id still held (last_id + 1 when empty)."""
        return max(1, self._next - self.capacity)

    def __len__(self) -> int:
        return self._next - self.first_id

    def __bool__(self) -> bool:  # an empty buffer is still a buffer (`if run.events:`)
        return True

    def _block_events(self, first: int, packed: bytes) -> list[str]:
        events = self._cache.get(first)
        if events is None:
            events = zlib.decompress(packed).decode().split("\n")
            if len(self._cache) >= 4:  # readers a little apart share them
                self._cache.pop(next(iter(self._cache)))
            self._cache[first] = events
        return events

    def read_raw(self, after: int, limit: int = 1000) -> tuple[list[tuple[int, str]], int]:
        """Without waiting: up to `limit` (id, JSON text) with id > after, and how many events
        left the buffer before this reader got to them."""
        with self._cond:
            first = self.first_id
            lost = first - after - 1 if after < first - 1 else 0
            i = max(after + 1, first)
            end = min(self._next, i + limit)
            out: list[tuple[int, str]] = []
            if i < self._tail_first:
                for bfirst, count, packed in self._blocks:
                    if i >= end or i < bfirst:
                        break
                    if i >= bfirst + count:
                        continue
                    events = self._block_events(bfirst, packed)
                    stop = min(end, bfirst + count)
                    out.extend((j, events[j - bfirst]) for j in range(i, stop))
                    i = stop
            if i < end:
                t0 = self._tail_first
                out.extend((j, self._tail[j - t0]) for j in range(i, end))
            return out, lost

    def read_after(self, after: int, timeout: float) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """Events with id > after (waiting up to timeout for one), and how many were lost
        because they left the buffer before this reader got to them."""
        with self._cond:
            if self._next - 1 <= after and not self.closed:
                self._cond.wait(timeout)
            items, lost = self.read_raw(after, self.capacity)
        return [(i, json.loads(d)) for i, d in items], lost

    def sse_chunk(self, after: int, limit: int = 1000) -> tuple[bytes, int, int]:
        """read_raw() as one Server-Sent Events chunk, UTF-8: (chunk, id of its last event, lost).
        Subscribers that follow a run together read the same ranges: the last chunk made is
        kept, so it is formatted and encoded once for all of them."""
        with self._cond:
            end = min(self._next - 1, max(after, self.first_id - 1) + limit)
            cached = self._sse
            if cached is not None and cached[0] == after and cached[1] == end and after >= self.first_id - 1:
                return cached[2], end, 0
        items, lost = self.read_raw(after, limit)
        if not items:
            return b"", after + lost, lost
        chunk = "".join([f"id: {j}\nevent: event\ndata: {d}\n\n" for j, d in items]).encode()
        last = items[-1][0]
        if not lost:
            self._sse = (after, last, chunk)
        return chunk, last, lost

    def raw_all(self) -> list[str]:
        items, _ = self.read_raw(0, self.capacity)
        return [d for _, d in items]

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(d) for d in self.raw_all()]


class PacedRunContext(registry.RunContext):
    """The RunContext of a run inside the agent. Event tools poll their ring buffer once per
    running() check; here those checks come at most every `pace` seconds, so the run's thread
    wakes a few dozen times a second and takes the events in batches (the ring buffer holds
    them meanwhile), instead of waking, and taking the GIL from the web server, for nearly
    every event. A stop still ends the wait at once."""

    pace = 0.025

    def __init__(self, duration: float | None = None, features: Any = None):
        super().__init__(duration, features)
        self._next_check = 0.0

    def running(self) -> bool:
        wait = self._next_check - time.monotonic()
        if wait > 0:
            rem = self.remaining()
            self.stop.wait(wait if rem is None else min(wait, rem))
        self._next_check = time.monotonic() + self.pace
        return super().running()


@dataclass
class Run:
    id: str
    tool: str
    options: dict[str, Any]
    duration: float
    state: str = "pending"  # pending | running | cancelling | done | failed | cancelled
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
    trimmed: bool = False

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id, "tool": self.tool, "options": self.options, "duration": self.duration,
            "state": self.state, "created": self.created, "started": self.started, "finished": self.finished,
            "error": self.error, "mode": self.mode or (self.ctx.mode if self.ctx else None), "lost_events": self.lost_events, "output": self.output,
            "events": self.events.last_id if self.events else 0, "notices": self.notices[-20:],
            "summary": self.summary,
            "attached": self.ctx is not None and self.ctx.attached_at is not None,
        }

    @property
    def active(self) -> bool:
        return self.state in ("pending", "running", "cancelling")


class RunManager:
    def __init__(self, limits: Limits | None = None, features: Any = None):
        self.limits = limits or Limits()
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._features = features
        self._features_lock = threading.Lock()
        self._last_expire = 0.0

    @property
    def features(self) -> Any:
        """One kernel probe for the manager's life (probing loads BPF programs: do it once)."""
        with self._features_lock:
            if self._features is None:
                from ..bpf.features import Features

                self._features = Features()
            return self._features

    def check_mode(self, cls: type[registry.Tool], opts: Any) -> None:
        """Refuse up front (ToolUnavailable) a run whose tool has no hook on this kernel."""
        try:
            cls().mode(opts, self.features)
        except (ToolUnavailable, UsageError):
            raise
        except Exception:  # noqa: BLE001 - the run itself will report what is wrong
            pass
        finally:
            self.after_probe()

    def after_probe(self) -> None:
        """Kernel probes load BPF programs (libbpf parses the kernel BTF): give that memory back."""
        probed = len(getattr(self._features, "_cache", {}) or {})
        if probed != getattr(self, "_probed", 0):
            self._probed = probed
            trim_heap()

    # ---- lifecycle ---------------------------------------------------------
    def start(self, tool: str, options: dict[str, Any] | None, duration: float | None) -> Run:
        """Validate strictly (REST input), check limits, start the run's thread."""
        cls = registry.get(tool)
        opts_raw = dict(options or {})
        in_opts = opts_raw.pop("duration", None)
        if duration is not None and in_opts is not None and in_opts != duration:
            raise UsageError("duration: given twice with different values (give it once)")
        if duration is None:
            duration = in_opts
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
        self.check_mode(cls, opts)
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
            run.ctx = PacedRunContext(duration=float(duration))
            self._runs[run.id] = run
        threading.Thread(target=self._execute, args=(run, cls, opts), name=f"run-{run.id}", daemon=True).start()
        return run

    def _execute(self, run: Run, cls: type[registry.Tool], opts: Any) -> None:
        assert run.ctx is not None
        with self._lock:
            if run.state == "pending":
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
            if run.events is not None:
                run.events.close()
            run.done.set()
            trim_heap()
            with self._lock:  # the count limit holds as soon as a run ends
                self._expire()

    def _collect(self, run: Run, item: Any) -> None:
        if not run.trimmed and run.ctx is not None and run.ctx.attached_at is not None:
            run.trimmed = True  # loaded and attached: libbpf's copy of the kernel BTF is freed now
            trim_heap()
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

    def cancel(self, run_id: str, timeout: float = 10.0) -> Run:
        """Stop a run and wait (up to timeout) until its BPF objects are released."""
        run = self.get(run_id)
        with self._lock:
            if run.state in ("pending", "running"):
                run.state = "cancelling"
        if run.active:
            assert run.ctx is not None
            run.ctx.stop.set()
            run.done.wait(timeout)
        return run

    def wait(self, run_id: str, timeout: float) -> Run:
        run = self.get(run_id)
        run.done.wait(timeout)
        return run

    def get(self, run_id: str) -> Run:
        with self._lock:
            if time.monotonic() - self._last_expire > 1.0:
                self._expire()
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
        self._last_expire = time.monotonic()
        now = time.time()
        finished = [r for r in self._runs.values() if not r.active]
        for r in finished:
            if r.finished and now - r.finished > self.limits.result_ttl:
                del self._runs[r.id]
        finished = sorted((r for r in self._runs.values() if not r.active), key=lambda r: r.finished or 0)
        while len(finished) > self.limits.keep_results:
            del self._runs[finished.pop(0).id]
        stored = sum(len(r.events) for r in self._runs.values() if r.events)
        while finished and stored > self.limits.max_stored_events:
            old = finished.pop(0)
            stored -= len(old.events) if old.events else 0
            del self._runs[old.id]

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
        return list(FORMATS[run.output])

    def result(self, run_id: str, fmt: str, **svg_opts: Any) -> tuple[str, bytes]:
        """(content type, body) of a run's result in `fmt`."""
        run = self.get(run_id)
        if fmt not in self.formats(run):
            raise UsageError(f"format {fmt!r} not available for {run.tool}; use one of {', '.join(self.formats(run))}")
        if run.active and run.output != "events":
            raise NotReady(f"run {run.id} is still {run.state}; its result is ready when it ends")
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

    async def astream(self, run_id: str, last_id: int = 0, heartbeat: float = 15.0, poll: float = 0.05,
                      batch: int = 500, sse: bool = False) -> AsyncIterator[tuple[str, Any, int]]:
        """stream() for an asyncio server, without blocking the event loop: (kind, data, id) with
        kind "events" (data: a batch of (id, JSON text), or with sse=True the batch as one
        ready-to-send SSE chunk, bytes), "lost", "heartbeat" or "end" (JSON text).

        Readers poll the buffer (never the other way round), so a slow reader only falls behind
        and is told how many events it lost; the run thread never waits for anyone. Readers
        wake on a common clock tick, so subscribers of one run read (and share) the same batches.
        """
        run = self.get(run_id)
        if run.events is None:
            raise UsageError(f"{run.tool} is not an event tool; fetch its result instead")
        buf = run.events
        after = max(0, min(last_id, buf.last_id))
        quiet_since = time.monotonic()
        while True:
            closed = buf.closed  # read before the buffer: events appended before close are sent
            if sse:
                chunk, last, lost = buf.sse_chunk(after, batch)
                items = chunk or None
            else:
                items, lost = buf.read_raw(after, batch)
                last = items[-1][0] if items else after + lost
            if lost:
                after += lost
                yield "lost", json.dumps({"lost": lost, "resumed_at": after + 1}), after
            if items:
                after = last
                yield "events", items, after
            if items or lost:
                quiet_since = time.monotonic()
                await asyncio.sleep(0)  # let other clients and requests in between batches
                continue
            if closed:
                yield "end", json.dumps(run.status(), default=str), after
                return
            if time.monotonic() - quiet_since >= heartbeat:
                quiet_since = time.monotonic()
                yield "heartbeat", "{}", after
            await asyncio.sleep(poll - time.monotonic() % poll)  # the common tick


FORMATS: dict[str, tuple[str, ...]] = {  # result formats per output kind (registry.OUTPUT_KINDS)
    "events": ("json", "text"),
    "histogram": ("json", "text"),
    "rates": ("json", "text"),
    "table": ("json", "text"),
    "stacks": ("json", "text", "folded", "svg", "pprof", "speedscope"),
}

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

    from ..render.jsonl import to_json

    if fmt == "json":
        if run.output == "events":  # the buffer already holds each event as JSON text
            head = json.dumps({"run": run.status()}, default=str)[:-1]
            events = ",".join(run.events.raw_all() if run.events else [])
            return f'{head}, "events": [{events}]}}'.encode()
        payload = {"run": run.status(), "results": [to_json(r) for r in run.results]}
        return json.dumps(payload, default=str).encode()
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
        return out.getvalue().encode("utf-8", "backslashreplace")
    stacks = next((r for r in run.results if isinstance(r, StackCounts)), None)
    if stacks is None:
        raise UsageError("this run produced no stacks")
    if fmt == "folded":
        from ..render.folded import format_folded

        return format_folded(stacks).encode("utf-8", "backslashreplace")
    if fmt == "svg":
        from ..render.flamegraph import render_stackcounts

        kw = {k: v for k, v in svg_opts.items() if v is not None and v != ""}
        try:
            return render_stackcounts(stacks, **kw).encode("utf-8", "backslashreplace")
        except ValueError as e:  # width/minwidth out of the renderer's range
            raise UsageError(str(e)) from None
    if fmt == "pprof":
        from ..render.pprof import to_pprof

        return to_pprof(stacks)
    if fmt == "speedscope":
        from ..render.speedscope import to_speedscope

        return to_speedscope(stacks).encode("utf-8", "backslashreplace")
    raise UsageError(f"unknown format {fmt}")


class _Namespace:
    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        return None


__all__ = ["EventBuffer", "Limits", "LimitError", "NotFound", "NotReady", "Run", "RunManager", "ToolUnavailable"]
