"""A Kubernetes API server double for pod list + watch, good enough for the official Python client.

A real HTTP/1.1 server on 127.0.0.1 (random port) in a thread. It serves

    GET /api/v1/pods?fieldSelector=spec.nodeName=N              -> PodList with metadata.resourceVersion
    GET /api/v1/pods?fieldSelector=...&watch=true[&resourceVersion=R][&timeoutSeconds=T]
                                                                -> chunked stream of watch events

    GET /api/v1/namespaces/NS/pods[?labelSelector=...]           -> the same, one namespace (list + watch)

Both take labelSelector (equality, set-based and existence terms, as the API server) besides
fieldSelector. make_pod(pod_ip=, ports=, ready=) gives pods an IP, named container ports and a
Ready condition (agent discovery).

Tests change pods with add_pod / modify_pod / delete_pod; every change gets the next resourceVersion
and is streamed to open watches (with the API server's field selector semantics: a pod that starts
matching arrives as ADDED, one that stops matching as DELETED). A watch from a resourceVersion gets
the events after it; compact() forgets history, so such a watch then gets an ERROR 410 "Expired"
event, as from a real API server. drop_watches() ends the open watch streams (client must resume).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid as uuidlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Pod = dict[str, Any]


def make_pod(
    name: str,
    namespace: str = "default",
    *,
    node: str | None = "node-a",
    uid: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: dict[str, str | None] | None = None,
    init_containers: dict[str, str | None] | None = None,
    runtime: str = "containerd",
    qos: str = "Burstable",
    pod_ip: str | None = None,
    ports: dict[str, int] | None = None,
    ready: bool | None = None,
) -> Pod:
    """A Pod as the API server returns it. containers: name -> container id (None: not started yet).
    pod_ip: status.podIP; ports: port name -> containerPort of the first container; ready: the
    Ready condition (None: no conditions, as before)."""
    containers = {"main": None} if containers is None else containers
    init_containers = init_containers or {}

    def statuses(cs: dict[str, str | None]) -> list[dict]:
        out = []
        for cname, cid in cs.items():
            st: dict[str, Any] = {
                "name": cname, "image": "docker.io/library/busybox:1.36", "imageID": "", "ready": cid is not None,
                "restartCount": 0, "started": cid is not None,
                "state": {"running": {"startedAt": "2024-05-01T10:00:00Z"}} if cid else
                         {"waiting": {"reason": "ContainerCreating"}},
            }
            if cid:
                st["containerID"] = f"{runtime}://{cid}"
            out.append(st)
        return out

    pod: Pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuidlib.uuid4()),
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
            "creationTimestamp": "2024-05-01T10:00:00Z",
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": c, "image": "busybox"} for c in containers],
            "initContainers": [{"name": c, "image": "busybox"} for c in init_containers],
        },
        "status": {
            "phase": "Running" if any(containers.values()) else "Pending",
            "qosClass": qos,
            "containerStatuses": statuses(containers),
            "initContainerStatuses": statuses(init_containers),
        },
    }
    if ports and pod["spec"]["containers"]:
        pod["spec"]["containers"][0]["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"}
                                                 for n, p in ports.items()]
    if pod_ip:
        pod["status"]["podIP"] = pod_ip
        pod["status"]["podIPs"] = [{"ip": pod_ip}]
    if ready is not None:
        pod["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return pod


def _field_matcher(selector: str | None):
    """Field selector support: spec.nodeName=X / == / != and metadata.namespace, comma-separated."""
    reqs = []
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        for op in ("!=", "==", "="):
            if op in term:
                field, value = term.split(op, 1)
                reqs.append((field.strip(), op, value.strip()))
                break
        else:
            raise ValueError(f"bad field selector term {term!r}")

    def get(pod: Pod, field: str) -> str:
        cur: Any = pod
        for part in field.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        return cur or ""

    def matches(pod: Pod | None) -> bool:
        if pod is None:
            return False
        return all((get(pod, f) == v) != (op == "!=") for f, op, v in reqs)

    return matches


def _label_matcher(selector: str | None):
    """labelSelector support, with the API server's grammar (bpfscope.k8s.pods implements it)."""
    from bpfscope.k8s.pods import SelectorError, matches, parse_selector

    try:
        reqs = parse_selector(selector or "")
    except SelectorError as e:
        raise ValueError(str(e)) from None
    return lambda pod: pod is not None and matches(reqs, (pod.get("metadata") or {}).get("labels") or {})


def _and(*preds):
    return lambda pod: all(p(pod) for p in preds)


class ApiServerDouble:
    def __init__(self, *, max_watch_seconds: float = 60.0):
        self.max_watch_seconds = max_watch_seconds
        self._cond = threading.Condition()
        self._rv = 1000
        self._pods: dict[tuple[str, str], Pod] = {}
        # (rv, type, object after, object before); objects are snapshots
        self._events: list[tuple[int, str, Pod, Pod | None]] = []
        self._floor = self._rv  # watches from a resourceVersion below this get 410
        self._generation = 0  # bumped by drop_watches()
        self._closing = False
        self._paused = False
        self.requests: list[dict[str, Any]] = []
        self.open_watches = 0
        self.fail_lists = 0  # answer the next N list requests with 500
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="k8s-double", daemon=True)

    # -- lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ApiServerDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ApiServerDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def api_client(self):
        """A real kubernetes ApiClient pointed at this server."""
        from kubernetes import client

        cfg = client.Configuration(host=self.url)
        return client.ApiClient(cfg)

    # -- state changes (test side)

    def _record(self, etype: str, obj: Pod, before: Pod | None) -> Pod:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._events.append((self._rv, etype, copy.deepcopy(obj), before))
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def add_pod(self, name: str, namespace: str = "default", **kw) -> Pod:
        pod = make_pod(name, namespace, **kw)
        with self._cond:
            if (namespace, name) in self._pods:
                raise ValueError(f"pod {namespace}/{name} already exists")
            self._pods[(namespace, name)] = pod
            return self._record("ADDED", pod, None)

    def modify_pod(self, name: str, namespace: str = "default", **kw) -> Pod:
        """Change a pod: labels=, annotations=, node=, containers=, init_containers= (rest kept)."""
        with self._cond:
            old = self._pods[(namespace, name)]
            before = copy.deepcopy(old)
            spec = {
                "node": old["spec"].get("nodeName"),
                "uid": old["metadata"]["uid"],
                "labels": old["metadata"].get("labels"),
                "annotations": old["metadata"].get("annotations"),
                "containers": {s["name"]: s.get("containerID", "").partition("://")[2] or None
                               for s in old["status"]["containerStatuses"]},
                "init_containers": {s["name"]: s.get("containerID", "").partition("://")[2] or None
                                    for s in old["status"]["initContainerStatuses"]},
                "pod_ip": old["status"].get("podIP"),
                "ports": {p["name"]: p["containerPort"] for c in old["spec"]["containers"][:1]
                          for p in c.get("ports") or []} or None,
                "ready": next((c["status"] == "True" for c in old["status"].get("conditions") or []
                               if c.get("type") == "Ready"), None),
            }
            spec.update(kw)
            pod = make_pod(name, namespace, **spec)
            self._pods[(namespace, name)] = pod
            return self._record("MODIFIED", pod, before)

    def delete_pod(self, name: str, namespace: str = "default") -> Pod:
        with self._cond:
            pod = self._pods.pop((namespace, name))
            return self._record("DELETED", pod, copy.deepcopy(pod))

    def compact(self) -> None:
        """Forget all history and end open watches: resuming from any resourceVersion seen so far gets
        410 Gone (a relist gets a newer one: resource versions are etcd-global, other writes bump them)."""
        with self._cond:
            self._rv += 1
            self._floor = self._rv
            self._events.clear()
            self._generation += 1
            self._cond.notify_all()

    def pause(self) -> None:
        """Hold watch streams (no events sent, new watches wait): changes made now form a gap."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def drop_watches(self) -> None:
        """End every open watch stream (cleanly, as when the API server's timeout hits)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._rv)

    def wait_for(self, cond, timeout: float = 10.0) -> bool:
        """Wait until cond(self) is true (e.g. lambda s: s.open_watches == 1)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond(self):
                return True
            time.sleep(0.01)
        return cond(self)

    def list_requests(self) -> list[dict]:
        return [r for r in self.requests if not r["watch"]]

    def watch_requests(self) -> list[dict]:
        return [r for r in self.requests if r["watch"]]

    # -- HTTP

    def _handler_class(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                watch = q.get("watch", "").lower() in ("true", "1")
                with double._cond:
                    double.requests.append({"path": url.path, "query": q, "watch": watch})
                parts = url.path.strip("/").split("/")
                if url.path == "/api/v1/pods":
                    ns_pred = None
                elif len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
                    ns_name = parts[3]
                    ns_pred = lambda pod: pod is not None and pod["metadata"]["namespace"] == ns_name  # noqa: E731
                else:
                    return self._status(404, "NotFound", f"the server could not find the requested resource {url.path}")
                try:
                    matcher = _field_matcher(q.get("fieldSelector"))
                    if q.get("labelSelector"):
                        matcher = _and(matcher, _label_matcher(q["labelSelector"]))
                    if ns_pred is not None:
                        matcher = _and(matcher, ns_pred)
                except ValueError as e:
                    return self._status(400, "BadRequest", str(e))
                if watch:
                    return self._watch(q, matcher)
                with double._cond:
                    if double.fail_lists > 0:
                        double.fail_lists -= 1
                        fail = True
                    else:
                        fail = False
                        body = {
                            "kind": "PodList",
                            "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(double._rv)},
                            "items": [copy.deepcopy(p) for p in double._pods.values() if matcher(p)],
                        }
                if fail:
                    return self._status(500, "InternalError", "injected failure")
                self._json(200, body)

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._json(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": message, "reason": reason, "code": code})

            def _chunk(self, obj: dict) -> None:
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _watch(self, q: dict, matcher) -> None:
                rv_arg = q.get("resourceVersion", "")
                timeout = min(float(q.get("timeoutSeconds") or double.max_watch_seconds), double.max_watch_seconds)
                deadline = time.monotonic() + timeout
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with double._cond:
                    double.open_watches += 1
                    while double._paused and not double._closing:
                        double._cond.wait(0.5)
                    generation = double._generation
                    if rv_arg in ("", "0"):
                        # no resourceVersion: synthetic ADDED for the current state, then changes
                        pending = [("ADDED", copy.deepcopy(p)) for p in double._pods.values() if matcher(p)]
                        last: int | None = double._rv
                    elif int(rv_arg) < double._floor:
                        pending = [("ERROR", {
                            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": f"too old resource version: {rv_arg} ({double._floor})",
                            "reason": "Expired", "code": 410,
                        })]
                        last = None
                    else:
                        pending, last = [], int(rv_arg)
                try:
                    for etype, obj in pending:
                        self._chunk({"type": etype, "object": obj})
                    while last is not None:
                        with double._cond:
                            if double._closing or generation != double._generation:
                                break
                            remaining = deadline - time.monotonic()
                            if remaining <= 0:
                                break
                            if double._paused:
                                double._cond.wait(min(remaining, 0.5))
                                continue
                            out = []
                            for rv, etype, obj, before in double._events:
                                if rv <= last:
                                    continue
                                last = rv
                                now, was = matcher(obj) and etype != "DELETED", matcher(before)
                                if etype == "DELETED" and was:
                                    out.append(("DELETED", obj))
                                elif now and not was:
                                    out.append(("ADDED", obj))
                                elif was and not now:
                                    out.append(("DELETED", obj))
                                elif now:
                                    out.append(("MODIFIED", obj))
                            if not out:
                                double._cond.wait(min(remaining, 0.5))
                                continue
                        for etype, obj in out:
                            self._chunk({"type": etype, "object": obj})
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True
                finally:
                    with double._cond:
                        double.open_watches -= 1

        return Handler
