"""Which agents a cluster run talks to.

Either a list given by the user (`--agents [NODE=]URL,...`), or the agent pods found through the
Kubernetes API: pods with the agent's labels in its namespace, one per node, reached at their pod
IP on the container port named "api". Pods that cannot take a run (not running, not ready, no IP)
are kept as endpoints with a `problem`, so the run reports those nodes instead of silently
skipping them.

Tokens: one file for every agent (the DaemonSet's Secret), or NODE=FILE for agents that each
have their own.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import BpfscopeError, UsageError

DEFAULT_PORT = 9440
DEFAULT_NAMESPACE = "bpfscope"
DEFAULT_SELECTOR = "app.kubernetes.io/name=bpfscope,app.kubernetes.io/component=agent"
PORT_NAME = "api"
NODE_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.:]{0,251}[A-Za-z0-9])?")


class DiscoveryError(BpfscopeError):
    """The agents could not be listed (API unreachable, forbidden, nothing found)."""


@dataclass(frozen=True)
class Endpoint:
    node: str
    url: str = ""  # base URL, http(s)://host:port
    token: str | None = None
    pod: str = ""  # namespace/name when found through Kubernetes
    problem: str | None = None  # known unusable before any request: reported as this node's failure


def parse_agents(text: str) -> list[Endpoint]:
    """'[NODE=]URL,...' -> endpoints; a URL without a node name is named by its host:port."""
    out: list[Endpoint] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        node, sep, url = item.partition("=")
        if not sep or "://" in node:
            node, url = "", item
        url = url.rstrip("/")
        if "://" not in url:
            url = "http://" + url
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise UsageError(f"--agents: bad URL {url!r}: {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--agents: {url!r} is not an http(s)://HOST:PORT URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise UsageError(f"--agents: {url!r}: give the agent's base URL (scheme, host, port only)")
        if port is None:
            url = f"{parts.scheme}://{parts.netloc}:{DEFAULT_PORT}"
        node = node.strip() or urlsplit(url).netloc
        if not NODE_RE.fullmatch(node):
            raise UsageError(f"--agents: bad node name {node!r}")
        out.append(Endpoint(node=node, url=url))
    if not out:
        raise UsageError("--agents: give at least one agent URL")
    dupes = sorted({e.node for e in out if sum(x.node == e.node for x in out) > 1})
    if dupes:
        raise UsageError(f"--agents: node name(s) given twice: {', '.join(dupes)}")
    return out


def read_token_file(path: str) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read token file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"token file {path} is not text") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise UsageError(f"token file {path}: expected one word (the agent's bearer token)")
    return token


def parse_token_files(items: list[str]) -> tuple[str | None, dict[str, str]]:
    """--token-file FILE (every agent) and --token-file NODE=FILE (one agent) -> (default, per node)."""
    default: str | None = None
    per_node: dict[str, str] = {}
    for item in items:
        node, sep, path = item.partition("=")
        if sep and NODE_RE.fullmatch(node) and "/" not in node:
            per_node[node] = read_token_file(path)
        else:
            if default is not None:
                raise UsageError("--token-file: give one file for every agent, or NODE=FILE per agent")
            default = read_token_file(item)
    return default, per_node


def with_tokens(endpoints: list[Endpoint], default: str | None, per_node: dict[str, str]) -> list[Endpoint]:
    unknown = sorted(set(per_node) - {e.node for e in endpoints})
    if unknown:
        raise UsageError(f"--token-file for unknown node(s): {', '.join(unknown)}")
    return [Endpoint(e.node, e.url, per_node.get(e.node, default), e.pod, e.problem) for e in endpoints]


def filter_nodes(endpoints: list[Endpoint], nodes: list[str] | None) -> list[Endpoint]:
    """Keep the agents of the nodes asked for; a node asked for without an agent is a failed node."""
    if not nodes:
        return endpoints
    by_node = {e.node: e for e in endpoints}
    out = []
    for n in dict.fromkeys(nodes):
        out.append(by_node.get(n) or Endpoint(node=n, problem="no bpfscope agent found on this node"))
    return out


# ------------------------------------------------------------------------------- Kubernetes
def _pod_ready(pod: dict[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    # no conditions reported: take running containers that say they are ready
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all(s.get("ready") for s in statuses)


def _api_port(pod: dict[str, Any]) -> int:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == PORT_NAME and p.get("containerPort"):
                return int(p["containerPort"])
    return DEFAULT_PORT


def _host(ip: str) -> str:
    try:
        return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    except ValueError:
        return ip


def endpoints_from_pods(pods: list[dict[str, Any]], scheme: str = "http") -> list[Endpoint]:
    """One endpoint per node from agent pods (a newer running pod wins over a terminating one)."""
    by_node: dict[str, Endpoint] = {}
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or ""):
        md = pod.get("metadata") or {}
        status = pod.get("status") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            continue  # not scheduled yet: no node to report
        ident = f"{md.get('namespace', '')}/{md.get('name', '')}"
        problem = None
        ip = status.get("podIP") or ""
        if md.get("deletionTimestamp"):
            problem = f"agent pod {ident} is terminating"
        elif status.get("phase") != "Running":
            problem = f"agent pod {ident} is {status.get('phase') or 'not running'}"
        elif not _pod_ready(pod):
            problem = f"agent pod {ident} is not ready"
        elif not ip:
            problem = f"agent pod {ident} has no IP yet"
        ep = Endpoint(node=node, url=f"{scheme}://{_host(ip)}:{_api_port(pod)}" if ip else "", pod=ident,
                      problem=problem)
        old = by_node.get(node)
        if old is None or not (problem and not old.problem):  # a usable pod wins, then the newest
            by_node[node] = ep
    return [by_node[n] for n in sorted(by_node)]


def list_agent_pods(api_client: Any, namespace: str, selector: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The agent pods (plain dicts, as the API returns them) through the kubernetes client."""
    try:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        raise DiscoveryError("finding agents needs the kubernetes client (pip install 'bpfscope[agent]'); "
                             "or give --agents URL,...") from None
    core = client.CoreV1Api(api_client)
    items: list[dict[str, Any]] = []
    cont: str | None = None
    try:
        while True:
            kw: dict[str, Any] = {"label_selector": selector, "limit": 500, "_preload_content": False,
                                  "_request_timeout": (timeout, timeout)}
            if cont:
                kw["_continue"] = cont
            resp = core.list_namespaced_pod(namespace, **kw)
            try:
                data = json.loads(resp.data)
            finally:
                resp.release_conn()
            items.extend(data.get("items") or [])
            cont = (data.get("metadata") or {}).get("continue")
            if not cont:
                break
    except ApiException as e:
        reason = e.reason or ""
        try:
            reason = json.loads(e.body or "{}").get("message") or reason
        except (ValueError, AttributeError):
            pass
        raise DiscoveryError(f"cannot list agent pods in namespace {namespace}: HTTP {e.status} {reason}".rstrip()) \
            from None
    except Exception as e:  # noqa: BLE001 - urllib3's errors (MaxRetryError...): one line, no traceback
        host = getattr(getattr(api_client, "configuration", None), "host", "") or "?"
        raise DiscoveryError(f"cannot reach the Kubernetes API at {host}: {_reason(e)}") from None
    return items


def _reason(e: BaseException) -> str:
    """The innermost useful text of a urllib3 error ("Connection refused", "timed out")."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, BaseException):
        e = reason
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    m = re.search(r"\[Errno -?\d+\] ([^\)\"']+)", text)
    if m:
        return m.group(1).strip()
    return text.split(": ", 1)[-1] if "Failed to establish" in text else text


def discover(namespace: str = DEFAULT_NAMESPACE, selector: str = DEFAULT_SELECTOR, api_client: Any = None,
             scheme: str = "http") -> list[Endpoint]:
    """Agents found through the Kubernetes API (in-cluster service account, else kubeconfig)."""
    from ..k8s.pods import K8sError, default_api_client, parse_selector

    parse_selector(selector)  # a malformed selector is a usage error before any request
    if api_client is None:
        try:
            api_client = default_api_client()
        except K8sError as e:
            raise DiscoveryError(f"{e}; or give the agents with --agents URL,...") from None
    cfg = getattr(api_client, "configuration", None)
    if cfg is not None and getattr(cfg, "retries", None) is None:  # fail fast: one retry, not urllib3's three
        from kubernetes import client

        cfg.retries = 1
        api_client = client.ApiClient(cfg)
    pods = list_agent_pods(api_client, namespace, selector)
    found = endpoints_from_pods(pods, scheme)
    if not found:
        raise DiscoveryError(f"no bpfscope agent pods in namespace {namespace} matching {selector!r} "
                             "(is the DaemonSet installed? see docs/kubernetes.md)")
    return found
