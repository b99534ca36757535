"""REST API (/api/v1) for on-demand runs, live event streams (SSE), and the web page (/).

    GET    /api/v1/tools                       every registered tool: options schema, hook mode here
    GET    /api/v1/doctor                      kernel features and tool modes (bpfscope doctor)
    POST   /api/v1/runs[?wait=true]            {tool, options, duration} -> 202 + run (200 if waited)
    GET    /api/v1/runs                        runs kept (bounded in number and age)
    GET    /api/v1/runs/{id}                   state, times, mode, lost events, error
    DELETE /api/v1/runs/{id}                   cancel: BPF objects released before it answers
    GET    /api/v1/runs/{id}/result?format=    json | text | folded | svg | pprof | speedscope
    GET    /api/v1/runs/{id}/events            Server-Sent Events (event tools), Last-Event-ID resume

Everything a client sends is data: options are validated by the tool's own Option model
(strict JSON types: "false" is not a boolean, 1.5 is not an integer, unknown keys are refused,
strings match a safe grammar), reach BPF only as typed globals, and never touch a shell, a file
path or BPF source. Limits (duration, concurrency, result size) live in runs.RunManager.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from .. import registry
from ..errors import BpfscopeError, ToolUnavailable, UsageError
from ..options import json_schema
from .runs import (
    FORMATS,
    LimitError,
    Limits,
    NotFound,
    NotReady,
    Run,
    RunManager,
    limit_malloc_arenas,
    trim_heap,
)
from .security import PAGE_HEADERS, SecurityOptions, bearer_ok

STATIC_DIR = Path(__file__).with_name("static")
RUN_ID_PATTERN = r"^[0-9]{1,12}-[0-9a-f]{8}$"
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
MAX_BODY = 64 * 1024


@dataclass
class ApiConfig:
    limits: Limits = field(default_factory=Limits)
    security: SecurityOptions = field(default_factory=SecurityOptions)
    heartbeat: float = 15.0  # SSE heartbeat interval, seconds
    max_wait: float = 60.0  # ?wait=true blocks at most this long
    web: bool = True  # serve the web page at /


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Limits()
    g = p.add_argument_group("on-demand runs (REST API)")
    g.add_argument("--max-duration", type=float, default=d.max_duration, metavar="SECONDS",
                   help=f"longest run a client may ask for (default: {d.max_duration:g})")
    g.add_argument("--max-runs", type=int, default=d.max_concurrent, metavar="N",
                   help=f"runs at the same time, all tools (default: {d.max_concurrent}); more get 429")
    g.add_argument("--max-runs-per-tool", type=int, default=d.max_per_tool, metavar="N",
                   help=f"runs at the same time of one tool (default: {d.max_per_tool})")
    g.add_argument("--max-result-mb", type=float, default=d.max_result_bytes / 2**20, metavar="MB",
                   help=f"largest result served (default: {d.max_result_bytes // 2**20})")
    g.add_argument("--keep-results", type=int, default=d.keep_results, metavar="N",
                   help=f"finished runs kept (default: {d.keep_results})")
    g.add_argument("--result-ttl", type=float, default=d.result_ttl, metavar="SECONDS",
                   help=f"how long finished runs are kept (default: {d.result_ttl:g})")
    g.add_argument("--max-events", type=int, default=d.max_events, metavar="N",
                   help=f"events buffered per run for streams and resume (default: {d.max_events})")
    g.add_argument("--sse-heartbeat", type=float, default=15.0, metavar="SECONDS",
                   help="heartbeat interval of event streams (default: 15)")
    g.add_argument("--no-web", dest="web", action="store_false", help="do not serve the web page at /")


def from_args(ns: argparse.Namespace) -> ApiConfig:
    from . import security

    checks = [("--max-duration", ns.max_duration, 0.01, 86400), ("--max-runs", ns.max_runs, 1, 1000),
              ("--max-runs-per-tool", ns.max_runs_per_tool, 1, 1000), ("--max-result-mb", ns.max_result_mb, 0.001, 4096),
              ("--keep-results", ns.keep_results, 1, 100000), ("--result-ttl", ns.result_ttl, 1, 30 * 86400),
              ("--max-events", ns.max_events, 1, 10_000_000), ("--sse-heartbeat", ns.sse_heartbeat, 0.05, 3600)]
    for flag, v, lo, hi in checks:
        if not (lo <= v <= hi):
            raise UsageError(f"{flag} must be between {lo:g} and {hi:g}, got {v:g}")
    limits = Limits(max_duration=ns.max_duration, max_concurrent=ns.max_runs, max_per_tool=ns.max_runs_per_tool,
                    keep_results=ns.keep_results, result_ttl=ns.result_ttl, max_events=ns.max_events,
                    max_result_bytes=int(ns.max_result_mb * 2**20))
    return ApiConfig(limits=limits, security=security.from_args(ns), heartbeat=ns.sse_heartbeat, web=ns.web)


# ------------------------------------------------------------------------------------ models
class Error(BaseModel):
    detail: str | list[Any]


class ModeRow(BaseModel):
    target: str
    usable: bool
    mode: str | None
    reason: str | None


class ToolInfo(BaseModel):
    name: str
    help: str
    description: str
    output: Literal["events", "histogram", "stacks", "rates", "table"]
    streaming: bool
    formats: list[str]
    options: dict[str, Any]
    modes: list[ModeRow]
    examples: list[str]


class ToolList(BaseModel):
    tools: list[ToolInfo]
    broken: dict[str, str]


class RunStatus(BaseModel):
    id: str
    tool: str
    options: dict[str, Any]
    duration: float
    state: Literal["pending", "running", "cancelling", "done", "failed", "cancelled"]
    created: float
    started: float | None
    finished: float | None
    error: str | None
    mode: str | None
    lost_events: int
    output: str
    events: int
    notices: list[str]
    summary: dict[str, Any]
    attached: bool
    formats: list[str]
    elapsed: float


class RunList(BaseModel):
    runs: list[RunStatus]


def _err(*codes: int) -> dict[int | str, dict[str, Any]]:
    desc = {401: "missing or wrong bearer token", 404: "no such run", 409: "not possible in the run's state",
            413: "request too large", 415: "body must be application/json", 422: "invalid input",
            429: "too many runs in progress (see Retry-After)"}
    out: dict[int | str, dict[str, Any]] = {c: {"model": Error, "description": desc[c]} for c in codes}
    if 429 in out:
        out[429]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return out


# ------------------------------------------------------------------------------------- tools
def load_tools() -> tuple[dict[str, type[registry.Tool]], dict[str, str]]:
    """Every tool the registry can load, and the ones that failed to import (name -> why):
    one broken tool module must not take the API down."""
    try:
        return registry.all_tools(), {}
    except Exception:  # noqa: BLE001 - fall back to one module at a time
        pass
    tools: dict[str, type[registry.Tool]] = {}
    broken: dict[str, str] = {}
    for name in registry.builtin_names():
        try:
            tools[name] = registry.get(name)
        except Exception as e:  # noqa: BLE001
            broken[name] = f"{type(e).__name__}: {e}"
    return dict(sorted(tools.items())), broken


def tool_options_schema(cls: type[registry.Tool], max_duration: float) -> dict[str, Any]:
    schema = json_schema(cls.options)
    dur = schema["properties"].get("duration")
    if dur is not None:  # the agent's own limit is the one that applies
        dur["maximum"] = min(dur.get("maximum", max_duration), max_duration)
        dur.pop("default", None)
    return schema


def _modes(cls: type[registry.Tool], features: Any) -> list[dict[str, Any]]:
    try:
        rows = cls.mode_report(features)
    except Exception as e:  # noqa: BLE001
        rows = [("", False, f"cannot tell: {type(e).__name__}: {e}")]
    return [{"target": t, "usable": ok, "mode": d if ok else None, "reason": None if ok else d} for t, ok, d in rows]


def run_body_schema(tools: dict[str, type[registry.Tool]], max_duration: float) -> dict[str, Any]:
    """The POST /runs body: one alternative per tool, its options from the tool's Option list."""
    duration = {"type": "number", "exclusiveMinimum": 0, "maximum": max_duration,
                "description": f"seconds (default and at most {max_duration:g})"}
    alts = []
    for name, cls in tools.items():
        alts.append({
            "type": "object", "title": name, "required": ["tool"], "additionalProperties": False,
            "properties": {"tool": {"type": "string", "const": name, "description": cls.help},
                           "options": tool_options_schema(cls, max_duration), "duration": duration},
        })
    if not alts:
        alts.append({"type": "object", "required": ["tool"], "additionalProperties": False,
                     "properties": {"tool": {"type": "string", "pattern": TOOL_NAME_PATTERN},
                                    "options": {"type": "object"}, "duration": duration}})
    return {"required": True,
            "content": {"application/json": {"schema": {"oneOf": alts} if len(alts) > 1 else alts[0]}}}


# ------------------------------------------------------------------------------------ helpers
def _http(e: Exception) -> HTTPException:
    if isinstance(e, LimitError):
        return HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)})
    if isinstance(e, NotFound):
        return HTTPException(404, str(e))
    if isinstance(e, (NotReady, ToolUnavailable)):
        return HTTPException(409, str(e))
    if isinstance(e, BpfscopeError):
        return HTTPException(422, str(e))
    return HTTPException(500, "internal error")


def _status(mgr: RunManager, run: Run) -> dict[str, Any]:
    st = run.status()
    st["formats"] = mgr.formats(run)
    end = run.finished or time.time()
    st["elapsed"] = max(0.0, end - run.started) if run.started else 0.0
    return st


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, default=str, allow_nan=False).encode()  # ASCII escapes: any text is safe
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_run_request(raw: bytes, max_duration: float) -> tuple[str, dict[str, Any], float | None]:
    """The POST /runs body, checked as strictly as its schema says (the manager checks options)."""
    if len(raw) > MAX_BODY:
        raise HTTPException(413, f"request body larger than {MAX_BODY} bytes")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise HTTPException(422, f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise HTTPException(422, "body must be a JSON object {tool, options, duration}")
    if _has_surrogates(data):
        raise HTTPException(422, "body holds text that is not valid Unicode (lone surrogate escapes)")
    extra = sorted(set(data) - {"tool", "options", "duration"})
    if extra:
        raise HTTPException(422, f"unknown field(s): {', '.join(extra)}")
    tool = data.get("tool")
    if not isinstance(tool, str) or not re.match(TOOL_NAME_PATTERN, tool):
        raise HTTPException(422, "tool: expected a tool name (GET /api/v1/tools lists them)")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise HTTPException(422, "options: expected an object of option values")
    for k, v in options.items():
        if v is None:
            raise HTTPException(422, f"{k}: null is not a value (leave the option out for its default)")
        if isinstance(v, list) and len(v) > 64:
            raise HTTPException(422, f"{k}: at most 64 values")
    duration = data.get("duration")
    if "duration" in data:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            raise HTTPException(422, "duration: expected a number of seconds")
        if not math.isfinite(duration) or duration <= 0:
            raise HTTPException(422, "duration: expected a positive number of seconds")
        if duration > max_duration:
            raise HTTPException(422, f"duration: at most {max_duration:g} s")
        duration = float(duration)
    return tool, options, duration


def _has_surrogates(v: Any) -> bool:
    if isinstance(v, str):
        return not v.isascii() and any("\ud800" <= c <= "\udfff" for c in v)
    if isinstance(v, dict):
        return any(_has_surrogates(k) or _has_surrogates(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_has_surrogates(x) for x in v)
    return False


def _parse_last_id(header: str | None, query: int | None) -> int:
    if query is not None:
        return query
    if header is None or header == "":
        return 0
    if not header.isdigit() or len(header) > 18:
        raise HTTPException(422, "Last-Event-ID: expected a non-negative integer")
    return int(header)


# One Server-Sent Event: data is JSON text (an event record, {"lost": N}, {} or the final run status).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["event", "lost", "heartbeat", "end"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer"},
    },
}

# ------------------------------------------------------------------------------------- routes
RunId = Annotated[str, PathParam(pattern=RUN_ID_PATTERN, max_length=32, description="run id")]


def add_routes(router: APIRouter, mgr: RunManager, cfg: ApiConfig) -> None:
    """The /api/v1 routes, added to `router` (which carries the token dependency)."""
    tools, broken = load_tools()
    body_schema = run_body_schema(tools, cfg.limits.max_duration)

    @router.get("/tools", response_model=ToolList, responses=_err(401), tags=["tools"])
    def list_tools() -> Response:
        """Every registered tool: options (JSON schema), result formats, and the hook mode it
        would use on this kernel (or why it cannot run here)."""
        current, now_broken = load_tools()
        feats = mgr.features
        out = []
        for name, cls in current.items():
            out.append({
                "name": name, "help": cls.help, "description": cls.description or "", "output": cls.output,
                "streaming": cls.output == "events", "formats": list(FORMATS[cls.output]),
                "options": tool_options_schema(cls, cfg.limits.max_duration), "modes": _modes(cls, feats),
                "examples": list(cls.examples),
            })
        mgr.after_probe()
        return _json({"tools": out, "broken": {**broken, **now_broken}})

    @router.get("/doctor", responses=_err(401), tags=["tools"])
    def doctor() -> Response:
        """Kernel features and how each tool would run (the `bpfscope doctor --json` report)."""
        from ..commands.doctor import report

        try:
            rep = report(mgr.features)
        except Exception:  # noqa: BLE001 - a broken tool module: report what can be reported
            feats = {n: {"available": ok, "detail": d} for n, (ok, d) in mgr.features.all().items()}
            cur, bad = load_tools()
            rep = {"features": feats, "tools": {n: _modes(c, mgr.features) for n, c in cur.items()},
                   "broken": bad}
        mgr.after_probe()
        return _json(rep)

    @router.post("/runs", status_code=202, response_model=RunStatus, tags=["runs"],
                 responses={200: {"model": RunStatus, "description": "the run finished (wait=true)"},
                            **_err(401, 409, 413, 415, 422, 429)},
                 openapi_extra={"requestBody": body_schema})
    async def start_run(request: Request,
                        wait: Annotated[bool, Query(description="block until the run ends (short runs)")] = False
                        ) -> Response:
        """Start a run of a tool: 202 with its id at once, or with wait=true the finished run
        (200) if it ends within the agent's wait limit (else 202 while it goes on)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPException(415, "send the run as application/json")
        tool, options, duration = parse_run_request(await request.body(), cfg.limits.max_duration)
        try:
            run = await run_in_threadpool(mgr.start, tool, options, duration)
        except BpfscopeError as e:
            raise _http(e) from None
        status = 202
        if wait:
            end = time.monotonic() + min(cfg.max_wait, run.duration + 15.0)
            while not run.done.is_set() and time.monotonic() < end:
                await asyncio.sleep(0.02)
            if run.done.is_set():
                status = 200
        return _json(_status(mgr, run), status, headers={"Location": f"{router.prefix}/runs/{run.id}"})

    @router.get("/runs", response_model=RunList, responses=_err(401), tags=["runs"])
    async def list_runs() -> Response:
        """Runs the agent keeps: active ones and finished ones within the result limits."""
        return _json({"runs": [_status(mgr, r) for r in mgr.list()]})

    @router.get("/runs/{run_id}", response_model=RunStatus, responses=_err(401, 404), tags=["runs"])
    async def get_run(run_id: RunId) -> Response:
        """A run's state, times, hook mode, lost events and error."""
        try:
            return _json(_status(mgr, mgr.get(run_id)))
        except BpfscopeError as e:
            raise _http(e) from None

    @router.delete("/runs/{run_id}", response_model=RunStatus, responses=_err(401, 404), tags=["runs"])
    def cancel_run(run_id: RunId) -> Response:
        """Cancel a run; answers once its BPF programs are detached and its objects closed.
        A finished run is left as it is."""
        try:
            return _json(_status(mgr, mgr.cancel(run_id)))
        except BpfscopeError as e:
            raise _http(e) from None

    @router.get("/runs/{run_id}/result", tags=["runs"],
                responses={200: {"description": "the result in the asked format", "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/plain": {"schema": {"type": "string"}},
                    "image/svg+xml": {"schema": {"type": "string"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                }}, **_err(401, 404, 409, 422)})
    def get_result(
        run_id: RunId,
        format: Annotated[Literal["json", "text", "folded", "svg", "pprof", "speedscope"],
                          Query(description="one of the run's formats (see its status)")] = "json",
        title: Annotated[str | None, Query(max_length=200, description="svg: title")] = None,
        width: Annotated[int | None, Query(ge=300, le=20000, description="svg: width in pixels")] = None,
        minwidth: Annotated[float | None, Query(ge=0, le=1000, description="svg: merge narrower frames")] = None,
        inverted: Annotated[bool, Query(description="svg: icicle graph")] = False,
    ) -> Response:
        """The run's result: events (json, text), histograms and rates (json, text), stacks
        (json, text, folded, svg flame graph, pprof, speedscope)."""
        svg = {"title": title, "width": width, "minwidth": minwidth, "inverted": inverted or None}
        try:
            ctype, body = mgr.result(run_id, format, **svg)
        except BpfscopeError as e:
            raise _http(e) from None
        headers = {}
        if format in ("pprof", "speedscope"):
            ext = {"pprof": "pb.gz", "speedscope": "speedscope.json"}[format]
            headers["Content-Disposition"] = f'attachment; filename="bpfscope-{run_id}.{ext}"'
        if format == "svg":  # its script may run only in its own document, never in the API's origin
            headers["Content-Security-Policy"] = "default-src 'none'; script-src 'unsafe-inline'; " \
                                                 "style-src 'unsafe-inline'; sandbox allow-scripts"
        return Response(body, media_type=ctype.split(";")[0], headers=headers)

    @router.get("/runs/{run_id}/events", tags=["runs"],
                responses={200: {"description": "Server-Sent Events: event, lost, heartbeat, end",
                                 "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                           **_err(401, 404, 422)})
    async def stream_events(
        run_id: RunId,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=r"^[0-9]{0,18}$",
                                                    description="resume after this event id")] = None,
        after: Annotated[int | None, Query(ge=0, le=10**18, description="resume after this event id")] = None,
    ) -> Response:
        """Live events of an event tool's run. Events carry their id: a reconnecting client
        resumes with Last-Event-ID while the events are still buffered; `lost` tells a client
        how many it missed because it fell behind (tracing never waits for clients); `end`
        carries the run's final status."""
        try:
            run = mgr.get(run_id)
            if run.events is None:
                raise UsageError(f"{run.tool} is not an event tool; fetch its result instead")
        except BpfscopeError as e:
            raise _http(e) from None
        start = _parse_last_id(last_event_id, after)

        async def sse() -> Any:
            yield "retry: 2000\n\n"
            try:
                async for kind, data, i in mgr.astream(run_id, start, cfg.heartbeat, sse=True):
                    if kind == "events":
                        yield data  # the batch as SSE, made once for every subscriber at this point
                    elif kind == "heartbeat":
                        yield "event: heartbeat\ndata: {}\n\n"
                    else:
                        yield f"id: {i}\nevent: {kind}\ndata: {data}\n\n"
            except BpfscopeError:  # the run expired meanwhile: the stream just ends
                return

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ------------------------------------------------------------------------ status fast path
class RunStatusFastPath:
    """Pure ASGI middleware answering GET /api/v1/runs/{id}, the request dashboards and
    clients poll, without FastAPI's routing, dependency solving and request objects (about a
    tenth of the CPU per request). It answers only what the route would answer 200 to (valid
    id of a kept run, token right if there is one) with the same body and headers; anything
    else (404, 401, 422...) goes on to the FastAPI route. It sits inside the Host check and
    CORS middleware, so those apply as before."""

    def __init__(self, app: Any, mgr: RunManager, token: str | None, prefix: str):
        self.app = app
        self.mgr = mgr
        self.token = token
        self.prefix = prefix + "/runs/"
        self.run_id = re.compile(RUN_ID_PATTERN[1:-1])

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(self.prefix) \
                and not scope.get("root_path"):
            body = self._answer(scope)
            if body is not None:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", str(len(body)).encode()),
                                        (b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: dict) -> bytes | None:
        run_id = scope["path"][len(self.prefix):]
        if len(run_id) > 32 or not self.run_id.fullmatch(run_id):
            return None
        if self.token:
            auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not bearer_ok(auth.decode("latin-1"), self.token):
                return None  # the route answers 401
        try:
            return json.dumps(_status(self.mgr, self.mgr.get(run_id)), default=str, allow_nan=False).encode()
        except Exception:  # noqa: BLE001 - not found or not serializable: the route says what
            return None


# --------------------------------------------------------------------------------- web page
def add_web(app: FastAPI) -> None:
    """The web page: static files read once from bpfscope/agent/static (an allowlist: no path
    from a request reaches the file system)."""
    files: dict[str, tuple[bytes, str]] = {}
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
             ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
    for p in sorted(STATIC_DIR.glob("*")) if STATIC_DIR.is_dir() else []:
        if p.is_file() and p.suffix in types:
            files[p.name] = (p.read_bytes(), types[p.suffix])
    index_path = STATIC_DIR / "index.html"
    index = index_path.read_text() if index_path.exists() else "<!doctype html><p>web page not installed</p>"

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        nonce = secrets.token_urlsafe(16)
        headers = {k: v.replace("{nonce}", nonce) for k, v in PAGE_HEADERS.items()}
        return Response(index.replace("{{nonce}}", nonce), media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, "not found")
        body, ctype = files[name]
        return Response(body, media_type=ctype, headers={"X-Content-Type-Options": "nosniff",
                                                         "Cache-Control": "no-cache"})


# ------------------------------------------------------------------------------------ install
def install(app: FastAPI, router: APIRouter, host: str = "127.0.0.1", token: str | None = None,
            cfg: ApiConfig | None = None, manager: RunManager | None = None) -> RunManager:
    """Add the REST API to `router` (mounted by the caller at /api/v1), the web page and the
    security middleware to `app`; stop every run (BPF objects closed) when the app shuts down."""
    from contextlib import asynccontextmanager

    from . import security

    cfg = cfg or ApiConfig()
    limit_malloc_arenas()
    mgr = manager or RunManager(cfg.limits)
    app.state.runs = mgr
    app.state.api_config = cfg
    add_routes(router, mgr, cfg)
    if cfg.web:
        add_web(app)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus the bearer scheme (required when the agent has a token)."""
        if app.openapi_schema:
            return app.openapi_schema
        doc = generate()
        doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer",
            "description": "required when the agent has a token (--token-file; always when not on loopback)",
        }
        for path, ops in doc.get("paths", {}).items():
            if path.startswith(router.prefix + "/"):
                for op in ops.values():
                    op.setdefault("security", [{"bearer": []}, {}])
        return doc

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_alias() -> Response:
        return _json(app.openapi())

    app.add_middleware(RunStatusFastPath, mgr=mgr, token=token, prefix=router.prefix)  # inside the next ones
    security.install(app, host, token, cfg.security)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> Any:
        async with inner(a) as state:
            trim_heap()  # after the collectors' loads
            # Everything loaded so far (modules, routes, schemas: most of the agent's objects) lives
            # as long as the agent: keep it out of the cyclic GC, whose full passes over it would
            # otherwise stall every request now and then while runs allocate event records.
            gc.collect()
            gc.freeze()
            try:
                yield state
            finally:
                await run_in_threadpool(mgr.shutdown)

    app.router.lifespan_context = lifespan
    return mgr
