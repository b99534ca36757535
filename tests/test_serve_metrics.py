"""`bpfscope serve` for real: a subprocess on a free loopback port, scraped with httpx, parsed with
prometheus_client's own parser. Traffic between cgroups that mimic pods, execs of a binary with a
unique name, pods from the API-server double."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, ToolProcess, run_cli
from tests.k8s_double import ApiServerDouble
from tests.netpeers import TCP_IPV4_HEADER, PodCgroups, exchange
from tests.test_cgnet import (
    BURSTABLE,
    CID_B,
    CID_G,
    GUARANTEED,
    UID_B,
    UID_G,
    assert_released,
    prog_ids_of,
    within,
)

pytestmark = pytest.mark.bpf

RX, TX = "bpfscope_cgroup_network_receive_bytes_total", "bpfscope_cgroup_network_transmit_bytes_total"
RXP, TXP = "bpfscope_cgroup_network_receive_packets_total", "bpfscope_cgroup_network_transmit_packets_total"


class Agent:
    """A `bpfscope serve` subprocess; url read from the ready file it writes once it listens."""

    def __init__(self, *args: str, env: dict | None = None):
        self.tool = ToolProcess("serve", "--listen", "127.0.0.1:0", *args, env=env).ready(90)
        with open(self.tool.ready_file) as f:
            self.url = f.read().split()[1]
        self.client = httpx.Client(base_url=self.url, timeout=20)

    def scrape(self, **kw) -> dict[tuple[str, tuple], float]:
        """(sample name, sorted labels) -> value, through prometheus_client's parser."""
        r = self.client.get("/metrics", **kw)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        out = {}
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in out, f"duplicate series {key}"
                out[key] = s.value
        return out

    def stop(self, sig: int = signal.SIGTERM) -> float:
        self.client.close()
        return self.tool.stop(sig, timeout=20)


def series(m: dict, name: str, **labels: str) -> dict[tuple, float]:
    return {k: v for k, v in m.items() if k[0] == name and all(dict(k[1]).get(a) == b for a, b in labels.items())}


def value(m: dict, name: str, **labels: str) -> float:
    got = series(m, name, **labels)
    assert len(got) == 1, f"{name} {labels}: {len(got)} series"
    return next(iter(got.values()))


def assert_monotonic(scrapes: list[dict]) -> None:
    """Every counter sample (…_total) present in two consecutive scrapes did not go down."""
    for before, after in zip(scrapes, scrapes[1:], strict=False):
        for key, v in before.items():
            if key[0].endswith("_total") and key in after:
                assert after[key] >= v, f"{key} went from {v} to {after[key]}"


@pytest.fixture
def pods():
    t = PodCgroups("bpfscope-serve")
    try:
        yield t
    finally:
        t.cleanup()


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text('collectors = ["cgnet", "execs"]\n[execs]\ntop = 1000\n[cgnet]\nretention = 0\n')
    return str(p)


def exec_many(tmp_path, n: int) -> str:
    """Run a copy of /bin/true with a unique 15-character name n times; its comm."""
    comm = "bx" + uuid.uuid4().hex[:13]
    exe = tmp_path / comm
    shutil.copy("/bin/true", exe)
    for _ in range(n):
        subprocess.run([str(exe)], check=True)
    return comm


def test_metrics_labels_values_and_three_monotonic_scrapes(pods, config, tmp_path):
    a_cg, b_cg = pods.make(BURSTABLE), pods.make(GUARANTEED)
    agent = Agent("--config", config)
    try:
        a, b = pods.peer(a_cg), pods.peer(b_cg)
        sent_ab = sent_ba = re_ab = re_ba = 0
        scrapes = []
        comm = None
        for i, (n_ab, n_ba) in enumerate([(1_000_000, 300_000), (700_000, 0), (0, 900_000)]):
            r_ab, r_ba = exchange(a, b, n_ab, n_ba)
            sent_ab, sent_ba, re_ab, re_ba = sent_ab + n_ab, sent_ba + n_ba, re_ab + r_ab, re_ba + r_ba
            comm = comm or exec_many(tmp_path, 7)
            if i == 2:
                subprocess.run([str(tmp_path / comm)], check=True)  # one more: 8 in all
            time.sleep(0.1)
            m = agent.scrape()
            scrapes.append(m)
            for cg, cid, tx, rx, re_tx, re_rx in ((a_cg, CID_B, sent_ab, sent_ba, re_ab, re_ba),
                                                  (b_cg, CID_G, sent_ba, sent_ab, re_ba, re_ab)):
                labels = dict(cgroup=cg, namespace="", pod="", container=cid)
                txb, txp = value(m, TX, **labels), value(m, TXP, **labels)
                rxb, rxp = value(m, RX, **labels), value(m, RXP, **labels)
                assert within(txb, tx + re_tx + TCP_IPV4_HEADER * txp, 0.02), (i, cg, txb, tx)
                low = rx + TCP_IPV4_HEADER * rxp
                assert low * 0.98 <= rxb <= (low + re_rx) * 1.02, (i, cg, rxb, rx)
                assert txp > 0 and rxp > 0
        assert_monotonic(scrapes)
        # no other cgroup under the test's top is charged (pod parents, the top itself)
        charged = {dict(k[1])["cgroup"] for k in series(scrapes[-1], TX) if dict(k[1])["cgroup"].startswith(pods.top)}
        assert charged == {a_cg, b_cg}
        # execs by comm: exact counts
        assert [value(s, "bpfscope_execs_total", comm=comm) for s in scrapes] == [7, 7, 8]
        assert value(scrapes[-1], "bpfscope_execs_total", comm="other") >= 0
        # self-metrics
        last = scrapes[-1]
        assert value(last, "bpfscope_collector_up", collector="cgnet") == 1
        assert value(last, "bpfscope_collector_up", collector="execs") == 1
        assert value(last, "bpfscope_collector_lost_events_total", collector="cgnet") == 0
        assert value(last, "bpfscope_bpf_program_runs_total", collector="cgnet", program="cgnet_egress") > 0
        assert value(last, "bpfscope_bpf_program_runs_total", collector="execs", program="execcount_exec") >= 8
        assert value(last, "bpfscope_bpf_stats_enabled") == 1
        assert value(last, "bpfscope_bpf_program_run_seconds_total", collector="cgnet", program="cgnet_egress") > 0
        assert value(last, "bpfscope_scrape_duration_seconds_count") == 2  # the two scrapes before this one
        assert value(last, "bpfscope_collector_scrape_duration_seconds", collector="cgnet") > 0
    finally:
        agent.stop()


def test_removed_and_recreated_cgroup_never_goes_backwards(pods, config):
    """A removed cgroup keeps its final value for one more scrape, then its series goes; a cgroup
    recreated under the same path (new id, like a restarted service) continues the series."""
    gone_cg, keep_cg, same_cg = pods.make("gone"), pods.make("keep"), pods.make("restarted.service")
    agent = Agent("--config", config)
    try:
        gone, keep, same = pods.peer(gone_cg), pods.peer(keep_cg), pods.peer(same_cg)
        exchange(gone, keep, 200_000, 0)
        exchange(same, keep, 300_000, 0)
        s1 = agent.scrape()
        v_gone = value(s1, TX, cgroup=gone_cg)
        v_same = value(s1, TX, cgroup=same_cg)
        for p in (gone, same):
            p.close()
            pods.peers.remove(p)
        pods.remove(gone_cg)
        pods.remove(same_cg)
        same_cg2 = pods.make("restarted.service")
        same2 = pods.peer(same_cg2)
        exchange(same2, keep, 100_000, 0)
        s2 = agent.scrape()
        assert value(s2, TX, cgroup=gone_cg) >= v_gone  # reported once more, final value
        assert value(s2, TX, cgroup=same_cg) >= v_same + 100_000
        s3 = agent.scrape()
        assert not series(s3, TX, cgroup=gone_cg), "removed cgroup still exported"
        assert value(s3, TX, cgroup=same_cg) >= value(s2, TX, cgroup=same_cg)
        exchange(same2, keep, 50_000, 0)
        s4 = agent.scrape()
        assert value(s4, TX, cgroup=same_cg) >= value(s3, TX, cgroup=same_cg) + 50_000
        assert value(s4, "bpfscope_cgnet_removed_cgroups_total") >= 2
        assert_monotonic([s1, s2, s3, s4])
    finally:
        agent.stop()


def test_pod_labels_from_the_api_server(pods, tmp_path):
    a_cg, b_cg = pods.make(BURSTABLE), pods.make(GUARANTEED)
    with ApiServerDouble() as api:
        api.add_pod("web-0", "shop", uid=UID_B, node="node-t", labels={"app": "web"}, containers={"nginx": CID_B})
        api.add_pod("db-0", "shop", uid=UID_G, node="node-t", qos="Guaranteed", containers={"postgres": CID_G})
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Config
            clusters: [{{name: c, cluster: {{server: "{api.url}"}}}}]
            users: [{{name: u, user: {{token: t}}}}]
            contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
            current-context: x
            """))
        env = {"KUBECONFIG": str(kubeconfig), "NODE_NAME": "node-t"}
        saved = os.environ.pop("KUBERNETES_SERVICE_HOST", None)
        try:
            agent = Agent("--collectors", "cgnet", "--kubernetes", env=env)
        finally:
            if saved is not None:
                os.environ["KUBERNETES_SERVICE_HOST"] = saved
        try:
            assert agent.client.get("/readyz").json()["ready"] is True
            a, b = pods.peer(a_cg), pods.peer(b_cg)
            exchange(a, b, 100_000, 50_000)
            m = agent.scrape()
            assert value(m, TX, cgroup=a_cg, namespace="shop", pod="web-0", container="nginx") > 100_000
            assert value(m, TX, cgroup=b_cg, namespace="shop", pod="db-0", container="postgres") > 50_000
            assert value(m, "bpfscope_kubernetes_synced") == 1
        finally:
            agent.stop()


def test_token_required_and_checked(tmp_path):
    r = run_cli("serve", "--listen", "0.0.0.0:0", "--collectors", "execs")
    assert r.returncode == 2 and "non-loopback" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("serve", "--listen", "[::]:0", "--collectors", "execs")
    assert r.returncode == 2 and "--token-file" in r.stderr
    token = uuid.uuid4().hex
    tf = tmp_path / "token"
    tf.write_text(token + "\n")
    agent = Agent("--collectors", "execs", "--token-file", str(tf))
    try:
        assert agent.client.get("/metrics").status_code == 401
        assert agent.client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456"}).status_code == 401
        assert agent.client.get("/api/v1/collectors").status_code == 401
        assert agent.client.get("/healthz").status_code == 200  # probes stay open
        m = agent.scrape(headers={"Authorization": f"Bearer {token}"})
        assert value(m, "bpfscope_collector_up", collector="execs") == 1
    finally:
        agent.stop()
    tf.write_text("short")
    r = run_cli("serve", "--token-file", str(tf))
    assert r.returncode == 2 and "16 characters" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_releases_programs_and_bpf_stats(sig):
    before = open("/proc/sys/kernel/bpf_stats_enabled").read()
    agent = Agent("--collectors", "cgnet,execs")
    mine = prog_ids_of(agent.tool.proc.pid)
    assert len(mine) == 4  # cgnet: ingress, egress, rmdir; execs: one
    took = agent.stop(sig)
    assert agent.tool.proc.returncode == 0, agent.tool.stderr
    assert "Traceback" not in agent.tool.stderr
    assert took < 5
    assert_released(mine)
    assert open("/proc/sys/kernel/bpf_stats_enabled").read() == before


BAD_CONFIGS = [
    ("collectors = ['nope']\n", ".toml", "unknown collector"),
    ("listen = 9440\n", ".toml", "listen"),
    ("listen = '127.0.0.1'\n", ".toml", "HOST:PORT"),
    ("bogus = 1\n", ".toml", "unknown key"),
    ("kubernetes = 'yes'\n", ".toml", "true or false"),
    ("[execs]\ntop = 'many'\n", ".toml", "top"),
    ("[execs]\ntop = 0\n", ".toml", "minimum"),
    ("[execs]\ntopp = 3\n", ".toml", "unknown option"),
    ("collectors = [\n", ".toml", "config file"),
    ("collectors: [execs]\nexecs: {top: true}\n", ".yaml", "top"),
    ("- a\n", ".yml", "top level"),
]


@pytest.mark.parametrize("content,suffix,needle", BAD_CONFIGS)
def test_bad_config_is_refused(tmp_path, content, suffix, needle):
    from bpfscope.agent.config import from_sources, load_file
    from bpfscope.agent.metrics import available_collectors
    from bpfscope.errors import UsageError

    p = tmp_path / f"agent{suffix}"
    p.write_text(content)
    available = available_collectors()
    with pytest.raises(UsageError, match=needle):
        cfg = from_sources(load_file(str(p)), {}, set(available))
        for name, table in cfg.settings.items():
            available[name](table)  # settings validated strictly, as over REST


@pytest.mark.parametrize("content,suffix,needle", [BAD_CONFIGS[0], BAD_CONFIGS[6], BAD_CONFIGS[8]])
def test_bad_config_is_one_clear_line(tmp_path, content, suffix, needle):
    p = tmp_path / f"agent{suffix}"
    p.write_text(content)
    r = run_cli("serve", "--config", str(p))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_yaml_config_and_flags_override(tmp_path):
    p = tmp_path / "agent.yaml"
    p.write_text("listen: 127.0.0.1:1\ncollectors: [cgnet]\nexecs: {top: 5}\n")
    agent = Agent("--config", str(p), "--collectors", "execs")  # --listen and --collectors win
    try:
        ready = agent.client.get("/readyz").json()
        assert ready == {"ready": True, "collectors": {"execs": "raw_tp"}, "failed": {}}
    finally:
        agent.stop()


def test_cli_path_does_not_import_agent_dependencies():
    code = ("import sys; from bpfscope import registry; from bpfscope.cli import tool_parser\n"
            "for n in registry.builtin_names():\n"
            "    try: tool_parser(registry.get(n))\n"
            "    except Exception: pass\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn', 'prometheus_client',"
            " 'starlette', 'kubernetes', 'httpx', 'yaml'})\n"
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def login_shell_on_a_pty() -> None:
    import pty

    pid, fd = pty.fork()  # a login shell leading a session on a new terminal: shellwatch alerts
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


def test_vfs_and_shellwatch_collectors(tmp_path):
    agent = Agent("--collectors", "vfs,shellwatch")
    try:
        s1 = agent.scrape()
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
        for _ in range(300):
            os.write(fd, b"x")
        os.fsync(fd)
        os.close(fd)
        login_shell_on_a_pty()
        time.sleep(0.3)
        s2 = agent.scrape()
        assert value(s2, "bpfscope_collector_up", collector="vfs", mode="syscall") == 1  # no fentry/kprobe here
        op = "bpfscope_vfs_operations_total"
        assert value(s2, op, op="write") - value(s1, op, op="write") >= 300
        assert value(s2, op, op="fsync") - value(s1, op, op="fsync") >= 1
        assert value(s2, op, op="create") - value(s1, op, op="create") >= 1
        assert sum(series(s2, "bpfscope_shellwatch_alerts_total").values()) >= 1
        assert value(s2, "bpfscope_collector_up", collector="shellwatch", mode="tracepoint") == 1
        assert_monotonic([s1, s2])
    finally:
        agent.stop()


@pytest.mark.kernelfunc
@pytest.mark.parametrize("mode", ["fentry", "kprobe"])
def test_vfs_collector_kernel_function_modes(tmp_path, mode):
    """Kernel-function hooks (the Debian 6.1 VM of the kernel matrix; not available here)."""
    from bpfscope.agent.collectors.vfsstat import VfsCollector

    col = VfsCollector({"mode": mode})
    col.start()
    try:
        assert col.mode == mode
        path = tmp_path / "f"
        path.write_bytes(b"x" * 10)
        before = col.totals()
        for _ in range(200):
            with open(path, "rb") as f:
                f.read()
        after = col.totals()
        assert after["read"] - before["read"] >= 200
        assert after["open"] - before["open"] >= 200
        fams = {f.name: f for f in col.collect()}
        assert {s.labels["op"] for s in fams["bpfscope_vfs_operations"].samples} >= {"read", "write", "open"}
    finally:
        col.close()
