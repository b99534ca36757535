"""The agent's web application: /metrics, /healthz, /readyz (room for /api/v1 and a web page).

create_app(config) builds a FastAPI app around an Agent (collectors, metrics registry). The app
starts the agent in its lifespan unless it was given one already started (`bpfscope serve`
starts it first, so a kernel that refuses a program is a one-line error before any socket is
bound). uvicorn runs it.

Authentication: with a token (config.token, from --token-file), every route but the probes
needs `Authorization: Bearer <token>`. Later routes (REST API, SSE, web page) go on `api`
(prefix /api/v1), which carries the same dependency.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from .config import AgentConfig
from .metrics import CONTENT_TYPE, Agent
from .security import bearer_ok

API_PREFIX = "/api/v1"


def create_app(config: AgentConfig, agent: Agent | None = None, api_config: Any = None) -> FastAPI:
    agent = agent if agent is not None else Agent(config)
    owns_start = not agent.started

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if owns_start:
            await run_in_threadpool(agent.start)
        try:
            yield
        finally:
            if owns_start:
                await run_in_threadpool(agent.close)

    app = FastAPI(title="bpfscope agent", version=_version(), lifespan=lifespan,
                  docs_url=None, openapi_url=f"{API_PREFIX}/openapi.json", redoc_url=None)
    app.state.agent = agent
    app.state.config = config

    async def require_token(request: Request) -> None:  # async: no worker thread per request
        if not bearer_ok(request.headers.get("authorization", ""), config.token):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz(response: Response) -> dict[str, Any]:
        ready = agent.ready
        if not ready:
            response.status_code = 503
        return {
            "ready": ready,
            "collectors": {name: col.mode for name, col in agent.collectors.items()},
            "failed": dict(agent.failed),
        }

    @app.get("/metrics", dependencies=[Depends(require_token)], include_in_schema=False)
    def metrics() -> Response:
        # sync route: FastAPI runs it in a worker thread, reading maps does not block the loop
        if not agent.started:
            raise HTTPException(status_code=503, detail="collectors not started")
        return Response(content=agent.metrics(), media_type=CONTENT_TYPE)

    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_token)])

    @api.get("/collectors")
    def collectors() -> dict[str, Any]:
        """Running collectors and their hook modes; ones that could not start, and why."""
        return {"running": {n: {"mode": c.mode, "help": c.help} for n, c in agent.collectors.items()},
                "failed": dict(agent.failed)}

    from .api import install  # /api/v1 runs + event streams, the web page at /, Host/CORS rules

    install(app, api, config.host, config.token, api_config)
    app.include_router(api)  # add REST routes to `api` before this line
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bpfscope")
    except PackageNotFoundError:
        return "dev"
