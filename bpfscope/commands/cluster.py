"""`bpfscope cluster TOOL [options]`: run a tool on every node's agent at once and merge the results.

    bpfscope cluster profile -F 99 -d 10 --svg cluster.svg --node-frame
    bpfscope cluster runqlat -d 5 --per-node
    bpfscope cluster execsnoop -d 30 --nodes node-a,node-b
    bpfscope cluster execcount -d 10 --namespace web          # pod filter, applied on every node
    bpfscope cluster --agents a=http://10.0.0.5:9440,b=http://10.0.0.6:9440 --token-file tok profile -d 5

Agents: the pods of the bpfscope DaemonSet, found through the Kubernetes API (in-cluster service
account, else $KUBECONFIG / ~/.kube/config) and reached at their pod IPs; or any set given with
--agents. The tool's own options are validated here first, then again by every agent.

Merging: histograms summed (--per-node: one per node), stacks merged (--node-frame: the node's
name as the root frame), events interleaved by time with a NODE column, rate tables labelled
by node. A node that fails is reported on stderr and the others still count.

Exit status: 0 every node answered; 4 partial (some nodes failed, the merged result covers the
others); 1 no node answered; 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
import threading
from typing import Any

from .. import registry
from ..errors import BpfscopeError, UsageError

EXIT_PARTIAL = 4
POD_FILTERS = ("namespace", "pod", "selector")

# (option strings, argparse keywords); added to the tool's own parser
CLUSTER_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--agents",), {"metavar": "[NODE=]URL,...", "help": "these agents instead of the ones Kubernetes lists"}),
    (("--nodes",), {"metavar": "NODE,...", "help": "only the agents of these nodes (a node without one is "
                    "reported as failed)"}),
    (("--agent-namespace",), {"metavar": "NAMESPACE", "default": None,
                              "help": "namespace of the agent pods (default: bpfscope)"}),
    (("--agent-selector",), {"metavar": "SELECTOR", "default": None,
                             "help": "label selector of the agent pods (default: "
                                     "app.kubernetes.io/name=bpfscope,app.kubernetes.io/component=agent)"}),
    (("--token-file",), {"metavar": "[NODE=]FILE", "action": "append", "default": None,
                         "help": "bearer token for every agent, or NODE=FILE for one (repeatable; "
                                 "default: $BPFSCOPE_TOKEN_FILE)"}),
    (("--ca-file",), {"metavar": "FILE", "help": "agents serve HTTPS with certificates from this CA"}),
    (("--per-node",), {"action": "store_true", "help": "histograms: one per node instead of the sum"}),
    (("--node-frame",), {"action": "store_true", "help": "stacks: the node's name as the root frame"}),
    (("--request-timeout",), {"metavar": "SECONDS", "type": float, "default": 15.0,
                              "help": "timeout of each request to an agent (default: 15)"}),
]


def _cluster_value_flags() -> set[str]:
    return {flag for flags, kw in CLUSTER_OPTIONS for flag in flags if kw.get("action") != "store_true"}


def split_argv(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Cluster options before the tool name, the tool name, everything after it."""
    value_flags = _cluster_value_flags()
    before: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            return before + [a], None, []
        if not a.startswith("-"):
            return before, a, argv[i + 1:]
        before.append(a)
        if a in value_flags and i + 1 < len(argv):
            before.append(argv[i + 1])
            i += 1
        i += 1
    return before, None, []


def _usage_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpfscope cluster", usage="bpfscope cluster [cluster options] TOOL [options]",
                                description=__doc__.split("\n\n", 1)[0].split(": ", 1)[1],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("cluster options")
    for flags, kw in CLUSTER_OPTIONS:
        g.add_argument(*flags, **kw)
    return p


def build_parser(cls: type[registry.Tool]) -> argparse.ArgumentParser:
    """The tool's own parser (its Option list, output flags) plus the cluster options."""
    from ..cli import tool_parser

    p = tool_parser(cls)
    p.prog = f"bpfscope cluster {cls.name}"
    g = p.add_argument_group("cluster options")
    taken = set(p._option_string_actions)
    for flags, kw in CLUSTER_OPTIONS:
        if not set(flags) & taken:
            g.add_argument(*flags, **kw)
    names = {o.name for o in cls.options}
    for f in POD_FILTERS:  # given to a tool without pod filters: a clear error, not argparse's
        if f not in names and f"--{f}" not in taken:
            g.add_argument(f"--{f}", dest=f"_missing_{f}", metavar=f.upper(), help=argparse.SUPPRESS)
    return p


def rest_options(cls: type[registry.Tool], ns: argparse.Namespace) -> tuple[dict[str, Any], float | None]:
    """The options the user gave, checked by the tool's Option model, as the REST body takes them;
    and the run's duration."""
    for f in POD_FILTERS:
        if getattr(ns, f"_missing_{f}", None) is not None:
            raise UsageError(f"{cls.name} has no pod filter (--{f}); tools with --namespace/--pod/--selector: "
                             + ", ".join(n for n, c in registry.all_tools().items()
                                         if {o.name for o in c.options} >= set(POD_FILTERS)))
    raw: dict[str, Any] = {}
    for o in cls.options:
        v = getattr(ns, o.name, None)
        if v is None or v == [] or (o.type is bool and v is False):
            continue
        raw[o.name] = v
    cli_only = sorted(o.name for o in cls.options if o.cli_only and o.name in raw)
    if cli_only:
        raise UsageError(f"option(s) not available on agents: {', '.join(cli_only)}")
    opts = cls.validate(raw, strict=False)
    options = {k: opts.values[k] for k in raw}
    duration = options.pop("duration", None)
    if duration is None:
        for k in ("duration_pos",):
            if isinstance(options.get(k), (int, float)):
                duration = float(options[k])
    return options, (float(duration) if duration is not None else None)


def _ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    if not ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"--ca-file {ca_file}: {getattr(e, 'strerror', None) or e}") from None


def endpoints(ns: argparse.Namespace) -> list[Any]:
    from ..cluster import discovery as d

    token_items = list(ns.token_file or [])
    if not token_items and os.environ.get("BPFSCOPE_TOKEN_FILE"):
        token_items = [os.environ["BPFSCOPE_TOKEN_FILE"]]
    default_token, per_node = d.parse_token_files(token_items)
    if ns.agents:
        if ns.agent_namespace or ns.agent_selector:
            raise UsageError("--agents replaces discovery: --agent-namespace/--agent-selector do not apply")
        eps = d.parse_agents(ns.agents)
    else:
        eps = d.discover(ns.agent_namespace or d.DEFAULT_NAMESPACE, ns.agent_selector or d.DEFAULT_SELECTOR,
                         scheme="https" if ns.ca_file else "http")
    nodes = [n.strip() for n in (ns.nodes or "").split(",") if n.strip()]
    for n in nodes:
        if not d.NODE_RE.fullmatch(n):
            raise UsageError(f"--nodes: bad node name {n!r}")
    eps = d.with_tokens(eps, default_token, per_node)  # NODE=FILE checked against every agent found
    return d.filter_nodes(eps, nodes)


class _Stop:
    """First SIGINT/SIGTERM: cancel the runs and merge what they had; a second one interrupts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.event.set()
        if self.count > 1:
            raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self)
            signal.signal(signal.SIGTERM, self)


def main(argv: list[str]) -> int:
    before, tool, after = split_argv(list(argv))
    if tool is None:
        p = _usage_parser()
        if any(a in ("-h", "--help") for a in before):
            p.print_help()
            return 0
        p.print_usage(sys.stderr)
        sys.stderr.write("bpfscope cluster: error: give a TOOL to run (bpfscope --help lists them)\n")
        return 2
    cls = registry.get(tool)
    ns = build_parser(cls).parse_args(before + after)
    options, duration = rest_options(cls, ns)
    if not 0.1 <= ns.request_timeout <= 600:
        raise UsageError("--request-timeout must be between 0.1 and 600 seconds")
    ctx = _ssl_context(ns.ca_file)
    eps = endpoints(ns)
    return run_cluster(cls, ns, eps, options, duration, ctx)


def run_cluster(cls: type[registry.Tool], ns: argparse.Namespace, eps: list[Any], options: dict[str, Any],
                duration: float | None, ssl_context: ssl.SSLContext | None = None,
                stop: threading.Event | None = None, out: Any = None, err: Any = None) -> int:
    from ..cluster.client import ClusterRun

    out = out or sys.stdout
    err = err or sys.stderr
    stopper = _Stop()
    if stop is None:
        stopper.install()
        stop = stopper.event
    run = ClusterRun(eps, cls.name, options, duration, timeout=ns.request_timeout, ssl_context=ssl_context)
    usable = [e.node for e in eps if not e.problem]
    how_long = f"for {duration:g} s" if duration else "until Ctrl-C (at most the agents' --max-duration)"
    err.write(f"Running {cls.name} on {len(usable)} node(s) {how_long}: {', '.join(usable) or '-'}\n")
    err.flush()
    try:
        nodes = run.run(stop)
    finally:
        run.close()
    ok = [n for n in nodes if n.ok]
    failed = [n for n in nodes if not n.ok]
    _notices(ok, err)
    if ok:
        render(cls, ns, [(n.node, n.result or {}) for n in ok], nodes, out, err)
    for n in failed:
        err.write(f"bpfscope cluster: node {n.node}: {n.error or 'no result'}\n")
    err.flush()
    if not ok:
        raise BpfscopeError(f"no node returned a result ({len(failed)} failed)")
    if failed:
        err.write(f"bpfscope cluster: partial result: {len(ok)} of {len(nodes)} nodes "
                  f"(failed: {', '.join(n.node for n in failed)})\n")
        return EXIT_PARTIAL
    return 0


def _notices(ok: list[Any], err: Any) -> None:
    """Each distinct notice once, with the nodes that gave it (the mode line, warnings)."""
    seen: dict[str, list[str]] = {}
    for n in ok:
        for msg in (n.status.get("notices") or []):
            seen.setdefault(str(msg), []).append(n.node)
    for msg, nodes in seen.items():
        who = "all nodes" if len(nodes) == len(ok) and len(ok) > 1 else ", ".join(nodes)
        err.write(f"[{who}] {msg}\n")


def render(cls: type[registry.Tool], ns: argparse.Namespace, results: list[tuple[str, dict[str, Any]]],
           nodes: list[Any], out: Any, err: Any) -> None:
    from ..cluster import merge
    from ..output import make_renderer
    from ..results import Column, Event, Summary

    kind = cls.output
    if kind == "events":
        records = merge.merge_events(results, {n.node: n.attached_at for n in nodes if n.attached_at})
        if getattr(ns, "json", False):
            r = make_renderer(cls, ns, out, err)
        else:
            from ..output import _columns
            from ..render.text import TextRenderer

            width = max([4, *(len(n) for n, _ in results)])
            cols = [Column("NODE", "node", width), *_columns(cls, ns)]
            r = TextRenderer(out, err, columns=cols, timestamp=bool(getattr(ns, "timestamp", False)))
        items: list[Any] = [Event(rec) for rec in records]
    else:
        r = make_renderer(cls, ns, out, err)
        if kind == "stacks":
            items = [merge.merge_stacks(results, node_frame=bool(getattr(ns, "node_frame", False)))]
        elif kind == "histogram":
            items = [merge.merge_histograms(results, per_node=bool(getattr(ns, "per_node", False)))]
        else:
            items = list(merge.merge_rates(results))
    lost = {n.node: int(n.status.get("lost_events") or 0) for n in nodes if n.ok}
    extra: dict[str, Any] = {"nodes": f"{sum(n.ok for n in nodes)} of {len(nodes)} answered"}
    if any(lost.values()):
        extra["lost events per node"] = ", ".join(f"{k}={v}" for k, v in lost.items() if v)
    if kind == "events":
        dropped = {n.node: int(n.status.get("events") or 0) - len((n.result or {}).get("events") or [])
                   for n in nodes if n.ok}
        if any(v > 0 for v in dropped.values()):
            extra["events dropped from agent buffers"] = ", ".join(f"{k}={v}" for k, v in dropped.items() if v > 0)
    items.append(Summary(lost_events=sum(lost.values()), extra=extra))
    try:
        for item in items:
            r.render(item)
    finally:
        close = getattr(r, "close", None)
        if close is not None:
            close()
