"""shellwatch on the real kernel: interactive shells on ptys the test opens, non-interactive
shells it runs, a shell in a cgroup it creates, fake sshd parents it renames, and a webhook
server it starts and stops. Plus the rule and the sinks on data the test controls."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from bpfscope.bpf import mounts
from bpfscope.bpf.object import program_names
from bpfscope.errors import UsageError
from bpfscope.tools._sinks import AlertMetrics, CounterSink, LogFileSink, WebhookSink
from bpfscope.tools.shellwatch import Config, ContainerInfo, evaluate, is_login_shell, load_config
from tests.helpers import ToolProcess, programs_left, run_cli
from tests.pty_helpers import PtyShell, prog_ids_of

BASH = ("/bin/bash", "--norc", "--noprofile", "-i")
READY = 120  # seconds to attach: generous for the kernel matrix VM (qemu TCG is ~20x slower)


def alerts_of(tool: ToolProcess) -> list[dict]:
    return [r for r in tool.json_lines() if "alert" in r]


def summary_of(tool: ToolProcess) -> dict:
    return next(r for r in tool.json_lines() if r.get("type") == "summary")


def wait_for(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


# ------------------------------------------------------------------------------ real kernel

@pytest.mark.bpf
def test_interactive_shell_alerts_once_and_its_scripts_never(tmp_path):
    log = tmp_path / "alerts.jsonl"
    tool = ToolProcess("shellwatch", "--json", "--log", str(log)).ready(READY)
    with PtyShell(BASH) as sh:
        sh.wait_prompt()
        sh.run("bash -c 'sh -c true'")  # a script run from the interactive shell is not a login
        sh.run("sh -c 'sh -c true; true'")
        sh.run("bash --norc --noprofile -i -c true")
        sh.run("exec bash --norc --noprofile -i")  # the same process again: no second alert
        sh.run("echo still-here", expect="still-here")
        time.sleep(0.3)
    tool.stop()
    mine = [a for a in alerts_of(tool) if a["pid"] == sh.pid or sh.pid in [p["pid"] for p in a["parents"]]]
    assert len(mine) == 1, mine
    a = mine[0]
    assert a["alert"] == "shell" and a["pid"] == sh.pid and a["comm"] == "bash"
    assert "/dev/" + a["tty"] == sh.path
    assert a["uid"] == os.getuid() and a["user"] == "root"
    assert a["parents"][0]["pid"] == os.getpid()
    my_comm = Path("/proc/self/comm").read_text().strip()
    assert a["parent_chain"].startswith(f"{my_comm}({os.getpid()}) < ")
    assert a["session_leader"] is True and "session leader" in a["reasons"]
    assert a["sid"] == sh.pid and a["argv"] == list(BASH)
    assert a["container"] is False
    assert summary_of(tool)["duplicates_suppressed"] >= 1
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [x for x in logged if x["pid"] == sh.pid] == [a]  # the log file holds the same alert


@pytest.mark.bpf
def test_hundred_non_interactive_shells_raise_nothing():
    tool = ToolProcess("shellwatch", "--json").ready(READY)
    pids = set()
    for i in range(100):  # no tty at all (new session, no controlling terminal) half of the time
        p = subprocess.Popen(["sh", "-c", "true"], start_new_session=bool(i % 2))
        pids.add(p.pid)
        p.wait()
    time.sleep(0.3)
    tool.stop()
    got = [a for a in alerts_of(tool) if a["pid"] in pids]
    assert got == []
    assert summary_of(tool)["lost_events"] == 0


@pytest.mark.bpf
def test_shell_in_a_new_cgroup_is_tagged_container_like():
    cg = Path(mounts.cgroup2()) / f"bpfscope-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    cg_id = cg.stat().st_ino
    try:
        tool = ToolProcess("shellwatch", "--json").ready(READY)
        with PtyShell(BASH, cgroup_procs=str(cg / "cgroup.procs")) as sh:
            sh.wait_prompt()
            time.sleep(0.2)
        tool.stop()
    finally:
        wait_for(lambda: not (cg / "cgroup.procs").read_text().strip(), 5)
        cg.rmdir()
    a = next(a for a in alerts_of(tool) if a["pid"] == sh.pid)
    assert a["container"] is True
    assert a["cgroup"] == "/" + cg.name
    assert a["cgroup_id"] == cg_id


def _renamed(name: str, code: str) -> list[str]:
    """A python child whose comm is `name` (as sshd or login would show), running code."""
    prologue = f"import ctypes, os, sys; ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"
    return [sys.executable, "-c", prologue + code]


@pytest.mark.bpf
def test_shell_started_by_sshd_alerts_and_setsid_under_sshd_is_a_new_session():
    tool = ToolProcess("shellwatch", "--json").ready(READY)
    # "sshd" takes a pty as its controlling terminal, then runs a shell on it (not a session leader)
    code = (
        "import fcntl, termios, subprocess\n"
        "m, s = os.openpty(); os.setsid(); fcntl.ioctl(s, termios.TIOCSCTTY, 0)\n"
        "p = subprocess.Popen(['/bin/sh', '-c', 'exit 0'], stdin=s, stdout=s, stderr=s)\n"
        "print(p.pid, flush=True); p.wait()\n"
        "c = os.fork()\n"
        "if c == 0:\n"
        "    os.setsid(); os._exit(0)\n"
        "print(c, flush=True); os.waitpid(c, 0)\n"
    )
    out = subprocess.run(_renamed("sshd", code), capture_output=True, text=True, check=True).stdout.split()
    shell_pid, session_pid = int(out[0]), int(out[1])
    time.sleep(0.3)
    tool.stop()
    alerts = alerts_of(tool)
    shell = [a for a in alerts if a["pid"] == shell_pid]
    assert len(shell) == 1, alerts
    assert shell[0]["reasons"] == ["started by sshd"] and shell[0]["session_leader"] is False
    assert shell[0]["parents"][0]["comm"] == "sshd"
    session = [a for a in alerts if a["pid"] == session_pid]
    assert len(session) == 1 and session[0]["alert"] == "session"
    assert session[0]["reasons"] == ["new session under sshd"]


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def _server() -> tuple[http.server.HTTPServer, type[_Hook]]:
    handler = type("Hook", (_Hook,), {"received": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, handler


@pytest.mark.bpf
def test_webhook_delivers_then_retries_and_drops_while_server_is_down():
    srv, handler = _server()
    port = srv.server_address[1]
    tool = ToolProcess("shellwatch", "--json", "--webhook", f"http://127.0.0.1:{port}/hook",
                       "--webhook-timeout", "0.5", "--webhook-retries", "2", "--webhook-backoff", "0.05").ready(READY)
    with PtyShell(BASH) as up:
        up.wait_prompt()
        assert wait_for(lambda: any(r["pid"] == up.pid for r in handler.received), 10)
    srv.shutdown()
    srv.server_close()  # now the port refuses connections
    down_pids = []
    t0 = time.monotonic()
    for _ in range(2):
        with PtyShell(BASH) as down:
            down.wait_prompt()
            down_pids.append(down.pid)
    spawn_time = time.monotonic() - t0
    time.sleep(0.5)  # 3 attempts, 0.05 + 0.1 s apart, each refused at once
    tool.stop()
    alerts = {a["pid"]: a for a in alerts_of(tool)}
    delivered = [r for r in handler.received if r["pid"] == up.pid]
    assert delivered == [alerts[up.pid]]  # the POSTed JSON is the alert
    assert all(p in alerts for p in down_pids)  # tracing went on while the webhook failed
    assert spawn_time < 10
    s = summary_of(tool)
    assert s["webhook_delivered"] >= 1
    mine_dropped = s["webhook_dropped"]
    assert mine_dropped >= 2 and s["webhook_retries"] >= 4 and s["webhook_failed"] >= 2


# ------------------------------------------------------------------------------ the rule on data

def _ev(comm="bash", kind="shell", tty="pts/3", leader=False, argv=None, parents=()):
    return {"kind": kind, "comm": comm, "tty": tty, "session_leader": leader, "argv": argv or [comm],
            "parents": [{"pid": 100 + i, "comm": c, "same_tty": same} for i, (c, same) in enumerate(parents)]}


@pytest.mark.parametrize("ev,expected", [
    (_ev(leader=True, parents=[("python3", False)]), ["session leader"]),
    (_ev(argv=["-bash"], parents=[("sshd", False)], leader=True), ["session leader", "login shell", "started by sshd"]),
    (_ev(argv=["-bash"], parents=[("login", True)]), ["login shell", "started by login"]),
    (_ev(comm="sh", parents=[("su", True), ("bash", True)]), ["started by su"]),
    (_ev(comm="zsh", parents=[("sudo", True), ("bash", True)]), ["started by sudo"]),
    (_ev(comm="sh", leader=True, parents=[("runc:[2:INIT]", False), ("runc", False)]),
     ["session leader", "started by runc:[2:INIT]"]),
    (_ev(comm="ash", parents=[("containerd-shim", False)]), ["started by containerd-shim"]),
    (_ev(comm="bash", parents=[("conmon", False)]), ["started by conmon"]),
    (_ev(comm="fish", argv=["fish", "--login"], parents=[("tmux: server", False)]), ["login shell"]),
    # a shell inside an interactive shell on the same terminal: a script, not a login
    (_ev(comm="sh", parents=[("bash", True)]), None),
    (_ev(comm="bash", argv=["bash", "-l"], parents=[("bash", True)]), None),
    (_ev(comm="sh", leader=False, parents=[("python3", True)]), None),
    # no controlling terminal, or not a shell
    (_ev(comm="sh", tty=None, leader=True, parents=[("sshd", False)]), None),
    (_ev(comm="python3", leader=True, parents=[("sshd", False)]), None),
    # new sessions
    (_ev(kind="session", comm="sshd", tty=None, parents=[("sshd", False)]), ["new session under sshd"]),
    (_ev(kind="session", comm="cron", tty=None, parents=[("cron", False)]), None),
])
def test_rule(ev, expected):
    assert evaluate(ev, Config()) == expected


def test_rule_is_configurable(tmp_path):
    cfg_file = tmp_path / "sw.toml"
    cfg_file.write_text('shells = ["mysh"]\nlaunchers = ["gateway*"]\nsession_leader = false\n'
                        'host_cgroups = ["/machine.slice/*"]\n')
    cfg = load_config(str(cfg_file))
    assert evaluate(_ev(comm="bash", leader=True), cfg) is None  # bash is not a shell any more
    assert evaluate(_ev(comm="mysh", leader=True), cfg) is None  # leaders no longer alert
    assert evaluate(_ev(comm="mysh", parents=[("gatewayd", False)]), cfg) == ["started by gatewayd"]
    assert cfg.host_cgroups == ("/machine.slice/*",)


@pytest.mark.parametrize("text,needle", [
    ("shells = 'bash'", "list of strings"),
    ("nope = 1", "unknown key"),
    ("shells = ['a-very-long-name-beyond-15']", "process name"),
    ("session_leader = 'yes'", "true or false"),
    ("shells = [", "not valid TOML"),
    ("host_cgroups = ['relative']", "cgroup path"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UsageError, match=needle):
        load_config(str(f))
    r = run_cli("shellwatch", "--config", str(f), "-d", "0.1")
    assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("argv,login", [
    (["-bash"], True), (["bash", "-l"], True), (["bash", "-il"], True), (["zsh", "--login"], True),
    (["bash", "-c", "ls -l"], False), (["sh", "-c", "x", "-l"], False), (["bash", "script.sh", "-l"], False),
    (["bash", "-i"], False), (["bash"], False),
])
def test_login_shell_detection(argv, login):
    assert is_login_shell(argv) is login


def test_container_tagging_from_cgroup_paths():
    info = ContainerInfo(host_cgroups=("/machine.slice/*",))
    info.init_path = "/init.scope"
    cid = "a" * 64
    for path, container, want_id in [
        (f"/system.slice/docker-{cid}.scope", True, cid),
        (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{'1' * 8}_{'2' * 4}_{'3' * 4}_"
         f"{'4' * 4}_{'5' * 12}.slice/cri-containerd-{cid}.scope", True, cid),
        ("/user.slice/user-1000.slice/session-3.scope", False, None),
        ("/system.slice/sshd.service", False, None),
        ("/init.scope", False, None),
        ("/bpfscope-test-123", True, None),
        ("/machine.slice/vm1", False, None),  # host_cgroups in the config
    ]:
        info.cgroup_path = lambda _id, _pid, p=path: p  # what the resolver would return
        tag = info.tag(1, 1, 0, 0)  # namespaces unknown: the cgroup decides
        assert (tag["container"], tag["container_id"]) == (container, want_id), path
    info.cgroup_path = lambda _id, _pid: "/"
    info.init_ns = {"mnt": 4026531841, "pid": 4026531836}
    assert info.tag(1, 1, 4026531841, 4026531836)["container"] is False
    assert info.tag(1, 1, 4026532500, 4026531836)["container"] is True  # its own mount namespace
    assert info.tag(1, 1, 4026531841, 4026532501)["namespaces_differ"] == ["pid"]


# ------------------------------------------------------------------------------ sinks

def test_webhook_queue_is_bounded_and_never_blocks():
    """A server that accepts connections but never answers: the first alert hangs in the worker,
    one waits in the queue, the rest are dropped at once and counted."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    metrics = AlertMetrics()
    sink = WebhookSink(f"http://127.0.0.1:{lsock.getsockname()[1]}/", timeout=0.3, retries=0, queue_size=1,
                       metrics=metrics)
    try:
        sink.emit({"n": 0})
        assert wait_for(lambda: sink.queue.empty(), 2)  # the worker took it and is stuck in the POST
        t0 = time.monotonic()
        for n in range(1, 6):
            sink.emit({"n": n})
        assert time.monotonic() - t0 < 0.05  # emit() never waits
        assert sink.stats()["webhook_queue_full"] == 4
    finally:
        sink.close(drain=2)
        lsock.close()
    s = sink.stats()
    assert s["webhook_delivered"] == 0 and s["webhook_dropped"] == 6
    assert metrics.value("bpfscope_shellwatch_webhook_dropped_total") == 6
    assert metrics.value("bpfscope_shellwatch_webhook_dropped_total", reason="queue_full") == 4


def test_webhook_does_not_retry_a_refusal_but_retries_errors():
    codes = iter([500, 503, 204, 400])
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(next(codes))
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sink = WebhookSink(f"http://127.0.0.1:{srv.server_address[1]}/", timeout=1, retries=3, backoff=0.01,
                       metrics=AlertMetrics())
    sink.emit({"a": 1})  # 500, 503, then 204: delivered after 2 retries
    assert wait_for(lambda: sink.stats()["webhook_delivered"] == 1, 5)
    sink.emit({"a": 2})  # 400: final, not retried
    assert wait_for(lambda: sink.stats()["webhook_dropped"] == 1, 5)
    sink.close()
    srv.shutdown()
    srv.server_close()
    assert [x["a"] for x in seen] == [1, 1, 1, 2]
    assert sink.stats()["webhook_retries"] == 2


def test_log_sink_and_prometheus_counters(tmp_path):
    metrics = AlertMetrics()
    log = LogFileSink(str(tmp_path / "a.jsonl"), metrics)
    count = CounterSink(metrics)
    for a in ({"alert": "shell", "container": True, "pid": 1}, {"alert": "shell", "container": False, "pid": 2},
              {"alert": "session", "container": False, "pid": 3}):
        log.emit(a)
        count.emit(a)
    log.close()
    assert [json.loads(x)["pid"] for x in (tmp_path / "a.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert oct((tmp_path / "a.jsonl").stat().st_mode & 0o777) == "0o600"
    assert metrics.value("bpfscope_shellwatch_alerts_total") == 3
    assert metrics.value("bpfscope_shellwatch_alerts_total", kind="shell", container="true") == 1
    text = metrics.exposition()
    assert "# TYPE bpfscope_shellwatch_alerts_total counter" in text
    assert 'bpfscope_shellwatch_alerts_total{container="false",kind="session"} 1' in text


def test_bad_webhook_url_is_one_clear_error():
    r = run_cli("shellwatch", "--webhook", "ftp://example.com/x", "-d", "0.1")
    assert r.returncode == 2 and "webhook" in r.stderr and "Traceback" not in r.stderr



@pytest.mark.bpf
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_and_releases_programs(sig):
    srv, _handler = _server()
    tool = ToolProcess("shellwatch", "--webhook", f"http://127.0.0.1:{srv.server_address[1]}/").ready(READY)
    during = prog_ids_of(tool.proc.pid)
    assert set(program_names(during).values()) == {"tp_exec", "tp_setsid"}
    took = tool.stop(sig)
    srv.shutdown()
    srv.server_close()
    assert tool.proc.returncode == 0 and "Traceback" not in tool.stderr
    assert took < 3.0
    assert not programs_left(during)
