"""`bpfscope cluster` against three real agents (`bpfscope serve`) on loopback, each its own "node"
with its own token: one run fanned out, results merged, a failing node reported without failing
the others. Discovery goes through the real kubernetes client against the API-server double.

The tools run for real on this kernel; the work they see is generated here (a spinning function,
a known number of system calls, execs with a marker), and what the merged result says is compared
with it and with what each agent reports for its own run."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from bpfscope.cluster import merge
from bpfscope.render.histogram import histogram_json
from bpfscope.results import Histogram
from tests.agent_helpers import ROOT, Agent
from tests.helpers import build_c
from tests.k8s_double import ApiServerDouble

pytestmark = pytest.mark.bpf

NODES = ("node-a", "node-b", "node-c")
AGENT_LABELS = {"app.kubernetes.io/name": "bpfscope", "app.kubernetes.io/component": "agent"}

SPIN_C = r"""
volatile unsigned long sink;
__attribute__((noinline)) void %(name)s(void) { for (;;) { for (int i = 0; i < 1000; i++) sink += i; } }
int main(void) { %(name)s(); return 0; }
"""

# waits for one byte on stdin, then makes N getppid() system calls and exits
SYSCALLS_C = r"""
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char c;
    if (read(0, &c, 1) != 1) return 1;
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    return 0;
}
"""


class Node:
    def __init__(self, name: str, agent: Agent, token_file: Path):
        self.name, self.agent, self.token_file = name, agent, token_file

    @property
    def url(self) -> str:
        return self.agent.url


def start_nodes(tmp: Path, names: tuple[str, ...] = NODES) -> list[Node]:
    nodes = []
    for name in names:
        token = secrets.token_urlsafe(24)
        tf = tmp / f"{name}.token"
        tf.write_text(token + "\n")
        tf.chmod(0o600)
        agent = Agent("--collectors", "execs", "--token-file", str(tf), "--max-duration", "60",
                      token=token, log=tmp / f"{name}.log")
        nodes.append(Node(name, agent, tf))
    try:
        for n in nodes:
            n.agent.ready(timeout=60)
    except BaseException:
        for n in nodes:
            n.agent.stop()
        raise
    return nodes


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    ns = start_nodes(tmp_path_factory.mktemp("cluster"))
    yield ns
    for n in ns:
        n.agent.stop()


def agent_args(nodes: list[Node]) -> list[str]:
    args = ["--agents", ",".join(f"{n.name}={n.url}" for n in nodes)]
    for n in nodes:
        args += ["--token-file", f"{n.name}={n.token_file}"]
    return args


def cluster(*args: str, env: dict | None = None) -> subprocess.Popen:
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "bpfscope", "cluster", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT)


def finish(proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def runs_of(node: Node, tool: str, since: float) -> list[dict]:
    with node.agent.client() as c:
        return [r for r in c.get("/api/v1/runs").json()["runs"] if r["tool"] == tool and r["created"] >= since]


def wait_attached_everywhere(nodes: list[Node], tool: str, since: float, timeout: float = 30) -> None:
    """Until each agent has a run of `tool` (started after `since`) with its probes attached."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(any(r["attached"] for r in runs_of(n, tool, since)) for n in nodes):
            return
        time.sleep(0.05)
    raise AssertionError(f"{tool} not attached on every agent within {timeout}s: "
                         + str({n.name: runs_of(n, tool, since) for n in nodes}))


def folded(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.strip():
            stack, _, n = line.rpartition(" ")
            out[stack] = out.get(stack, 0) + int(n)
    return out


def node_result(node: Node, run_id: str, fmt: str) -> httpx.Response:
    with node.agent.client() as c:
        r = c.get(f"/api/v1/runs/{run_id}/result", params={"format": fmt})
    assert r.status_code == 200, r.text
    return r


# ------------------------------------------------------------------------------------ stacks
def test_merged_profile_is_the_union_of_the_node_profiles(nodes, tmp_path):
    fn = f"cluster_spin_{uuid.uuid4().hex[:8]}"
    spin = subprocess.Popen([str(build_c(SPIN_C % {"name": fn}, tmp_path / "spin"))])
    try:
        since = time.time() - 1
        rc, out, err = finish(cluster(*agent_args(nodes), "profile", "-p", str(spin.pid), "-F", "99", "-d", "3",
                                      "-f", "--node-frame"))
    finally:
        spin.kill()
        spin.wait()
    assert rc == 0, err
    merged = folded(out)
    assert "3 of 3 answered" in err and "perf_event mode" in err

    # what every agent says about its own run of this profile
    expected: dict[str, int] = {}
    per_node_spin = {}
    for n in nodes:
        (run,) = runs_of(n, "profile", since)
        assert run["state"] == "done" and run["options"]["pid"] == [spin.pid]
        own = folded(node_result(n, run["id"], "folded").text)
        per_node_spin[n.name] = sum(c for s, c in own.items() if fn in s)
        for stack, c in own.items():
            expected[f"{n.name};{stack}"] = expected.get(f"{n.name};{stack}", 0) + c
    assert merged == expected  # exactly the union, each stack under its node's root frame
    created = [runs_of(n, "profile", since)[0]["created"] for n in nodes]
    assert max(created) - min(created) < 2.0  # started together, not one node after the other
    # and the work done: every node sampled the spinning function (at most 3 s at 99 Hz: fewer when
    # the machine is busy and the spinner gets less of a CPU)
    assert all(c > 0 for c in per_node_spin.values()), (per_node_spin, out)
    assert sum(c for s, c in merged.items() if fn in s) == sum(per_node_spin.values())
    assert {s.split(";", 1)[0] for s in merged} == set(NODES)


# -------------------------------------------------------------------------------- histograms
def test_histogram_run_sums_the_nodes_and_per_node_keeps_them_apart(nodes, tmp_path):
    exe = build_c(SYSCALLS_C, tmp_path / "calls")
    calls = 300
    results = {}
    for per_node in (False, True):
        work = subprocess.Popen([str(exe), str(calls)], stdin=subprocess.PIPE)
        try:
            since = time.time() - 0.5
            extra = ["--per-node"] if per_node else []
            proc = cluster(*agent_args(nodes), *extra, "funclatency", "-p", str(work.pid), "-u", "-d", "4", "--json",
                           "syscall:getppid")
            wait_attached_everywhere(nodes, "funclatency", since)
            work.stdin.write(b"x")
            work.stdin.close()
            assert work.wait(20) == 0
            rc, out, err = finish(proc)
        finally:
            if work.poll() is None:
                work.kill()
        assert rc == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        (hs,) = [x for x in lines if x.get("type") == "histograms"]
        (summary,) = [x for x in lines if x.get("type") == "summary"]
        assert summary["lost_events"] == 0 and summary["nodes"] == "3 of 3 answered"
        results[per_node] = hs["histograms"]

    (total,) = results[False]
    assert total["unit"] == "usecs"
    assert total["count"] == calls * len(NODES)  # every node counted each call of the process
    assert sum(b["count"] for b in total["buckets"]) == calls * len(NODES)
    per = {h["key"]: h for h in results[True]}
    assert set(per) == set(NODES)
    assert all(h["count"] == calls and h["key_label"] == "node" for h in per.values())


def test_histogram_merge_keeps_log2_and_linear_slots():
    """The merge rebuilds slots from the agents' JSON buckets: log2 and linear histograms survive it."""
    log2 = Histogram(slots=[0, 3, 0, 5, 0, 0, 1], unit="usecs", total=400)
    lin = Histogram(slots=[2, 0, 7, 1], unit="ms", key="x", key_label="disk", linear_step=10, total=99)
    docs = [(f"n{i}", {"results": [{"type": "histograms", "histograms": [histogram_json(log2), histogram_json(lin)]}]})
            for i in range(2)]
    hs = {h.key: h for h in merge.merge_histograms(docs).histograms}
    assert hs[None].slots == [0, 6, 0, 10, 0, 0, 2] and hs[None].linear_step == 0 and hs[None].total == 800
    assert hs["x"].slots == [4, 0, 14, 2] and hs["x"].linear_step == 10 and hs["x"].key_label == "disk"


# ------------------------------------------------------------------------------------ events
def test_events_interleaved_by_time_with_a_node_field(nodes):
    marker = f"m{uuid.uuid4().hex[:10]}"
    since = time.time() - 0.5
    proc = cluster(*agent_args(nodes), "execsnoop", "-d", "4", "--json", "-l", marker)
    wait_attached_everywhere(nodes, "execsnoop", since)
    for i in range(5):
        subprocess.run(["/bin/true", marker, str(i)], check=True)
        time.sleep(0.2)
    rc, out, err = finish(proc)
    assert rc == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    execs = [e for e in events if e.get("type") != "summary"]
    # each exec seen by every node, once per node
    seen = {(e["node"], e["argv"][2]) for e in execs}
    assert seen == {(n, str(i)) for n in NODES for i in range(5)}
    assert len(execs) == 5 * len(NODES)
    # interleaved: in the time order of the execs, not node after node
    order = [e["argv"][2] for e in execs]
    assert order == sorted(order), order
    assert [e["node"] for e in execs[:3]] != [NODES[0]] * 3


# ------------------------------------------------------------------------------- partial runs
def test_a_node_stopped_during_the_run_gives_a_partial_result_naming_it(nodes, tmp_path):
    spare = start_nodes(tmp_path, ("node-d",))[0]
    group = [*nodes[:2], spare]
    fn = f"cluster_partial_{uuid.uuid4().hex[:8]}"
    spin = subprocess.Popen([str(build_c(SPIN_C % {"name": fn}, tmp_path / "spin"))])
    try:
        since = time.time() - 0.5
        proc = cluster(*agent_args(group), "profile", "-p", str(spin.pid), "-d", "3", "-f", "--node-frame")
        wait_attached_everywhere(group, "profile", since)
        spare.agent.proc.send_signal(signal.SIGKILL)  # the node goes away mid-run
        spare.agent.stop()
        rc, out, err = finish(proc)
    finally:
        spin.kill()
        spin.wait()
    assert rc == 4, err  # partial
    assert re.search(r"node node-d: (lost the agent during the run|cannot reach agent)", err), err
    assert "partial result: 2 of 3 nodes (failed: node-d)" in err
    merged = folded(out)
    assert {s.split(";", 1)[0] for s in merged} == {"node-a", "node-b"}
    assert all(sum(c for s, c in merged.items() if s.startswith(n + ";") and fn in s) > 0 for n in ("node-a", "node-b"))


def test_wrong_token_and_unreachable_node_fail_alone(nodes, tmp_path):
    bad = tmp_path / "bad.token"
    bad.write_text("not-the-right-token-at-all\n")
    args = ["--agents", f"{nodes[0].name}={nodes[0].url},{nodes[1].name}={nodes[1].url},gone=http://127.0.0.1:9",
            "--token-file", f"{nodes[0].name}={nodes[0].token_file}", "--token-file", f"{nodes[1].name}={bad}"]
    rc, out, err = finish(cluster(*args, "funclatency", "-d", "0.5", "syscall:getppid"))
    assert rc == 4, err
    assert "node node-b: agent refused the bearer token (HTTP 401)" in err
    assert "node gone: cannot reach agent at http://127.0.0.1:9" in err
    assert "usecs" in out or "nsecs" in out  # node-a's histogram still printed

    # nobody answers: one line, exit 1, no traceback
    rc, out, err = finish(cluster("--agents", "gone=http://127.0.0.1:9", "execsnoop", "-d", "0.5"))
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "bpfscope: error: no node returned a result (1 failed)"


def test_bad_input_is_one_line_before_any_request(nodes):
    cases = [
        (["--agents", "a=ftp://x:1", "execsnoop"], "is not an http(s)://HOST:PORT URL"),
        (["--agents", "a=http://127.0.0.1:1,a=http://127.0.0.1:2", "execsnoop"], "node name(s) given twice: a"),
        ([*agent_args(nodes), "profile", "--namespace", "web"], "profile has no pod filter (--namespace)"),
        ([*agent_args(nodes), "profile", "-F", "abc"], "frequency: expected an integer, got 'abc'"),
        ([*agent_args(nodes), "nosuchtool"], "nosuchtool"),
    ]
    for args, msg in cases:
        rc, out, err = finish(cluster(*args), timeout=60)
        assert rc != 0 and "Traceback" not in err, (args, err)
        assert msg in err, (args, err)
    # the option the agents refused is reported per node, naming why
    rc, out, err = finish(cluster(*agent_args(nodes), "funclatency", "-u", "-m", "-d", "1", "syscall:read"))
    assert rc == 1 and err.count("-u and -m are exclusive") == len(NODES), err


def test_pod_filters_are_passed_down_to_every_agent(nodes):
    since = time.time() - 0.5
    rc, out, err = finish(cluster(*agent_args(nodes), "execcount", "-d", "1", "--namespace", "web",
                                  "--selector", "app in (db,cache)"))
    for n in nodes:
        (run,) = runs_of(n, "execcount", since)
        assert run["options"]["namespace"] == "web" and run["options"]["selector"] == "app in (db,cache)"
    # these agents run outside Kubernetes: each node says so, by name, and nothing crashes
    assert rc == 1 and "Traceback" not in err, err
    for n in NODES:
        assert re.search(rf"node {n}: run failed: .*(NODE_NAME|Kubernetes)", err), err


# --------------------------------------------------------------------------------- discovery
def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "kube-token"}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "u"}}],
    }))
    return path


def test_agents_found_through_the_kubernetes_api(nodes, tmp_path):
    with ApiServerDouble() as api:
        for n in nodes:
            api.add_pod(f"bpfscope-{n.name[-1]}x", "bpfscope", node=n.name, labels=dict(AGENT_LABELS),
                        containers={"agent": "c" * 64}, pod_ip="127.0.0.1", ports={"api": n.agent.port}, ready=True)
        # not agents of this run: other labels, other namespace; and an agent that is not ready
        api.add_pod("web-1", "bpfscope", node="node-a", labels={"app": "web"}, containers={"w": "d" * 64},
                    pod_ip="127.0.0.9", ports={"api": 1}, ready=True)
        api.add_pod("bpfscope-other", "elsewhere", node="node-a", labels=dict(AGENT_LABELS),
                    containers={"agent": "e" * 64}, pod_ip="127.0.0.9", ports={"api": 1}, ready=True)
        api.add_pod("bpfscope-dx", "bpfscope", node="node-d", labels=dict(AGENT_LABELS),
                    containers={"agent": "f" * 64}, pod_ip="127.0.0.9", ports={"api": 1}, ready=False)
        env = {"KUBECONFIG": str(kubeconfig(tmp_path / "kubeconfig", api.url))}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        tokens = [a for n in nodes for a in ("--token-file", f"{n.name}={n.token_file}")]

        rc, out, err = finish(cluster(*tokens, "funclatency", "-d", "1", "--per-node", "--json", "syscall:getppid",
                                      env=env))
        assert rc == 4, err  # node-d's agent is not ready: reported, the others merged
        assert "node node-d: agent pod bpfscope/bpfscope-dx is not ready" in err
        (hs,) = [json.loads(x) for x in out.splitlines() if '"histograms"' in x]
        assert {h["key"] for h in hs["histograms"]} == set(NODES)
        lists = api.list_requests()
        assert lists and all(r["path"] == "/api/v1/namespaces/bpfscope/pods" for r in lists)
        assert lists[-1]["query"]["labelSelector"] == ",".join(f"{k}={v}" for k, v in AGENT_LABELS.items())

        # --nodes picks agents by node name; a node without an agent is reported
        rc, out, err = finish(cluster(*tokens, "--nodes", "node-b,node-x", "funclatency", "-d", "1", "--per-node",
                                      "--json", "syscall:getppid", env=env))
        assert rc == 4, err
        assert "node node-x: no bpfscope agent found on this node" in err
        (hs,) = [json.loads(x) for x in out.splitlines() if '"histograms"' in x]
        assert [h["key"] for h in hs["histograms"]] == ["node-b"]

        # agents in another namespace / with another label: found with the cluster options
        rc, out, err = finish(cluster("--agent-namespace", "nothing-here", "execsnoop", "-d", "1", env=env))
        assert rc == 1 and "no bpfscope agent pods in namespace nothing-here" in err, err

    # the API server is gone: one line
    rc, out, err = finish(cluster("execsnoop", "-d", "1", env=env))
    assert rc == 1 and "cannot reach the Kubernetes API" in err and "Traceback" not in err, err


def test_interrupt_cancels_every_node_run_and_merges_what_they_had(nodes):
    since = time.time() - 0.5
    proc = cluster(*agent_args(nodes), "profile", "-F", "49", "-f")  # no duration: until Ctrl-C
    wait_attached_everywhere(nodes, "profile", since)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rc, out, err = finish(proc, timeout=60)
    assert rc == 0, err
    for n in nodes:
        (run,) = runs_of(n, "profile", since)
        assert run["state"] == "cancelled", run
    assert folded(out)


def test_cluster_help_lists_the_cluster_options():
    r = subprocess.run([sys.executable, "-m", "bpfscope", "cluster", "profile", "--help"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0
    for flag in ("--agents", "--nodes", "--token-file", "--node-frame", "--per-node", "-F"):
        assert flag in r.stdout
