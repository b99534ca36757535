"""funclatency on the real kernel: a C program does timed work (and measures each call itself);
the tool's histogram must agree with what the program did and measured.

The program (tests/cprogs/latprog.c) waits on stdin after printing "ready": that read(2) is in
flight while the tool attaches, and must not show up. Kernel-function modes (fentry, kprobe)
are marked kernelfunc: they run in the Debian 6.1 VM (scripts/kernel_matrix.py)."""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from bpfscope.bpf.features import Features
from bpfscope.bpf.object import program_names
from tests.helpers import ToolProcess, run_cli
from tests.latprog import Child, Tool, build_latprog, reap_all, run_many

pytestmark = pytest.mark.bpf
READY = 120  # seconds to attach: generous for the kernel matrix VM (qemu TCG is ~20x slower)
PROGS = {"tp_sys_enter", "tp_sys_exit", "btf_sys_enter", "btf_sys_exit", "uprobe_entry", "uprobe_return"}


@pytest.fixture(scope="session")
def latprog(tmp_path_factory) -> str:
    return build_latprog(tmp_path_factory)


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_all()


def slot_of(low: int) -> int:
    return 0 if low == 0 else low.bit_length() - 1


def json_histograms(tool: ToolProcess) -> list[dict]:
    return [h for rec in tool.json_lines() if rec.get("type") == "histograms" for h in rec["histograms"]]


def slots_of(h: dict) -> dict[int, int]:
    return {slot_of(b["low"]): b["count"] for b in h["buckets"] if b["count"]}


def merged(hists: list[dict], key: str | None = None) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        if key is None or h.get("key") == key:
            for s, c in slots_of(h).items():
                out[s] = out.get(s, 0) + c
    return out


def assert_agrees(seen: dict[int, int], measured: dict[int, int], n: int) -> None:
    """Same number of calls; at most 5% of them one slot off (the tool's timestamps sit a few
    microseconds outside the program's own)."""
    assert sum(seen.values()) == n, f"tool saw {sum(seen.values())} calls, program made {n}: {seen}"
    assert sum(measured.values()) == n
    moved = sum(abs(seen.get(s, 0) - measured.get(s, 0)) for s in set(seen) | set(measured)) // 2
    assert moved <= max(1, n // 20), f"tool {seen} vs program {measured}"


def traced(latprog: str, child_args: list, tool_args: list[str], pid: bool = True) -> tuple:
    """Start the program, attach the tool (-p program), run the work, stop the tool."""
    child = Child(latprog, *child_args)
    try:
        tool = Tool("funclatency", *(["-p", str(child.pid)] if pid else []), *tool_args).ready(READY)
        child.go()
        done, measured = child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    tool.stop()
    assert "Traceback" not in tool.stderr, tool.stderr
    return tool, done, measured


def assert_mostly_2ms(seen: dict[int, int], measured: dict[int, int]) -> None:
    """The issue's check: >= 95% of 2 ms calls in the 1024-4095 us slots (10 and 11), whenever
    the program itself measured them there (a loaded machine can oversleep)."""
    n = sum(seen.values())
    in_range = (seen.get(10, 0) + seen.get(11, 0)) / n
    truth = (measured.get(10, 0) + measured.get(11, 0)) / n
    assert in_range >= min(0.95, truth - 0.02), (seen, measured)


# ------------------------------------------------------------------------------ syscalls
def test_syscall_nanosleep_2ms(latprog):
    tool, done, measured = traced(latprog, ["work", 300, 2000], ["-u", "--json", "syscall:nanosleep"])
    hists = json_histograms(tool)
    assert len(hists) == 1 and hists[0]["unit"] == "usecs"
    seen = slots_of(hists[0])
    assert_agrees(seen, measured, done)
    assert_mostly_2ms(seen, measured)
    assert hists[0]["count"] == 300
    assert 300 * 2000 <= hists[0]["sum"] <= sum(2 ** (s + 1) * c for s, c in measured.items())
    assert tool.json_lines()[-1] == {"type": "summary", "lost_events": 0}
    assert "tracepoint mode" in tool.stderr


def test_read_in_flight_at_attach_is_ignored(latprog):
    """The program blocks in read(stdin) while the tool attaches: that read ends after attach
    with no entry seen, and must not be counted; the 1000 reads after it must all be."""
    tool, done, _ = traced(latprog, ["reads", 1000], ["--json", "syscall:read"])
    (h,) = json_histograms(tool)
    assert h["count"] == done == 1000
    assert max(b["high"] for b in h["buckets"] if b["count"]) < 1 << 24  # no 100+ ms read


def test_pid_filter_excludes_other_processes(latprog):
    a = Child(latprog, "work", 60, 1000)
    b = Child(latprog, "work", 40, 1000)
    try:
        only_a = Tool("funclatency", "--json", "-p", str(a.pid), "syscall:nanosleep").ready(READY)
        every = Tool("funclatency", "--json", "syscall:nanosleep").ready(READY)
        a.go()
        b.go()
        assert a.finish()[0] == 60 and b.finish()[0] == 40
    finally:
        for c in (a, b):
            if c.proc.poll() is None:
                c.proc.kill()
    only_a.stop()
    every.stop()
    assert json_histograms(only_a)[0]["count"] == 60
    assert json_histograms(every)[0]["count"] >= 100


@pytest.mark.parametrize("mode", ["tp_btf", "raw_tp"])
def test_forced_syscall_modes_count_the_same(latprog, mode):
    tool, done, _ = traced(latprog, ["reads", 1000], ["--json", "--mode", mode, "syscall:read"])
    assert json_histograms(tool)[0]["count"] == done
    assert f"({mode} mode" in tool.stderr


def test_many_syscalls_use_one_tp_btf_pair_and_per_function_histograms(latprog):
    """Three system calls: tp_btf (two links) rather than six tracepoint links; -F keys each."""
    tool, done, measured = traced(
        latprog, ["work", 50, 2000], ["--json", "-u", "-F", "-r", "syscall:(nanosleep|getppid|read)$"]
    )
    assert "(tp_btf mode" in tool.stderr and "Tracing 3 functions" in tool.stderr
    hists = json_histograms(tool)
    assert {h["key"] for h in hists} == {"nanosleep"}  # the in-flight read is not counted
    assert hists[0]["key_label"] == "Function"
    assert_agrees(slots_of(hists[0]), measured, done)


# ------------------------------------------------------------------------------ uprobes
def test_uprobe_function_2ms(latprog):
    tool, done, measured = traced(latprog, ["work", 300, 2000], ["-u", "--json", f"{latprog}:lat_work"])
    (h,) = json_histograms(tool)
    seen = slots_of(h)
    assert_agrees(seen, measured, done)
    assert_mostly_2ms(seen, measured)
    assert "(uprobe mode" in tool.stderr


def test_uprobe_recursion_times_every_level(latprog):
    """lat_recurse nests three levels (~1.4, ~5.6, ~22 ms): each level is timed on its own."""
    tool, done, measured = traced(latprog, ["recurse", 20], ["-u", "--json", f"{latprog}:lat_recurse"])
    seen = slots_of(json_histograms(tool)[0])
    assert_agrees(seen, measured, 3 * done)


def test_uprobe_longjmp_does_not_break_later_calls(latprog):
    """lat_jump never returns (longjmp); its frames are dropped, lat_work stays exact (-F, glob)."""
    tool, done, measured = traced(latprog, ["jump", 40, 1000], ["-u", "--json", "-F", f"{latprog}:lat_[wj]*"])
    assert "Tracing 2 functions" in tool.stderr
    hists = json_histograms(tool)
    assert [h["key"] for h in hists] == ["lat_work"]
    assert_agrees(slots_of(hists[0]), measured, done)


def test_libc_short_name(latprog):
    tool, done, measured = traced(latprog, ["libc", 100, 2000], ["-u", "--json", "c:usleep"])
    assert_agrees(slots_of(json_histograms(tool)[0]), measured, done)
    assert "libc" in tool.stderr


# ------------------------------------------------------------------------------ output
def _text_slots(text: str) -> dict[int, int]:
    out = {}
    for lo, _hi, count in re.findall(r"^\s*(\d+) -> (\d+)\s*: (\d+)\s+\|", text, re.M):
        if int(count):
            out[slot_of(int(lo))] = int(count)
    return out


def test_text_and_json_agree(latprog):
    child = Child(latprog, "work", 120, 1500)
    try:
        text = Tool("funclatency", "-u", "-p", str(child.pid), "syscall:nanosleep").ready(READY)
        js = Tool("funclatency", "-u", "--json", "-p", str(child.pid), "syscall:nanosleep").ready(READY)
        child.go()
        child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    text.stop()
    js.stop()
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["usecs", ":", "count", "distribution"]
    assert _text_slots(text.stdout) == slots_of(json_histograms(js)[0])
    h = json_histograms(js)[0]
    avg = re.search(r"avg = (\d+) usecs, total: (\d+) usecs, count: (\d+)", text.stderr)
    assert avg and int(avg.group(3)) == h["count"] == 120
    assert abs(int(avg.group(2)) - h["sum"]) <= h["sum"] * 0.02  # two runs, same calls


def test_interval_output_adds_up(latprog):
    child = Child(latprog, "work", 150, 2000)
    try:
        js = Tool("funclatency", "--json", "-i", "0.2", "-p", str(child.pid), "syscall:nanosleep").ready(READY)
        text = Tool("funclatency", "-T", "-i", "0.2", "-p", str(child.pid), "syscall:nanosleep").ready(READY)
        child.go()
        child.finish()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    js.stop()
    text.stop()
    recs = [r for r in js.json_lines() if r.get("type") == "histograms"]
    assert len(recs) >= 2
    assert sum(h["count"] for r in recs for h in r["histograms"]) == 150
    assert all(0.1 < r["interval"] < 5 for r in recs[:-1])
    stamps = re.findall(r"^\d\d:\d\d:\d\d$", text.stdout, re.M)
    assert len(stamps) >= 2
    assert sum(_text_slots(block).get(s, 0) for block in text.stdout.split("\n\n") for s in range(64)) == 150


# ------------------------------------------------------------------------------ errors, exit
def test_kernel_function_without_fentry_or_kprobe_is_one_clear_line():
    f = Features()
    if f.has("kprobe") or f.has("fentry"):
        pytest.skip("this kernel has kernel-function hooks (see the kernelfunc tests)")
    problems = run_many([
        (["funclatency", "vfs_read"], "Time the system call instead: bpfscope funclatency syscall:read"),
        (["funclatency", "k:vfs_read"], "neither fentry nor kprobes"),
        (["funclatency", "-k", "vfs_read"], "does not allow kprobes"),
        (["funclatency", "-F", "vfs_*"], "bpfscope funclatency syscall:NAME"),
        (["funclatency", "do_sys_openat2"], "bpfscope funclatency syscall:openat2"),
    ])
    assert not problems, "\n".join(problems)


def test_bad_input_is_one_clear_line():
    problems = run_many([(["funclatency", *args], needle) for args, needle in [
        (["syscall:no_such_call"], "no system call matches"),
        (["no_such_lib_xyz:foo"], "cannot find library"),
        (["/bin/true:no_such_function_xyz"], "no function matches"),
        (["/etc/passwd:foo"], "not an ELF"),
        (["c:"], "missing function"),
        (["t:sched:sched_switch"], "t:syscalls:NAME"),
        (["-u", "-m", "syscall:read"], "exclusive"),
        (["-F", "syscall:*"], "at most 20"),
        (["--mode", "uprobe", "syscall:read"], "cannot time a syscall"),
        (["-k", "syscall:read"], "kernel functions only"),
        (["-r", "syscall:("], "bad regular expression"),
        (["--cgroup", "no-such-cgroup-xyz", "syscall:read"], "no such cgroup"),
        (["-p", "0", "syscall:read"], "minimum"),
        ([], "required"),
        (["-p", "4194000", "syscall:read"], "no process 4194000"),
    ]])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_fast_prints_and_releases_programs(sig):
    earlier = set(program_names())
    tool = Tool("funclatency", "syscall:read").ready(READY)
    before = {i for i, n in program_names().items() if n in PROGS and i not in earlier}
    assert before, "funclatency's programs should be loaded"
    took = tool.stop(sig)
    assert tool.proc.returncode == 0, tool.stderr
    assert took < 1.5, f"exit took {took:.2f}s"
    assert "nsecs" in tool.stdout and "Detaching..." in tool.stderr
    assert not set(program_names()) & before


def test_duration_stops_by_itself():
    t0 = time.monotonic()
    r = run_cli("funclatency", "-d", "0.3", "syscall:getppid")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 10
    assert "nsecs" in r.stdout


def test_cgroup_filter(latprog):
    from bpfscope.k8s.cgroups import cgroup2_mount

    cg = Path(cgroup2_mount()) / f"bpfscope-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    inside = Child(latprog, "work", 30, 1000)
    outside = Child(latprog, "work", 20, 1000)
    try:
        (cg / "cgroup.procs").write_text(str(inside.pid))
        tool = Tool("funclatency", "--json", "--cgroup", str(cg), "syscall:nanosleep").ready(READY)
        inside.go()
        outside.go()
        inside.finish()
        outside.finish()
        tool.stop()
    finally:
        for c in (inside, outside):
            if c.proc.poll() is None:
                c.proc.kill()
            c.proc.wait()
        cg.rmdir()
    assert json_histograms(tool)[0]["count"] == 30


def test_doctor_reports_modes_per_target():
    r = run_cli("doctor", "--json")
    rows = {row["target"]: row for row in json.loads(r.stdout)["tools"]["funclatency"]}
    assert rows["syscall:NAME"]["usable"] and rows["syscall:NAME"]["mode"].startswith("tracepoint")
    assert rows["user function"]["usable"] and rows["user function"]["mode"].startswith("uprobe")
    f = Features()
    assert rows["kernel function"]["usable"] == (f.has("fentry") or f.has("kprobe"))


# ------------------------------------------------------------------ kernel functions (6.1 VM)
@pytest.mark.kernelfunc
@pytest.mark.parametrize("flags,mode", [([], "fentry"), (["-k"], "kprobe")])
def test_kernel_function(latprog, flags, mode):
    """vfs_read in the program that does 1000 read()s: the read in flight at attach is not
    counted (fentry: the call entered before the trampoline; kprobe: no kretprobe armed)."""
    tool, done, _ = traced(latprog, ["reads", 1000], ["--json", *flags, "vfs_read"])
    assert f"({mode} mode" in tool.stderr
    (h,) = json_histograms(tool)
    assert h["count"] == done == 1000
    assert tool.json_lines()[-1]["lost_events"] == 0


@pytest.mark.kernelfunc
@pytest.mark.parametrize("flags", [[], ["-k"]])
def test_kernel_glob_per_function(latprog, flags):
    tool, done, measured = traced(latprog, ["work", 50, 2000], ["--json", "-u", "-F", *flags, "hrtimer_nanosleep*"])
    by_key = {h["key"]: h for h in json_histograms(tool)}
    assert by_key["hrtimer_nanosleep"]["count"] == done
    assert_agrees(slots_of(by_key["hrtimer_nanosleep"]), measured, done)


@pytest.mark.kernelfunc
def test_kernel_function_recursion_and_nesting(latprog):
    """Nested kernel functions (do_nanosleep inside hrtimer_nanosleep) each timed, per function."""
    tool, done, measured = traced(
        latprog, ["work", 40, 2000], ["--json", "-u", "-F", "-r", "(hrtimer_nanosleep|do_nanosleep)$"]
    )
    by_key = {h["key"]: h for h in json_histograms(tool)}
    assert by_key["hrtimer_nanosleep"]["count"] == done
    assert by_key["do_nanosleep"]["count"] == done
    assert by_key["do_nanosleep"]["sum"] <= by_key["hrtimer_nanosleep"]["sum"]
