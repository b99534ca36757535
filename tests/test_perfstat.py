"""perfstat on the real kernel: a program does counted work (fresh pages touched, 1 ms sleeps,
CPU burnt), reports what getrusage saw, and perfstat must credit the same to its pid or cgroup.

Hardware events: this machine has no PMU, so they must fail in one clear line; where a PMU
exists the same test counts cycles and instructions for real. The hardware-only arithmetic
(ratios, per-process / per-cgroup aggregation, interval deltas) is checked on synthetic counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from bpfscope.bpf.object import program_names
from bpfscope.tools import _perfevents as pe
from bpfscope.tools.perfstat import Deltas, Entry, MapReader, build_rows, table_columns
from tests.helpers import ToolProcess, build_c, programs_left, run_cli

pytestmark = pytest.mark.bpf
CPROGS = Path(__file__).with_name("cprogs")
PAGES = 20000


@pytest.fixture(scope="module")
def evwork(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("ev") / "evwork"
    return str(build_c((CPROGS / "evwork.c").read_text(), out))


class Work:
    """evwork started and parked before its work: a tracer can attach for its pid first."""

    def __init__(self, exe: str, *args: str, keep: bool = False, cgroup_procs: str | None = None):
        env = dict(os.environ, KEEP="1") if keep else None
        self.p = subprocess.Popen([exe, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.p.stdout is not None
        self.pid = int(self.p.stdout.readline().split()[1])
        if cgroup_procs:
            with open(cgroup_procs, "w") as f:
                f.write(str(self.pid))

    def go(self) -> dict:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def finish(self) -> None:
        assert self.p.stdin
        self.p.stdin.close()
        assert self.p.wait(timeout=30) == 0


def prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds (from /proc/PID/fdinfo): ours, not a concurrent run's."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-prog":
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    ids |= {int(line.split()[1]) for line in f if line.startswith("prog_id:")}
        except OSError:
            continue
    return ids


def rows_for(tool: ToolProcess, key: str, value) -> list[dict]:
    return [r for rec in tool.json_lines() if rec.get("type") == "rates" for r in rec["rows"] if r.get(key) == value]


def summary(tool: ToolProcess) -> dict:
    return [r for r in tool.json_lines() if r.get("type") == "summary"][-1]


# ------------------------------------------------------------------------------ real kernel
@pytest.mark.parametrize("mode", ["read", "read-rawtp", "sample"])
def test_page_faults_of_pid_match_pages_touched(evwork, mode):
    w = Work(evwork, "faults", str(PAGES))
    tool = ToolProcess("perfstat", "-e", "page-faults,minor-faults,major-faults", "-p", str(w.pid),
                       "--mode", mode, "--json").ready()
    res = w.go()
    w.finish()
    tool.stop()
    assert tool.proc.returncode == 0, tool.stderr
    rows = rows_for(tool, "PID", w.pid)
    assert len(rows) == 1, tool.stdout
    row = rows[0]
    assert row["COMM"] == "evwork"
    assert abs(row["page-faults"] - PAGES) <= 0.05 * PAGES, row
    # what the kernel's own accounting saw for the work, plus the exit path at most
    assert res["minflt"] <= row["page-faults"] <= res["minflt"] + 200, (row, res)
    assert row["minor-faults"] >= res["minflt"] and row["major-faults"] <= 5
    assert all(r["PID"] == w.pid for rec in tool.json_lines() if rec.get("type") == "rates" for r in rec["rows"])
    assert summary(tool)["lost_events"] == 0
    assert f"{'sample' if mode == 'sample' else 'read'} mode" in tool.stderr


@pytest.mark.parametrize("mode", ["read", "sample"])
def test_context_switches_of_a_sleeper(evwork, mode):
    w = Work(evwork, "sleep", "500", "1000")
    tool = ToolProcess("perfstat", "-e", "cs,cpu-migrations,task-clock", "-p", str(w.pid), "--mode", mode,
                       "--json").ready()
    res = w.go()
    w.finish()
    tool.stop()
    row = rows_for(tool, "PID", w.pid)[0]
    switched = res["nvcsw"] + res["nivcsw"]
    assert 500 <= switched <= 600
    assert 500 <= row["context-switches"] <= 600, row
    assert switched <= row["context-switches"] <= switched + 10, (row, res)  # + wake-up and exit
    assert row["task-clock(ms)"] < res["wall_ns"] / 1e6 / 5  # asleep most of the time


def test_task_clock_matches_cpu_time(evwork):
    w = Work(evwork, "spin", "300")
    tool = ToolProcess("perfstat", "-e", "task-clock,cpu-clock", "-p", str(w.pid), "--json").ready()
    res = w.go()
    w.finish()
    tool.stop()
    row = rows_for(tool, "PID", w.pid)[0]
    cpu_ms = res["cpu_ns"] / 1e6
    for col in ("task-clock(ms)", "cpu-clock(ms)"):
        assert 0.9 * cpu_ms <= row[col] <= 1.1 * cpu_ms + 20, (col, row, res)


def test_interval_tables_add_up_for_a_live_process(evwork):
    w = Work(evwork, "faults", str(PAGES), keep=True)
    tool = ToolProcess("perfstat", "-e", "page-faults", "-p", str(w.pid), "-i", "0.2", "--json").ready()
    time.sleep(0.3)
    res = w.go()
    time.sleep(0.6)  # the process lives on: deltas, not totals, per interval
    w.finish()
    time.sleep(0.3)
    tool.stop()
    tables = [r for r in tool.json_lines() if r.get("type") == "rates"]
    assert len(tables) >= 4
    assert all(0.15 < t["interval"] < 2 for t in tables[:-1])  # the last one ends at Ctrl-C
    total = sum(r["page-faults"] for r in rows_for(tool, "PID", w.pid))
    assert res["minflt"] <= total <= res["minflt"] + 200
    assert abs(total - PAGES) <= 0.05 * PAGES


def test_per_cgroup_counts_and_cgroup_filter(evwork):
    from bpfscope.k8s.cgroups import cgroup2_mount, fs_path

    mount = cgroup2_mount()
    cgpath = f"/bpfscope-perfstat-{uuid.uuid4().hex[:8]}"
    os.makedirs(fs_path(cgpath, mount))
    try:
        inside = Work(evwork, "faults", str(PAGES), cgroup_procs=os.path.join(fs_path(cgpath, mount), "cgroup.procs"))
        outside = Work(evwork, "faults", str(PAGES // 2))
        tool = ToolProcess("perfstat", "-e", "page-faults", "--by", "cgroup", "--cgroup", cgpath, "--json").ready()
        res = inside.go()
        outside.go()
        inside.finish()
        outside.finish()
        tool.stop()
        assert tool.proc.returncode == 0, tool.stderr
        rows = [r for rec in tool.json_lines() if rec.get("type") == "rates" for r in rec["rows"]]
        assert [r["CGROUP"] for r in rows] == [cgpath], rows  # the filter kept everything else out
        assert res["minflt"] <= rows[0]["page-faults"] <= res["minflt"] + 200
    finally:
        for _ in range(100):
            try:
                os.rmdir(fs_path(cgpath, mount))
                break
            except OSError:
                time.sleep(0.02)


def test_text_output_has_pid_comm_and_event_columns(evwork):
    w = Work(evwork, "faults", "2000")
    tool = ToolProcess("perfstat", "-e", "faults,cs", "-p", str(w.pid)).ready()
    w.go()
    w.finish()
    tool.stop()
    lines = tool.stdout.splitlines()
    assert lines[0].split() == ["PID", "COMM", "page-faults", "context-switches"]
    fields = lines[1].split()
    assert fields[:2] == [str(w.pid), "evwork"] and int(fields[2]) >= 2000
    assert "Counting page-faults, context-switches per PID" in tool.stderr


def test_hardware_events_count_for_real_or_fail_in_one_clear_line(evwork):
    """No PMU here: one line naming the events and what is missing, non-zero exit. With a PMU
    (bare metal, or a VM with a virtual PMU) the same command counts, with IPC."""
    if not pe.pmu_present():
        r = run_cli("perfstat", "-e", "cycles,instructions,page-faults", "-d", "1")
        assert r.returncode == 3
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert "cannot count cycles, instructions" in r.stderr and "PMU" in r.stderr
        assert "page-faults" in r.stderr  # the software events that do work
        return
    w = Work(evwork, "spin", "200")
    tool = ToolProcess("perfstat", "-e", "cycles,instructions", "-p", str(w.pid), "--json").ready()
    w.go()
    w.finish()
    tool.stop()
    row = rows_for(tool, "PID", w.pid)[0]
    assert row["cycles"] > 1e7 and row["instructions"] > 1e7
    assert row["IPC"] == pytest.approx(row["instructions"] / row["cycles"], rel=0.01)


def test_default_events_without_a_pmu_are_the_software_set(evwork):
    w = Work(evwork, "faults", "1000")
    tool = ToolProcess("perfstat", "-p", str(w.pid), "--json").ready()
    w.go()
    w.finish()
    tool.stop()
    row = rows_for(tool, "PID", w.pid)[0]
    expected = ["task-clock(ms)", "context-switches", "cpu-migrations", "page-faults"]
    if pe.pmu_present():
        expected += ["cycles", "instructions", "IPC"]
    assert list(row)[2:] == expected


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_and_releases_programs_and_events(sig):
    tool = ToolProcess("perfstat", "-e", "page-faults,task-clock").ready()
    during = prog_ids_of(tool.proc.pid)
    assert set(program_names(during).values()) == {"read_switch_btf"}
    fds = os.listdir(f"/proc/{tool.proc.pid}/fd")
    perf_fds = [f for f in fds if os.readlink(f"/proc/{tool.proc.pid}/fd/{f}") == "anon_inode:[perf_event]"]
    assert len(perf_fds) >= len(pe_cpus())  # one counter per CPU (and event)
    took = tool.stop(sig)
    assert tool.proc.returncode == 0, tool.stderr
    assert took < 5.0, f"exit took {took:.2f}s"
    assert "Traceback" not in tool.stderr
    assert not programs_left(during), "programs left loaded"
    assert tool.stdout.splitlines()[0].split()[:2] == ["PID", "COMM"], tool.stdout  # printed on the way out


def pe_cpus() -> list[int]:
    from bpfscope.bpf.perf import online_cpus

    return online_cpus()


@pytest.mark.parametrize(
    "args,needle,code",
    [
        (["-e", "bogus"], "unknown event 'bogus'", 2),
        (["-e", "cs;rm -rf"], "not a valid value", 2),
        (["-e", "cs,faults,migrations,task-clock,cpu-clock,minor-faults,major-faults,cycles,instructions"],
         "at most 8 events", 2),
        (["-e", "cs", "-c", "10"], "sample mode only", 2),
        (["-p", "4194000"], "no process with PID 4194000", 2),
        (["--by", "thread"], "not one of", 2),
        (["--cgroup", "/no-such-cgroup-here"], "cgroup", 2),
    ],
)
def test_bad_input_is_one_clear_line(args, needle, code):
    r = run_cli("perfstat", *args, "-d", "0.5")
    assert r.returncode == code, r.stderr
    assert needle in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# --------------------------------------------------------------------- synthetic counter values
def test_derived_ratios():
    counts = {"cycles": 2_000_000, "instructions": 3_000_000, "cache-references": 1000, "cache-misses": 250,
              "LLC-loads": 400, "LLC-load-misses": 100, "branch-instructions": 10_000, "branch-misses": 123}
    assert pe.derive(counts) == {"IPC": 1.5, "cache-miss%": 25.0, "LLC-miss%": 25.0, "branch-miss%": 1.23}
    assert pe.derive({"cycles": 0, "instructions": 5}) == {}  # nothing to divide by: no ratio, not 0
    assert pe.derive({"instructions": 5, "page-faults": 3}) == {}  # needs both events
    assert pe.ratio_columns(["cycles", "page-faults", "instructions"]) == ["IPC"]
    assert pe.hit_percent(1000, 250) == 75.0
    assert pe.hit_percent(100, 120) == 0.0 and pe.hit_percent(0, 0) == 0.0


def test_rows_per_process_and_per_cgroup_from_synthetic_counts():
    events = ["cycles", "instructions", "task-clock"]
    entries = [
        Entry(100, 7, "web", [1000, 2500, 5_000_000]),
        Entry(100, 8, "web", [1000, 500, 1_000_000]),  # the same process, moved to another cgroup
        Entry(200, 7, "db", [4000, 2000, 2_500_000]),
        Entry(0, 1, "swapper/1", [10, 0, 9_000_000]),
    ]
    rows = build_rows(entries, events, "process")
    assert rows == [
        {"PID": 200, "COMM": "db", "cycles": 4000, "instructions": 2000, "task-clock(ms)": 2.5, "IPC": 0.5},
        {"PID": 100, "COMM": "web", "cycles": 2000, "instructions": 3000, "task-clock(ms)": 6.0, "IPC": 1.5},
        {"PID": 0, "COMM": "swapper", "cycles": 10, "instructions": 0, "task-clock(ms)": 9.0, "IPC": 0.0},
    ]
    names = {7: "/kubepods/pod-a", 8: "/system.slice", 1: "/"}
    by_cg = build_rows(entries, events, "cgroup", names.__getitem__)
    assert [(r["CGROUP"], r["cycles"], r["IPC"]) for r in by_cg] == [
        ("/kubepods/pod-a", 5000, 0.9), ("/system.slice", 1000, 0.5), ("/", 10, 0.0)]
    assert table_columns(events, "process") == ["PID", "COMM", "cycles", "instructions", "task-clock(ms)", "IPC"]
    assert table_columns(["cache-misses", "cache-references"], "cgroup") == [
        "CGROUP", "cache-misses", "cache-references", "cache-miss%"]


def test_interval_deltas_from_running_totals():
    d = Deltas()
    first = d.step([Entry(1, 5, "a", [10, 100]), Entry(2, 5, "b", [3, 0])])
    assert [(e.tgid, e.values) for e in first] == [(1, [10, 100]), (2, [3, 0])]
    second = d.step([Entry(1, 5, "a", [15, 100]), Entry(2, 5, "b", [3, 0])])
    assert [(e.tgid, e.values) for e in second] == [(1, [5, 0])]  # idle processes drop out
    d.forget((1, 5))  # its map entry was deleted (process gone); a new one counts from zero
    assert [(e.tgid, e.values) for e in d.step([Entry(1, 5, "a2", [4, 4])])] == [(1, [4, 4])]


class FakeStats:
    """Stands in for the stats map (our own Map API, not the kernel): running totals per key."""

    class Key:
        def __init__(self, tgid: int, cgroup_id: int):
            self.tgid, self.cgroup_id = tgid, cgroup_id

    class Value:
        def __init__(self, values: list[int], comm: bytes):
            self.values, self.comm = values, comm

    key_type = Key

    def __init__(self):
        self.data: dict[tuple[int, int], tuple[list[int], bytes]] = {}
        self.deleted: list[tuple[int, int]] = []

    def items(self):
        return [(self.Key(*k), self.Value(v, c)) for k, (v, c) in self.data.items()]

    def delete(self, key) -> bool:
        self.deleted.append((key.tgid, key.cgroup_id))
        return self.data.pop((key.tgid, key.cgroup_id), None) is not None


def test_housekeeping_reads_accumulate_and_free_exited_processes_late():
    gone = next(p for p in range(4194000, 4194300) if not os.path.exists(f"/proc/{p}"))  # no such process
    live = os.getpid()
    m = FakeStats()
    m.data = {(live, 1): ([5, 1], b"me"), (gone, 1): ([7, 0], b"short")}
    r = MapReader(m, 2)
    r.collect()
    assert m.deleted == []  # just seen gone: its last switch may still be landing
    m.data[(gone, 1)] = ([9, 0], b"short")  # that last slice landed
    m.data[(live, 1)] = ([6, 3], b"me")
    r.collect()
    assert m.deleted == [(gone, 1)]  # gone at two reads in a row: freed
    got = {(e.tgid, e.comm): e.values for e in r.take()}
    assert got == {(live, "me"): [6, 3], (gone, "short"): [9, 0]}  # totals over both reads
    m.data[(live, 1)] = ([10, 3], b"me")
    r.collect()
    assert [(e.tgid, e.values) for e in r.take()] == [(live, [4, 0])]  # since the last take


def test_event_names_aliases_and_limits():
    assert pe.parse_events(["faults,cs", "migrations", "page-faults"], [], 8) == [
        "page-faults", "context-switches", "cpu-migrations"]
    assert pe.parse_events(None, ["task-clock"], 8) == ["task-clock"]
    assert pe.column("cpu-clock") == "cpu-clock(ms)" and pe.display_value("cpu-clock", 1_234_567) == 1.235
    from bpfscope.errors import UsageError

    with pytest.raises(UsageError, match="unknown event"):
        pe.parse_events(["cycles,nope"], [], 8)
    with pytest.raises(UsageError, match="at most 2"):
        pe.parse_events(["cs,faults,cycles"], [], 2)
    msg = pe.no_pmu_message(["cycles", "LLC-loads"])
    assert "cannot count cycles, LLC-loads" in msg and "PMU" in msg and "\n" not in msg
