"""The agent's REST API on a real uvicorn with a real HTTP client: tools run for real on this
kernel while the tests generate the work, and what the API reports is compared with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from bpfscope.bpf.object import program_names
from bpfscope.options import json_schema
from bpfscope.registry import get
from tests.agent_helpers import Agent, owned_program_ids, sse_events, wait_attached, wait_gone, wait_state
from tests.helpers import build_c

pytestmark = pytest.mark.bpf

SPIN_C = r"""
#include <signal.h>
#include <unistd.h>
volatile unsigned long sink;
__attribute__((noinline)) void %(name)s(void) { for (;;) { for (int i = 0; i < 1000; i++) sink += i; } }
int main(void) { %(name)s(); return 0; }
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    with Agent("--collectors", "execs", "--max-events", "100", "--sse-heartbeat", "0.5", log=log) as a:
        a.ready()
        yield a


@pytest.fixture
def client(agent):
    with agent.client() as c:
        yield c


def _start(client: httpx.Client, tool: str, options: dict | None = None, duration: float = 20.0,
           wait: bool = False) -> dict:
    r = client.post("/api/v1/runs", params={"wait": "true"} if wait else None,
                    json={"tool": tool, "options": options or {}, "duration": duration})
    assert r.status_code in (200, 202), r.text
    return r.json()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spin(tmp_path: Path, name: str) -> subprocess.Popen:
    exe = build_c(SPIN_C % {"name": name}, tmp_path / name)
    return subprocess.Popen([str(exe)])


# ------------------------------------------------------------------------------- tools
def test_tools_list_every_registered_tool_with_schema_and_mode(client):
    r = client.get("/api/v1/tools")
    assert r.status_code == 200
    tools = {t["name"]: t for t in r.json()["tools"]}
    assert {"execsnoop", "opensnoop", "profile"} <= set(tools)
    ex = tools["execsnoop"]
    want = json_schema(get("execsnoop").options)
    del want["properties"]["duration"]  # duration is capped by the agent: compared below
    got = dict(ex["options"], properties={k: v for k, v in ex["options"]["properties"].items() if k != "duration"})
    assert got == want
    assert ex["options"]["properties"]["duration"]["maximum"] == 300  # the agent's default max duration
    assert ex["modes"] == [{"target": "", "usable": True, "mode": ex["modes"][0]["mode"], "reason": None}]
    assert ex["modes"][0]["mode"].startswith("tracepoint")
    assert ex["streaming"] is True and ex["formats"] == ["json", "text"]
    assert tools["profile"]["formats"] == ["json", "text", "folded", "svg", "pprof", "speedscope"]


def test_doctor(client):
    rep = client.get("/api/v1/doctor").json()
    assert rep["features"]["tracepoint"]["available"] is True
    assert rep["features"]["kprobe"]["available"] is False  # not built on this kernel
    assert rep["tools"]["execsnoop"][0]["usable"] is True


def test_openapi_published(client):
    for path in ("/openapi.json", "/api/v1/openapi.json"):
        doc = client.get(path).json()
        assert "/api/v1/runs" in doc["paths"] and "/api/v1/runs/{run_id}/events" in doc["paths"]
    body = doc["paths"]["/api/v1/runs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    names = {alt["properties"]["tool"]["const"] for alt in body["oneOf"]}
    assert {"execsnoop", "profile"} <= names  # the body schema grows with the registry


# ------------------------------------------------------------------------ event stream
def test_execsnoop_over_sse_sees_each_spawned_process(client, agent):
    run = _start(client, "execsnoop", {"ppid": os.getpid()}, duration=30)
    assert run["state"] in ("pending", "running") and run["tool"] == "execsnoop"
    assert wait_attached(client, run["id"])["attached"]
    tag = uuid.uuid4().hex[:10]
    got: list[dict] = []
    all_seen = threading.Event()
    kinds: list[str] = []

    def reader() -> None:
        with agent.client(timeout=httpx.Timeout(30.0)) as c, c.stream("GET", f"/api/v1/runs/{run['id']}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for ev in sse_events(r):
                kinds.append(ev["event"])
                if ev["event"] == "event" and tag in " ".join(ev["data"]["argv"]):
                    got.append(ev)
                    if len(got) == 30:
                        all_seen.set()
                if ev["event"] == "end":
                    return

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        subprocess.run(["/bin/true", f"{tag}-{i}"], check=True)
    assert all_seen.wait(20), f"saw {len(got)} of 30 execs over SSE"
    assert client.get(f"/api/v1/runs/{run['id']}").json()["state"] == "running"  # seen live, not at the end
    final = client.delete(f"/api/v1/runs/{run['id']}").json()
    t.join(20)
    assert not t.is_alive()
    assert final["state"] == "cancelled" and final["lost_events"] == 0 and final["mode"] == "tracepoint"
    assert [e["data"]["argv"][1] for e in got] == [f"{tag}-{i}" for i in range(30)]
    assert all(e["data"]["ppid"] == os.getpid() and e["data"]["retval"] == 0 for e in got)
    ids = [int(e["id"]) for e in got]
    assert ids == sorted(ids) and len(set(ids)) == 30
    assert kinds[-1] == "end"
    # the same events as a result, in JSON and in BCC's text
    res = client.get(f"/api/v1/runs/{run['id']}/result", params={"format": "json"}).json()
    assert [e["argv"][1] for e in res["events"] if tag in " ".join(e["argv"])] == [f"{tag}-{i}" for i in range(30)]
    text = client.get(f"/api/v1/runs/{run['id']}/result", params={"format": "text"}).text
    assert text.splitlines()[0].split() == ["PCOMM", "PID", "PPID", "RET", "ARGS"]
    assert sum(tag in line for line in text.splitlines()) == 30


def test_sse_resume_with_last_event_id(client, agent):
    run = _start(client, "execsnoop", {"ppid": os.getpid()}, duration=30)
    wait_attached(client, run["id"])
    tag = uuid.uuid4().hex[:10]
    for i in range(20):
        subprocess.run(["/bin/true", f"{tag}-{i}"], check=True)
    deadline = time.monotonic() + 10
    while client.get(f"/api/v1/runs/{run['id']}").json()["events"] < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.delete(f"/api/v1/runs/{run['id']}")
    with client.stream("GET", f"/api/v1/runs/{run['id']}/events") as r:
        first = [e for e in sse_events(r) if e["event"] == "event"]
    assert [e["data"]["argv"][1] for e in first] == [f"{tag}-{i}" for i in range(20)]
    resume_after = first[9]["id"]
    with client.stream("GET", f"/api/v1/runs/{run['id']}/events", headers={"Last-Event-ID": resume_after}) as r:
        rest = list(sse_events(r))
    events = [e for e in rest if e["event"] == "event"]
    assert [e["data"]["argv"][1] for e in events] == [f"{tag}-{i}" for i in range(10, 20)]
    assert rest[-1]["event"] == "end" and rest[-1]["data"]["state"] == "cancelled"
    assert not [e for e in rest if e["event"] == "lost"]


def test_slow_client_is_told_what_it_lost_and_tracing_loses_nothing(client, agent):
    """The agent buffers 100 events per run (--max-events 100). A client that comes back after
    250 execs gets 'lost 150' and the last 100; the run itself lost nothing."""
    run = _start(client, "execsnoop", {"ppid": os.getpid()}, duration=60)
    wait_attached(client, run["id"])
    tag = uuid.uuid4().hex[:10]
    with client.stream("GET", f"/api/v1/runs/{run['id']}/events") as r:  # a client that stops reading
        it = sse_events(r)
        subprocess.run(["/bin/true", f"{tag}-first"], check=True)
        ev = next(e for e in it if e["event"] == "event")
        assert ev["data"]["argv"][1] == f"{tag}-first"
        seen_id = int(ev["id"])
        for i in range(250):
            subprocess.run(["/bin/true", f"{tag}-{i}"], check=True)
        deadline = time.monotonic() + 10
        while client.get(f"/api/v1/runs/{run['id']}").json()["events"] < 251 and time.monotonic() < deadline:
            time.sleep(0.05)
    # it reconnects where it stopped
    with agent.client() as c, c.stream("GET", f"/api/v1/runs/{run['id']}/events",
                                       headers={"Last-Event-ID": str(seen_id)}) as r:
        got: list[dict] = []
        for e in sse_events(r):
            got.append(e)
            if sum(x["event"] == "event" for x in got) == 100:
                break
    assert got[0]["event"] == "lost" and got[0]["data"]["lost"] == 150
    events = [e["data"]["argv"][1] for e in got[1:]]
    assert events == [f"{tag}-{i}" for i in range(150, 250)]
    st = client.delete(f"/api/v1/runs/{run['id']}").json()
    assert st["events"] == 251 and st["lost_events"] == 0


def test_heartbeat_on_a_quiet_stream(client, agent):
    run = _start(client, "execsnoop", {"ppid": 1, "uid": 4242}, duration=3)
    with client.stream("GET", f"/api/v1/runs/{run['id']}/events") as r:
        kinds = [e["event"] for e in sse_events(r)]
    assert kinds.count("heartbeat") >= 2 and kinds[-1] == "end"  # --sse-heartbeat 0.5


# ------------------------------------------------------------------------------ stacks
def test_profile_result_as_svg_folded_pprof(client, tmp_path):
    from bpfscope.render.pprof import from_pprof

    marker = f"spin_{uuid.uuid4().hex[:8]}"
    proc = _spin(tmp_path, marker)
    try:
        time.sleep(0.2)
        cpu0 = _cpu_seconds(proc.pid)
        run = _start(client, "profile", {"pid": [proc.pid]}, duration=2, wait=True)
        cpu = _cpu_seconds(proc.pid) - cpu0  # ground truth: the CPU time the spinner got meanwhile
    finally:
        proc.kill()
        proc.wait()
    assert run["state"] == "done", run
    assert run["mode"] == "perf_event"
    url = f"/api/v1/runs/{run['id']}/result"
    folded = client.get(url, params={"format": "folded"})
    assert folded.status_code == 200 and folded.headers["content-type"].startswith("text/plain")
    lines = [ln.rsplit(" ", 1) for ln in folded.text.splitlines() if ln]
    mine = sum(int(n) for stack, n in lines if marker in stack.split(";"))
    total = sum(int(n) for _, n in lines)
    # 49 Hz of cpu-clock while it ran: ~49 samples per CPU second it got (98 on an idle machine)
    assert mine >= 3 and mine >= 0.8 * total, folded.text[:2000]
    assert mine <= cpu * 49 * 1.25 + 5, (mine, cpu)
    assert mine >= (cpu - 1.0) * 49 * 0.5, (mine, cpu)  # the sampling window is the run minus its attach
    svg = client.get(url, params={"format": "svg", "title": "spin <test>"})
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.text.lstrip().startswith("<?xml") and "<svg" in svg.text
    assert f">{marker}" in svg.text or f"{marker} (" in svg.text
    assert "spin &lt;test&gt;" in svg.text  # the title is escaped, not markup
    pprof = client.get(url, params={"format": "pprof"})
    assert pprof.headers["content-type"] == "application/octet-stream"
    assert pprof.content[:2] == b"\x1f\x8b"  # gzipped profile.proto
    stacks = from_pprof(pprof.content)
    assert sum(n for stack, n in stacks.items() if marker in stack) == mine
    js = client.get(url, params={"format": "json"}).json()
    assert sum(s["count"] for s in js["results"][0]["stacks"] if marker in s["frames"]) == mine


def test_result_while_running_is_409_and_formats_are_checked(client):
    run = _start(client, "profile", {}, duration=30)
    r = client.get(f"/api/v1/runs/{run['id']}/result", params={"format": "svg"})
    assert r.status_code == 409 and "still" in r.json()["detail"]
    client.delete(f"/api/v1/runs/{run['id']}")
    ex = _start(client, "execsnoop", {"ppid": 1}, duration=0.3, wait=True)
    r = client.get(f"/api/v1/runs/{ex['id']}/result", params={"format": "svg"})
    assert r.status_code == 422 and "json, text" in r.json()["detail"]
    r = client.get(f"/api/v1/runs/{ex['id']}/result", params={"format": "exe"})
    assert r.status_code == 422
    assert client.get("/api/v1/runs/99-deadbeef").status_code == 404
    assert client.get(f"/api/v1/runs/{run['id']}/events").status_code == 422  # profile is not an event tool


# ---------------------------------------------------------------------------- lifecycle
def test_wait_true_returns_the_finished_run(client):
    t0 = time.monotonic()
    r = client.post("/api/v1/runs?wait=true", json={"tool": "execsnoop", "options": {"ppid": 1}, "duration": 0.5})
    assert r.status_code == 200 and r.json()["state"] == "done"
    assert r.headers["location"] == f"/api/v1/runs/{r.json()['id']}"
    assert 0.5 <= time.monotonic() - t0 < 10
    listed = [x["id"] for x in client.get("/api/v1/runs").json()["runs"]]
    assert r.json()["id"] in listed


def test_cancel_releases_every_bpf_program(client, agent):
    before = owned_program_ids(agent.proc.pid)
    run = _start(client, "execsnoop", {}, duration=120)
    assert wait_attached(client, run["id"])["attached"]
    during = owned_program_ids(agent.proc.pid) - before
    assert {n for n in program_names(during).values()} >= {"tp_enter_execve", "tp_exit_execve"}
    st = client.delete(f"/api/v1/runs/{run['id']}").json()
    assert st["state"] == "cancelled"
    # answered only once detached and closed: nothing of the run is left in the kernel
    assert not wait_gone(during, timeout=0.5)
    assert owned_program_ids(agent.proc.pid) == before
    again = client.delete(f"/api/v1/runs/{run['id']}")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"


def test_results_are_kept_in_bounded_number_time_and_size(tmp_path):
    with Agent("--collectors", "execs", "--keep-results", "2", "--result-ttl", "3", "--max-result-mb", "0.002",
               log=tmp_path / "agent.log") as a:
        a.ready()
        with a.client() as c:
            ids = [_start(c, "execsnoop", {"ppid": os.getpid()}, duration=0.5, wait=True)["id"] for _ in range(3)]
            assert c.get(f"/api/v1/runs/{ids[0]}").status_code == 404  # number
            assert [c.get(f"/api/v1/runs/{i}").status_code for i in ids[1:]] == [200, 200]
            big = _start(c, "execsnoop", {"ppid": os.getpid()}, duration=20)
            wait_attached(c, big["id"])
            for i in range(20):
                subprocess.run(["/bin/true", f"padding-{i:02d}-" + "x" * 64], check=True)
            c.delete(f"/api/v1/runs/{big['id']}")
            r = c.get(f"/api/v1/runs/{big['id']}/result")  # about 20 x 400 bytes > 2 KB
            assert r.status_code == 422 and "larger than" in r.json()["detail"]
            time.sleep(3.5)
            assert c.get(f"/api/v1/runs/{big['id']}").status_code == 404  # age
            assert c.get("/api/v1/runs").json()["runs"] == []


def test_kill_9_leaves_no_bpf_program_and_restart_works(tmp_path):
    a = Agent("--collectors", "execs", log=tmp_path / "agent.log")
    try:
        a.ready()
        with a.client() as c:
            base = owned_program_ids(a.proc.pid)  # the execs collector
            run = _start(c, "execsnoop", {}, duration=120)
            wait_attached(c, run["id"])
            prof = _start(c, "profile", {}, duration=120)
            wait_attached(c, prof["id"])
        held = owned_program_ids(a.proc.pid)
        assert len(held - base) >= 5  # execsnoop's four + profile's
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(10)
        # programs, links and perf events were owned by the process's fds: the kernel frees them
        assert not wait_gone(held, timeout=10), "BPF programs left after kill -9"
    finally:
        a.stop()
    b = Agent("--collectors", "execs", port=a.port, log=tmp_path / "agent2.log")  # same port, at once
    try:
        b.ready()
        with b.client() as c:
            run = _start(c, "execsnoop", {"ppid": os.getpid()}, duration=10)
            wait_attached(c, run["id"])
            subprocess.run(["/bin/true", "after-restart"], check=True)
            wait_state(c, run["id"], ("running",))
            deadline = time.monotonic() + 10
            while c.get(f"/api/v1/runs/{run['id']}").json()["events"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.delete(f"/api/v1/runs/{run['id']}").json()["events"] >= 1
    finally:
        b.stop()


def test_sigterm_stops_runs_and_releases_programs(tmp_path):
    a = Agent("--collectors", "execs", log=tmp_path / "agent.log")
    try:
        a.ready()
        with a.client() as c:
            run = _start(c, "execsnoop", {}, duration=120)
            wait_attached(c, run["id"])
        held = owned_program_ids(a.proc.pid)
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(15) == 0
        assert time.monotonic() - t0 < 10
        assert not wait_gone(held, timeout=2)
        assert "Traceback" not in a.output()
    finally:
        a.stop()


def test_tool_without_a_hook_here_is_409(client):
    r = client.post("/api/v1/runs", json={"tool": "ttysnoop", "options": {"mode": "fentry", "device": "/dev/pts/0"},
                                          "duration": 1})
    assert r.status_code == 409 and "fentry" in r.json()["detail"]


@pytest.mark.kernelfunc
def test_kernel_function_modes_reported_and_run(client):
    """On kernels with fentry (the Debian 6.1 VM): the API says so and runs the tool in that mode."""
    tools = {t["name"]: t for t in client.get("/api/v1/tools").json()["tools"]}
    assert tools["ttysnoop"]["modes"][0]["mode"].startswith("fentry")
    run = _start(client, "ttysnoop", {"mode": "fentry", "device": "/dev/console"}, duration=1, wait=True)
    assert run["state"] == "done" and run["mode"] == "fentry", run


def test_post_body_must_be_json_object(client):
    r = client.post("/api/v1/runs", content=b'{"tool": "execsnoop"', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = client.post("/api/v1/runs", content=json.dumps(["execsnoop"]), headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/api/v1/runs", content=b'{"tool": "execsnoop", "duration": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/api/v1/runs", json={"tool": "nosuchtool"})
    assert r.status_code == 422 and "unknown tool" in r.json()["detail"]
    r = client.post("/api/v1/runs", content=b'{"tool": "execsnoop", "options": {"name": "\\udcff"}}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "Unicode" in r.json()["detail"]
