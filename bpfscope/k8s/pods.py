"""Pod metadata for this node: pod uid -> namespace, name, labels, container names.

PodIndex lists and watches the pods bound to this node (field selector spec.nodeName=$NODE_NAME)
with the official kubernetes client, in a daemon thread. Watches resume from the last
resourceVersion; a 410 Gone (history compacted) makes it relist. The cgroup side gives pod uids
and container ids (bpfscope.k8s.cgroups.parse_cgroup_path); lookup() turns them into labels.

Label selectors (--selector) are matched locally: equality (a=b, a==b, a!=b), set-based
(a in (x,y), a notin (x,y)) and existence (a, !a), comma-separated.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BpfscopeError, UsageError
from .cgroups import CgroupResolver, parse_cgroup_path

log = logging.getLogger(__name__)

NODE_NAME_ENV = "NODE_NAME"
# static pods: the kubelet's pod uid (the one in cgroup paths) is the config hash; the API's mirror
# pod has a uid of its own and carries the hash in these annotations
_CONFIG_HASH_ANNOTATIONS = ("kubernetes.io/config.mirror", "kubernetes.io/config.hash")


class K8sError(BpfscopeError):
    """Kubernetes API not reachable / not configured, pod list not available."""


class SelectorError(UsageError):
    """Malformed label selector."""


# --------------------------------------------------------------------------------------------------
# pods


@dataclass(frozen=True)
class PodMeta:
    namespace: str
    name: str
    uid: str
    labels: dict[str, str] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)  # container id (64 hex) -> container name
    config_hash: str | None = None  # static pods: the uid the kubelet (and the cgroup path) uses


def strip_container_id(cid: str | None) -> str:
    """'containerd://<id>', 'docker://<id>', 'cri-o://<id>' -> '<id>'."""
    if not cid:
        return ""
    return cid.partition("://")[2] if "://" in cid else cid


def pod_meta(obj: Mapping[str, Any]) -> PodMeta:
    """PodMeta from a Pod as the API returns it (JSON dict)."""
    md = obj.get("metadata") or {}
    status = obj.get("status") or {}
    containers: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            cid = strip_container_id(cs.get("containerID"))
            if cid and cs.get("name"):
                containers[cid] = cs["name"]
            # a restarted container's previous instance may still be sending
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("containerID")
            if last and cs.get("name"):
                containers.setdefault(strip_container_id(last), cs["name"])
    annotations = md.get("annotations") or {}
    config_hash = next((annotations[a] for a in _CONFIG_HASH_ANNOTATIONS if annotations.get(a)), None)
    return PodMeta(
        namespace=md.get("namespace") or "",
        name=md.get("name") or "",
        uid=(md.get("uid") or "").lower(),
        labels=dict(md.get("labels") or {}),
        containers=containers,
        config_hash=config_hash.lower() if config_hash else None,
    )


def _kubernetes():
    try:
        import kubernetes  # noqa: F401
        from kubernetes import client, config, watch
    except ImportError:
        raise K8sError("pod metadata needs the kubernetes client: pip install 'bpfscope[agent]'") from None
    return client, config, watch


def default_api_client():
    """ApiClient from the in-cluster service account, else from the kubeconfig."""
    client, config, _ = _kubernetes()
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException as incluster:
        try:
            # $KUBECONFIG read now (the client reads it once, at import)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
        except (config.ConfigException, OSError) as e:
            raise K8sError(f"no Kubernetes API configuration: not in a cluster ({incluster}) "
                           f"and no usable kubeconfig ({e})") from None
    return client.ApiClient(cfg)


class PodIndex:
    """uid -> PodMeta for the pods on one node, kept current by list + watch in a daemon thread."""

    def __init__(
        self,
        node_name: str | None = None,
        api_client: Any = None,
        *,
        resolver: CgroupResolver | None = None,
        watch_timeout: int = 300,
        backoff: tuple[float, float] = (0.5, 30.0),
    ):
        node_name = node_name or os.environ.get(NODE_NAME_ENV)
        if not node_name:
            raise K8sError(f"node name unknown: set {NODE_NAME_ENV} (downward API: fieldRef spec.nodeName)")
        self.node_name = node_name
        client, _, self._watch_mod = _kubernetes()
        self.api_client = api_client if api_client is not None else default_api_client()
        self._core = client.CoreV1Api(self.api_client)
        self._resolver = resolver
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self._lock = threading.Lock()
        self._by_uid: dict[str, PodMeta] = {}
        self._by_hash: dict[str, str] = {}  # static pod config hash -> API uid
        self._by_name: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid
        self._rv: str | None = None
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        # counters, for /metrics and tests
        self.relists = 0
        self.watches = 0
        self.events = 0
        self.last_error: Exception | None = None

    @property
    def field_selector(self) -> str:
        return f"spec.nodeName={self.node_name}"

    @property
    def resource_version(self) -> str | None:
        return self._rv

    # -- lifecycle

    def start(self) -> PodIndex:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="bpfscope-pod-index", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        thread, deadline = self._thread, time.monotonic() + timeout
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            w = self._watch
            if w is not None:
                w.stop()  # shuts the socket down once the response is there: unblocks the read
            thread.join(0.05)
        self._thread = None

    def __enter__(self) -> PodIndex:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first list has been loaded."""
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    # -- the loop

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stopping.is_set():
            try:
                if self._rv is None:
                    self.relist()
                t0, events = time.monotonic(), self.events
                self._watch_once()
                delay = self.backoff[0]
                if self.events == events and time.monotonic() - t0 < 1.0:
                    self._stopping.wait(delay)  # a server that ends watches at once: don't spin
            except Exception as e:
                if self._stopping.is_set():
                    break
                if getattr(e, "status", None) == 410:
                    log.info("pod watch: resourceVersion %s expired (410 Gone), relisting", self._rv)
                    self._rv = None
                    continue
                self.last_error = e
                log.warning("pod watch on node %s failed (%s); retrying in %.1fs", self.node_name,
                            str(e).splitlines()[0] if str(e) else type(e).__name__, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff[1])

    def relist(self) -> None:
        """List the node's pods and replace the index with them (also usable without the thread)."""
        resp = self._core.list_pod_for_all_namespaces(
            field_selector=self.field_selector, _preload_content=False, _request_timeout=(10, 60))
        try:
            data = json.loads(resp.data)
        finally:
            resp.release_conn()
        by_uid, by_hash, by_name = {}, {}, {}
        for obj in data.get("items") or []:
            meta = pod_meta(obj)
            if meta.uid:
                by_uid[meta.uid] = meta
                by_name[(meta.namespace, meta.name)] = meta.uid
                if meta.config_hash:
                    by_hash[meta.config_hash] = meta.uid
        with self._lock:
            self._by_uid, self._by_hash, self._by_name = by_uid, by_hash, by_name
            self._rv = (data.get("metadata") or {}).get("resourceVersion") or None
            self.relists += 1
        self._synced.set()

    def _watch_once(self) -> None:
        w = self._watch_mod.Watch(return_type="object")  # raw dicts, like the list
        self._watch = w
        try:
            if self._stopping.is_set():
                return
            self.watches += 1
            # timeout_seconds also turns off the client's own 410 retry: we relist instead
            for ev in w.stream(
                self._core.list_pod_for_all_namespaces,
                field_selector=self.field_selector,
                resource_version=self._rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                _request_timeout=(10, self.watch_timeout + 30),
            ):
                if self._stopping.is_set():
                    break
                self._apply(ev.get("type"), ev.get("raw_object") or {})
        finally:
            self._watch = None

    def _apply(self, etype: str | None, obj: Mapping[str, Any]) -> None:
        if etype == "ERROR":
            from kubernetes.client.rest import ApiException

            raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        with self._lock:
            if etype in ("ADDED", "MODIFIED"):
                self._put(pod_meta(obj))
            elif etype == "DELETED":
                self._drop(pod_meta(obj).uid)
            if rv:
                self._rv = rv
            self.events += 1

    def _put(self, meta: PodMeta) -> None:
        if not meta.uid:
            return
        key = (meta.namespace, meta.name)
        other = self._by_name.get(key)
        if other and other != meta.uid:  # a name is held by one pod at a time: the old one is gone
            self._drop(other)
        old = self._by_uid.get(meta.uid)
        if old and old.config_hash and old.config_hash != meta.config_hash:
            self._by_hash.pop(old.config_hash, None)
        self._by_uid[meta.uid] = meta
        self._by_name[key] = meta.uid
        if meta.config_hash:
            self._by_hash[meta.config_hash] = meta.uid

    def _drop(self, uid: str) -> None:
        meta = self._by_uid.pop(uid, None)
        if meta is None:
            return
        if self._by_name.get((meta.namespace, meta.name)) == uid:
            del self._by_name[(meta.namespace, meta.name)]
        if meta.config_hash and self._by_hash.get(meta.config_hash) == uid:
            del self._by_hash[meta.config_hash]

    # -- queries

    def get(self, pod_uid: str | None) -> PodMeta | None:
        """PodMeta by pod uid (dashes or underscores; a static pod's config hash also works)."""
        if not pod_uid:
            return None
        uid = pod_uid.replace("_", "-").lower()
        with self._lock:
            meta = self._by_uid.get(uid)
            if meta is None and uid in self._by_hash:
                meta = self._by_uid.get(self._by_hash[uid])
            return meta

    def pods(self) -> list[PodMeta]:
        with self._lock:
            return list(self._by_uid.values())

    def __len__(self) -> int:
        return len(self._by_uid)

    def lookup(self, pod_uid: str | None, container_id: str | None) -> dict[str, str]:
        """Prometheus labels {namespace, pod, container} of a pod uid + container id.

        Unknown pod: namespace and pod are "", container is the container id (or "").
        Known pod, unknown container (pod sandbox, not started yet): container is the id.
        """
        cid = strip_container_id(container_id)
        meta = self.get(pod_uid)
        if meta is None:
            return {"namespace": "", "pod": "", "container": cid}
        return {"namespace": meta.namespace, "pod": meta.name, "container": meta.containers.get(cid, cid)}

    def lookup_cgroup(self, cgroup_path: str) -> dict[str, str]:
        info = parse_cgroup_path(cgroup_path)
        return self.lookup(info.pod_uid, info.container_id)

    def selector_to_cgroups(
        self,
        namespace: str | None = None,
        pod: str | None = None,
        selector: str | None = None,
        *,
        timeout: float = 10.0,
    ) -> list[str]:
        """Pod cgroup paths ('/kubepods.slice/...-pod<uid>.slice') of the node's pods that match.

        namespace / pod: exact names (None: any); selector: label selector. A pod cgroup contains
        its containers' cgroups, so filtering on these (as ancestors) covers every container.
        An empty list means no running pod matched.
        """
        reqs = parse_selector(selector) if selector else []
        if not self.synced:
            if self._thread is None:
                self.relist()  # one-shot use: no watch thread
            elif not self.wait_synced(timeout):
                raise K8sError(f"pod list for node {self.node_name} not available after {timeout:g}s "
                               f"(last error: {self.last_error})")
        wanted: set[str] = set()
        for meta in self.pods():
            if namespace is not None and meta.namespace != namespace:
                continue
            if pod is not None and meta.name != pod:
                continue
            if not matches(reqs, meta.labels):
                continue
            wanted.add(meta.uid)
            if meta.config_hash:
                wanted.add(meta.config_hash)
        if not wanted:
            return []
        if self._resolver is None:
            self._resolver = CgroupResolver()
        self._resolver.refresh()  # pods may have started since the last walk
        out = set()
        for _cgid, path in self._resolver.items():
            info = parse_cgroup_path(path)
            if info.kind == "pod" and info.pod_uid in wanted:
                out.add(path)
        return sorted(out)


def pod_labels(index: PodIndex | None, pod_uid: str | None, container_id: str | None) -> dict[str, str]:
    """index.lookup(), also when there is no index (not on Kubernetes)."""
    if index is None:
        return {"namespace": "", "pod": "", "container": strip_container_id(container_id)}
    return index.lookup(pod_uid, container_id)


# --------------------------------------------------------------------------------------------------
# label selectors


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and labels[self.key] in self.values
        # "!=" and "notin" also match when the label is absent (as in Kubernetes)
        return not has or labels[self.key] not in self.values


_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = rf"(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"
_T_NOT = re.compile(rf"^!\s*({_KEY})$")
_T_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\((.*)\)$")
_T_EQ = re.compile(rf"^({_KEY})\s*(==|!=|=)\s*({_VALUE})$")
_T_EXISTS = re.compile(rf"^({_KEY})$")
_V = re.compile(rf"^{_VALUE}$")


def _split_terms(text: str) -> list[str]:
    terms, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
            if depth > 1:
                raise SelectorError(f"label selector {text!r}: nested parentheses")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"label selector {text!r}: unbalanced ')'")
        elif ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if depth:
        raise SelectorError(f"label selector {text!r}: missing ')'")
    terms.append("".join(cur))
    return terms


def parse_selector(text: str) -> list[Requirement]:
    """'a=b,c!=d,e in (x,y),!f' -> requirements (all must match). Empty text selects everything."""
    if not text or not text.strip():
        return []
    reqs = []
    for raw in _split_terms(text):
        term = raw.strip()
        if not term:
            raise SelectorError(f"label selector {text!r}: empty requirement")
        if m := _T_NOT.match(term):
            reqs.append(Requirement(m.group(1), "!"))
        elif m := _T_SET.match(term):
            values = [v.strip() for v in m.group(3).split(",")]
            if not values or any(not v for v in values) or not all(_V.match(v) for v in values):
                raise SelectorError(f"label selector {text!r}: bad value set in {term!r}")
            reqs.append(Requirement(m.group(1), m.group(2), frozenset(values)))
        elif m := _T_EQ.match(term):
            op = "=" if m.group(2) == "==" else m.group(2)
            reqs.append(Requirement(m.group(1), op, frozenset([m.group(3)])))
        elif m := _T_EXISTS.match(term):
            reqs.append(Requirement(m.group(1), "exists"))
        else:
            raise SelectorError(f"label selector {text!r}: cannot parse {term!r}")
    return reqs


def matches(selector: str | Iterable[Requirement], labels: Mapping[str, str]) -> bool:
    """Whether labels satisfy a selector (text or parsed requirements)."""
    reqs = parse_selector(selector) if isinstance(selector, str) else selector
    return all(r.matches(labels) for r in reqs)
