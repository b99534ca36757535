"""execcount (the agent's exec collector as a tool), the cgroup filter every tool can use
(--cgroup/--namespace/--pod/--selector -> ancestor check in BPF), pod filters through the
API-server double, and the hook that turns an event tool (shellwatch) into a collector."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from tests.helpers import ToolProcess
from tests.k8s_double import ApiServerDouble
from tests.netpeers import PodCgroups, exchange

pytestmark = pytest.mark.bpf
READY_TIMEOUT = 60.0  # seconds; start-up takes far longer in the kernel-matrix VM (TCG) than here

RUNNER = r"""
import subprocess, sys
print("up", flush=True)  # our own exec is over: moving us now cannot count it in the cgroup
sys.stdin.readline()  # in its cgroup now
for _ in range(int(sys.argv[2])):
    subprocess.run([sys.argv[1]], check=True)
"""


@pytest.fixture
def cgs():
    t = PodCgroups("bpfscope-filter")
    try:
        yield t
    finally:
        t.cleanup()


def unique_binary(tmp_path, prefix: str = "bx") -> tuple[str, str]:
    """A copy of /bin/true with a unique 15-character name: (path, comm)."""
    comm = prefix + uuid.uuid4().hex[: 15 - len(prefix)]
    exe = tmp_path / comm
    shutil.copy("/bin/true", exe)
    return str(exe), comm


def exec_in(cgroup_fs: str | None, exe: str, n: int) -> None:
    """Exec `exe` n times from a process inside cgroup_fs (None: the test's own cgroup)."""
    p = subprocess.Popen([sys.executable, "-c", RUNNER, exe, str(n)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    # Popen returns once the child's exec has begun, before the kernel's exec tracepoint: wait
    # for the runner to be up, or its own exec may land in the cgroup it is moved to
    assert p.stdout.readline() == "up\n"
    if cgroup_fs:
        with open(os.path.join(cgroup_fs, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
    p.communicate("go\n", timeout=60)
    assert p.returncode == 0


def exec_totals(tool: ToolProcess) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in tool.json_lines():
        for row in rec.get("rows", []):
            out[row["comm"]] = out.get(row["comm"], 0) + row["execs"]
    return out


def test_execcount_counts_each_exec(tmp_path):
    exe, comm = unique_binary(tmp_path)
    tool = ToolProcess("execcount", "--json", "-i", "0.2", "--top", "10000").ready(READY_TIMEOUT)
    exec_in(None, exe, 5)
    time.sleep(0.3)
    exec_in(None, exe, 2)
    time.sleep(0.3)
    tool.stop()
    assert exec_totals(tool)[comm] == 7
    assert "raw_tp mode" in tool.stderr


def test_cgroup_filter_selects_subtree_in_bpf(cgs, tmp_path):
    inside = cgs.make("app/worker")  # a cgroup below the selected one
    outside = cgs.make("elsewhere")
    exe_in, comm_in = unique_binary(tmp_path, "in")
    exe_out, comm_out = unique_binary(tmp_path, "out")
    tool = ToolProcess("execcount", "--json", "-i", "0.2", "--top", "10000", "--cgroup", cgs.top + "/app").ready(READY_TIMEOUT)
    exec_in(cgs.fs(inside), exe_in, 3)
    exec_in(cgs.fs(outside), exe_out, 2)
    exec_in(None, exe_out, 2)
    time.sleep(0.3)
    tool.stop()
    got = exec_totals(tool)
    assert got.get(comm_in) == 3
    assert comm_out not in got
    assert f"only cgroup {cgs.top}/app" in tool.stderr


def kube_env(api: ApiServerDouble, tmp_path, node: str) -> dict[str, str]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        clusters: [{{name: c, cluster: {{server: "{api.url}"}}}}]
        users: [{{name: u, user: {{token: t}}}}]
        contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
        current-context: x
        """))
    return {"KUBECONFIG": str(kubeconfig), "NODE_NAME": node}


@pytest.fixture
def no_incluster(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_namespace_and_selector_filters(cgs, tmp_path, no_incluster):
    node = f"node-{uuid.uuid4().hex[:6]}"
    uid_ci, uid_prod = str(uuid.uuid4()), str(uuid.uuid4())
    cid_ci, cid_prod = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    ci = cgs.make(f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_ci.replace('-', '_')}.slice/"
                  f"cri-containerd-{cid_ci}.scope")
    prod = cgs.make(f"kubepods/pod{uid_prod}/{cid_prod}")
    exe_ci, comm_ci = unique_binary(tmp_path, "ci")
    exe_prod, comm_prod = unique_binary(tmp_path, "pr")
    with ApiServerDouble() as api:
        api.add_pod("build-1", "ci", uid=uid_ci, node=node, labels={"app": "build"}, containers={"runner": cid_ci})
        api.add_pod("web-1", "prod", uid=uid_prod, node=node, labels={"app": "web"}, containers={"nginx": cid_prod})
        env = kube_env(api, tmp_path, node)
        by_ns = ToolProcess("execcount", "--json", "-i", "0.2", "--top", "10000", "--namespace", "ci", env=env).ready(READY_TIMEOUT)
        by_sel = ToolProcess("execcount", "--json", "-i", "0.2", "--top", "10000", "--selector", "app in (web)",
                             env=env).ready(READY_TIMEOUT)
        exec_in(cgs.fs(ci), exe_ci, 2)
        exec_in(cgs.fs(prod), exe_prod, 3)
        time.sleep(0.3)
        by_ns.stop()
        by_sel.stop()
        assert exec_totals(by_ns) == {comm_ci: 2}
        assert exec_totals(by_sel) == {comm_prod: 3}
        assert "pods matching namespace=ci (1 cgroup)" in by_ns.stderr
        # cgnet: pod names in rows with --kubernetes, pod filter in user space
        a, b = cgs.peer(ci), cgs.peer(prod)
        tool = ToolProcess("cgnet", "--json", "-i", "0.2", "--pod", "web-1", "--kubernetes", env=env).ready(READY_TIMEOUT)
        exchange(a, b, 100_000, 20_000)
        time.sleep(0.3)
        tool.stop()
        rows = [r for rec in tool.json_lines() for r in rec.get("rows", [])]
        assert rows and {(r["namespace"], r["pod"], r["container"], r["cgroup"]) for r in rows} == {
            ("prod", "web-1", "nginx", prod)}
        assert sum(r["rx_bytes"] for r in rows) > 100_000
        # no pod matches: one clear line
        r = subprocess.run([sys.executable, "-m", "bpfscope", "execcount", "--namespace", "nope", "-d", "0.1"],
                           capture_output=True, text=True, env=dict(os.environ, **env), timeout=60)
        assert r.returncode == 1 and "no running pod on node" in r.stderr and r.stderr.count("\n") == 1


def test_pod_filter_without_api_access_is_one_line(tmp_path, no_incluster):
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "missing"), NODE_NAME="n")
    r = subprocess.run([sys.executable, "-m", "bpfscope", "cgnet", "--namespace", "x", "-d", "0.1"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "Kubernetes API" in r.stderr and "Traceback" not in r.stderr


def test_event_tool_as_collector_shellwatch_hook():
    """ToolThreadCollector: shellwatch's run() in a thread, its alert counters on /metrics."""
    from bpfscope.agent.collector import ToolThreadCollector
    from bpfscope.tools._sinks import METRICS
    from bpfscope.tools.shellwatch import Shellwatch

    class ShellwatchCollector(ToolThreadCollector):
        name = "shellwatch"
        tool = Shellwatch
        metrics = METRICS

    col = ShellwatchCollector()
    col.start()
    try:
        assert col.mode == "tracepoint"
        before = METRICS.value("bpfscope_shellwatch_alerts_total")
        pid, fd = pty.fork()  # a login shell leading a session on a new terminal
        if pid == 0:
            os.execv("/bin/bash", ["-bash", "-c", "exit 0"])
        while True:
            try:
                if not os.read(fd, 1024):
                    break
            except OSError:
                break
        os.close(fd)
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 5
        while METRICS.value("bpfscope_shellwatch_alerts_total") == before and time.monotonic() < deadline:
            time.sleep(0.05)
        fams = {f.name: f for f in col.collect()}
        total = sum(s.value for s in fams["bpfscope_shellwatch_alerts"].samples)
        assert total >= before + 1
    finally:
        col.close()


def test_execs_collector_bounded_top_n_plus_other(cgs, tmp_path):
    """top=2: the two busiest new comms get series, a third counts in "other"; nothing goes down.
    (Restricted to a test cgroup so other work on the machine cannot take the slots.)"""
    from bpfscope.tools.execcount import ExecsCollector

    cg = cgs.make("execs")
    col = ExecsCollector({"top": 2, "cgroup": cg})
    col.start()
    try:
        (a, ca), (b, cb), (c, cc) = (unique_binary(tmp_path, p) for p in ("xa", "xb", "xc"))
        exec_in(cgs.fs(cg), a, 4)
        exec_in(cgs.fs(cg), b, 3)
        exec_in(cgs.fs(cg), c, 1)
        exec_in(None, c, 9)  # outside the cgroup: not counted
        s1 = col.series()
        assert s1 == {ca: 4, cb: 3, "other": 1}
        exec_in(cgs.fs(cg), c, 5)
        exec_in(cgs.fs(cg), a, 1)
        s2 = col.series()
        assert s2 == {ca: 5, cb: 3, "other": 6}, "no slot is freed: cardinality stays bounded"
        fams = {f.name: f for f in col.collect()}
        assert {s.labels["comm"] for s in fams["bpfscope_execs"].samples} == {ca, cb, "other"}
    finally:
        col.close()
