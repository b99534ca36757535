"""One agent's REST API, and the fan-out of one run over many agents.

Everything here speaks the agent's /api/v1 contract (bpfscope/agent/api.py):
    POST /api/v1/runs {tool, options, duration}     -> run status (202)
    GET  /api/v1/runs/{id}                          -> state, mode, lost events, error
    DELETE /api/v1/runs/{id}                        -> cancel (answers once BPF is released)
    GET  /api/v1/runs/{id}/result?format=json       -> the run's results

Only the standard library (urllib), so `bpfscope cluster --agents ...` needs no extra package.
A node that fails (unreachable, wrong token, tool unavailable there, run failed) is recorded
with its reason; the others go on.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .discovery import Endpoint

ACTIVE = ("pending", "running", "cancelling")
ATTACH_POLL = 0.02  # seconds between status polls until a node's probes are attached
USER_AGENT = "bpfscope-cluster"


class AgentError(Exception):
    """A request to one agent failed; the message says why, in one line."""


class AgentClient:
    def __init__(self, endpoint: Endpoint, timeout: float = 15.0, ssl_context: ssl.SSLContext | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.ssl_context = ssl_context

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                timeout: float | None = None) -> tuple[int, bytes]:
        url = self.endpoint.url + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout, context=self.ssl_context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except urllib.error.URLError as e:
            reason = e.reason
            text = getattr(reason, "strerror", None) or str(reason)
            raise AgentError(f"cannot reach agent at {self.endpoint.url}: {text}") from None
        except (TimeoutError, OSError) as e:
            raise AgentError(f"agent at {self.endpoint.url}: {getattr(e, 'strerror', None) or e or 'timed out'}") \
                from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200,),
             timeout: float | None = None) -> dict[str, Any]:
        status, raw = self.request(method, path, body, timeout)
        if status not in ok:
            raise AgentError(_http_error(status, raw))
        try:
            data = json.loads(raw)
        except ValueError:
            raise AgentError(f"agent answered HTTP {status} with something that is not JSON") from None
        if not isinstance(data, dict):
            raise AgentError("agent answered with unexpected JSON")
        return data

    # the run API
    def start(self, tool: str, options: dict[str, Any], duration: float | None) -> dict[str, Any]:
        body: dict[str, Any] = {"tool": tool, "options": options}
        if duration is not None:
            body["duration"] = duration
        return self.call("POST", "/api/v1/runs", body, ok=(200, 202))

    def status(self, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v1/runs/{run_id}")

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self.call("DELETE", f"/api/v1/runs/{run_id}", timeout=max(self.timeout, 20.0))

    def result(self, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v1/runs/{run_id}/result?format=json", timeout=max(self.timeout, 60.0))


def _http_error(status: int, raw: bytes) -> str:
    detail: Any = None
    try:
        detail = json.loads(raw).get("detail")
    except (ValueError, AttributeError):
        pass
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    text = str(detail) if detail else raw[:200].decode("utf-8", "replace").strip()
    if status == 401:
        return "agent refused the bearer token (HTTP 401): give the right --token-file"
    if status == 404 and not detail:
        return "HTTP 404: not a bpfscope agent (or an older one without the run API)"
    if status == 429:
        return f"agent is busy (HTTP 429): {text}"
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


@dataclass
class NodeRun:
    endpoint: Endpoint
    run_id: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    poll_failures: int = 0
    # wall-clock time (this client's clock) the run's probes were attached: between the last poll
    # that said "not attached" and the first that said "attached". Event times relative to the
    # attach (elapsed) become comparable across nodes through it, whatever each node's clock says.
    attached_at: float | None = None
    _unattached_since: float = 0.0

    @property
    def node(self) -> str:
        return self.endpoint.node

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None

    @property
    def active(self) -> bool:
        return self.error is None and self.run_id is not None and self.status.get("state") in ACTIVE


class ClusterRun:
    """One tool run on every agent at once: start, wait (or cancel on stop), fetch the results."""

    def __init__(self, endpoints: list[Endpoint], tool: str, options: dict[str, Any], duration: float | None, *,
                 timeout: float = 15.0, grace: float = 30.0, poll: float = 0.25,
                 ssl_context: ssl.SSLContext | None = None, max_workers: int = 32):
        self.tool, self.options, self.duration = tool, options, duration
        self.grace, self.poll = grace, poll
        self.nodes = [NodeRun(e) for e in endpoints]
        self._clients = {id(n): AgentClient(n.endpoint, timeout, ssl_context) for n in self.nodes}
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(self.nodes))),
                                        thread_name_prefix="bpfscope-cluster")
        self.started_at: float | None = None

    def client(self, n: NodeRun) -> AgentClient:
        return self._clients[id(n)]

    def _each(self, fn: Any, nodes: list[NodeRun]) -> None:
        """fn(node) for every node at the same time; an AgentError becomes that node's error."""
        def one(n: NodeRun) -> None:
            try:
                fn(n)
            except AgentError as e:
                n.error = str(e)
        list(self._pool.map(one, nodes))

    # -- phases
    def start(self) -> None:
        usable = len([n for n in self.nodes if not n.endpoint.problem])
        # every POST leaves together (when each has its own thread)
        barrier = threading.Barrier(usable) if 1 < usable <= self._pool._max_workers else None

        def go(n: NodeRun) -> None:
            if n.endpoint.problem:
                n.error = n.endpoint.problem
                return
            if barrier is not None:
                try:
                    barrier.wait(5.0)
                except threading.BrokenBarrierError:
                    pass
            n._unattached_since = time.time()
            st = self.client(n).start(self.tool, self.options, self.duration)
            n.run_id, n.status = st.get("id"), st
            if not n.run_id:
                n.error = "agent answered without a run id"

        self.started_at = time.monotonic()
        self._each(go, self.nodes)

    def wait(self, stop: threading.Event | None = None) -> None:
        """Until every run has ended; on `stop` (Ctrl-C) or past the deadline, cancel what still runs."""
        stop = stop or threading.Event()
        deadline = None if self.duration is None else time.monotonic() + self.duration + self.grace
        cancelled = False
        while any(n.active for n in self.nodes):
            if not cancelled and (stop.is_set() or (deadline is not None and time.monotonic() > deadline)):
                self.cancel()
                cancelled = True
                continue
            attaching = any(n.active and n.attached_at is None for n in self.nodes)
            stop.wait(ATTACH_POLL if attaching else self.poll)  # fast while probes are being attached
            self._each(self._poll, [n for n in self.nodes if n.active])

    def _poll(self, n: NodeRun) -> None:
        try:
            sent = time.time()
            n.status = self.client(n).status(n.run_id or "")
            n.poll_failures = 0
            if n.attached_at is None:
                if n.status.get("attached"):
                    n.attached_at = (n._unattached_since + time.time()) / 2
                else:
                    n._unattached_since = sent
        except AgentError as e:
            n.poll_failures += 1
            if n.poll_failures >= 3:
                raise AgentError(f"lost the agent during the run: {e}") from None

    def cancel(self) -> None:
        def stop_one(n: NodeRun) -> None:
            n.status = self.client(n).cancel(n.run_id or "")

        self._each(stop_one, [n for n in self.nodes if n.active])
        for n in self.nodes:
            if n.active:  # the agent could not stop it within its own timeout
                n.error = f"run {n.run_id} did not stop when cancelled (state {n.status.get('state')})"

    def collect(self) -> None:
        def fetch(n: NodeRun) -> None:
            state = n.status.get("state")
            if state == "failed":
                n.error = f"run failed: {n.status.get('error') or 'no reason given'}"
                return
            n.result = self.client(n).result(n.run_id or "")
            if isinstance(n.result.get("run"), dict):
                n.status = n.result["run"]

        self._each(fetch, [n for n in self.nodes if n.error is None and n.run_id])

    def run(self, stop: threading.Event | None = None) -> list[NodeRun]:
        try:
            self.start()
            self.wait(stop)
            self.collect()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
        return self.nodes

    def close(self) -> None:
        """Cancel whatever is still running (an interrupted client must not leave runs behind)."""
        active = [n for n in self.nodes if n.active]
        if active:
            with ThreadPoolExecutor(max_workers=len(active)) as pool:
                list(pool.map(lambda n: _quiet_cancel(self.client(n), n.run_id or ""), active))


def _quiet_cancel(client: AgentClient, run_id: str) -> None:
    try:
        client.cancel(run_id)
    except AgentError:
        pass
