"""runqlat on the real kernel: two busy threads per CPU in a program of ours, compared with
the kernel's own run-queue accounting of those threads (/proc/<tid>/schedstat: time waiting
on a run queue, and the number of times each got the CPU)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bpfscope.bpf.object import loaded_program_ids
from tests.helpers import ToolProcess, run_cli

pytestmark = pytest.mark.bpf
CPROGS = Path(__file__).with_name("cprogs")
NTHREADS = 2 * (os.cpu_count() or 1)


@pytest.fixture(scope="module")
def iobusy(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("runqlat") / "iobusy"
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(out), str(CPROGS / "iobusy.c")], check=True)
    return str(out)


def _start(iobusy: str, ms: int = 400) -> subprocess.Popen:
    """iobusy waits for a line on stdin before it spins, so tools can attach first."""
    return subprocess.Popen([iobusy, str(NTHREADS), str(ms)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def _schedstat_totals(out: str) -> tuple[int, int]:
    """(times on CPU, ns waiting on a run queue) of the process while it was busy."""
    rows = [line.split() for line in out.splitlines()]
    slices = delay = 0
    for r in rows:
        if r[0] == "thread":  # whole life of the thread
            delay += int(r[3])
            slices += int(r[4])
    start = next(r for r in rows if r[0] == "main-start")
    end = next(r for r in rows if r[0] == "main-end")
    return slices + int(end[4]) - int(start[4]), delay + int(end[3]) - int(start[3])


def _hists(tool: ToolProcess) -> list[dict]:
    return [h for rec in tool.json_lines() if rec.get("type") == "histograms" for h in rec["histograms"]]


def _text_total(stdout: str) -> int:
    return sum(int(m.group(1)) for m in re.finditer(r"^\s+\d+ -> \d+\s+: (\d+)\s+\|", stdout, re.M))


def test_busy_threads_match_kernel_schedstat_in_both_modes(iobusy):
    prog = _start(iobusy)
    decoy = _start(iobusy, 200)  # busy too, but filtered out by -p
    pid = str(prog.pid)
    tools = {
        "tp_btf": ToolProcess("runqlat", "--json", "-p", pid),
        "raw_tp": ToolProcess("runqlat", "--json", "-p", pid, "--mode", "raw_tp"),
        "text": ToolProcess("runqlat", "-p", pid),
        "per_pid": ToolProcess("runqlat", "--json", "-P", "-p", pid),
        "per_tid": ToolProcess("runqlat", "--json", "-L", "-p", pid),
    }
    for t in tools.values():
        t.ready()
    decoy.stdin.write("go\n")
    decoy.stdin.flush()
    out, _ = prog.communicate("go\n", timeout=60)
    decoy.communicate(timeout=60)
    time.sleep(0.1)
    for t in tools.values():
        t.stop()
    slices, delay_ns = _schedstat_totals(out)
    tids = {int(line.split()[1]) for line in out.splitlines() if line.startswith("thread")}
    assert len(tids) == NTHREADS

    for mode in ("tp_btf", "raw_tp"):
        hs = _hists(tools[mode])
        assert len(hs) == 1 and "key" not in hs[0], hs
        h = hs[0]
        # every time a thread got the CPU after waiting is one event (a few more around exit)
        assert slices - 2 <= h["count"] <= slices + NTHREADS + 6, (mode, h["count"], slices)
        # and the waits add up to the kernel's run_delay (usecs truncated per event)
        got_ns = h["sum"] * 1000
        assert abs(got_ns - delay_ns) <= 0.05 * delay_ns + 1000 * h["count"] + 5_000_000, (mode, got_ns, delay_ns)
        assert f"({mode} mode)" in tools[mode].stderr
    assert tools["text"].stdout.startswith("     usecs               : count     distribution")
    assert _text_total(tools["text"].stdout) == _hists(tools["tp_btf"])[0]["count"]  # same events, same total

    per_pid = _hists(tools["per_pid"])
    assert [(h["key_label"], h["key"]) for h in per_pid] == [("pid", pid)]
    assert per_pid[0]["count"] == _hists(tools["tp_btf"])[0]["count"]
    per_tid = {int(h["key"]): h["count"] for h in _hists(tools["per_tid"])}
    assert tids <= set(per_tid) <= tids | {prog.pid}  # worker threads (+ the main thread)
    assert sum(per_tid.values()) == per_pid[0]["count"]


def test_per_process_without_filter_shows_both_busy_processes(iobusy):
    a, b = _start(iobusy, 200), _start(iobusy, 200)
    tool = ToolProcess("runqlat", "--json", "-P", "-m").ready()
    a.stdin.write("go\n")
    a.stdin.flush()
    b.communicate("go\n", timeout=60)
    a.communicate(timeout=60)
    tool.stop()
    hs = {h["key"]: h for h in _hists(tool)}
    assert str(a.pid) in hs and str(b.pid) in hs
    assert all(h["unit"] == "msecs" and h["key_label"] == "pid" for h in hs.values())
    assert hs[str(a.pid)]["count"] >= NTHREADS and hs[str(b.pid)]["count"] >= NTHREADS


def _prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds (its program and link fds name them)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        m = re.search(r"^prog_id:\s+(\d+)", info, re.M)
        if m:
            ids.add(int(m.group(1)))
    return ids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_prints_last_interval_and_releases_programs(sig):
    tool = ToolProcess("runqlat", "--json", "60").ready()  # interval far away: the signal ends it
    ours = _prog_ids_of(tool.proc.pid)
    assert len(ours) == 3, ours  # wakeup, wakeup_new, switch
    time.sleep(0.3)
    took = tool.stop(sig)
    assert tool.proc.returncode == 0, tool.stderr
    assert took < 2.0, f"exit took {took:.2f}s"
    assert "Traceback" not in tool.stderr
    recs = tool.json_lines()
    assert [r["type"] for r in recs] == ["histograms", "summary"]
    assert recs[0]["histograms"][0]["count"] > 0  # the partial interval is printed
    deadline = time.monotonic() + 3  # the kernel frees detached programs from a work queue
    while loaded_program_ids() & ours and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not loaded_program_ids() & ours, "programs still loaded after exit"


def test_per_pid_and_per_tid_exclude_each_other():
    r = run_cli("runqlat", "-P", "-L")
    assert r.returncode == 2 and "exclude" in r.stderr and r.stderr.count("\n") == 1


def test_dash_i_with_a_count_and_conflicting_intervals():
    r = run_cli("runqlat", "--json", "-i", "0.3", "2", timeout=30)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["type"] for x in recs] == ["histograms", "histograms", "summary"]
    r = run_cli("runqlat", "-i", "0.3", "2.5")
    assert r.returncode == 2 and "two intervals" in r.stderr and r.stderr.count("\n") == 1
