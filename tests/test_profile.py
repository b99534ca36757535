"""profile on the real kernel: a program that spends 3/4 of its CPU in hot_a and 1/4 in
hot_b (tests/cprogs/stk_hot.c) must come out 3:1 in every output format."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from bpfscope.bpf.object import program_names
from bpfscope.render.folded import parse_folded
from bpfscope.render.pprof import decode_pprof, from_pprof
from tests.helpers import ToolProcess, run_cli
from tests.stkprogs import READY_S, STOP_S, Prog, parse_text_stacks, svg_frames, total_with, wait_cpu

pytestmark = pytest.mark.bpf

HZ = 499
CPU_S = 1.5  # CPU seconds of the target per profile: ~750 samples, 3:1 within 25% at > 3 sigma


def _ratio(a: int, b: int) -> float:
    assert b > 0, f"hot_b never sampled (hot_a {a})"
    return a / b


def _check_3_to_1(a: int, b: int, where: str) -> None:
    assert a + b >= 0.6 * CPU_S * HZ, f"{where}: too few samples ({a} + {b})"
    r = _ratio(a, b)
    assert 3 * 0.75 <= r <= 3 * 1.25, f"{where}: hot_a/hot_b = {a}/{b} = {r:.2f}, expected 3 +- 25%"


def _stacks(t: ToolProcess) -> list[dict]:
    return next(o for o in t.json_lines() if o.get("type") == "stacks")["stacks"]


@pytest.fixture(scope="module")
def hot_run(tmp_path_factory):
    """One stk_hot, profiled by several configurations at once until it has used CPU_S
    seconds of CPU once they all sample (~CPU_S * HZ samples each, however loaded the machine)."""
    d = tmp_path_factory.mktemp("profile")
    svg, pprof = d / "cpu.svg", d / "cpu.pb.gz"
    with Prog("stk_hot") as prog:
        p = str(prog.pid)
        run = ("-F", str(HZ))
        tools = {
            "text": ToolProcess("profile", "-p", p, *run),
            "files": ToolProcess("profile", "-p", p, *run, "-f", "--svg", str(svg), "--pprof", str(pprof)),
            "user": ToolProcess("profile", "-p", p, "-U", *run, "--json"),
            "kernel": ToolProcess("profile", "-p", p, "-K", *run, "--json"),
            "tid_period": ToolProcess("profile", "-L", p, "-c", "2000000", "--json"),
        }
        for t in tools.values():
            t.ready(READY_S)
        wait_cpu(prog.pid, CPU_S)
        for t in tools.values():
            t.proc.send_signal(signal.SIGINT)
        for name, t in tools.items():
            assert t.wait(STOP_S) == 0, (name, t.stderr)
            assert "Traceback" not in t.stderr, (name, t.stderr)
    return {"tools": tools, "pid": p, "svg": svg, "pprof": pprof}


def test_hot_a_hot_b_3_to_1_in_text_folded_svg_pprof(hot_run):
    p = hot_run["pid"]
    text, files = hot_run["tools"]["text"], hot_run["tools"]["files"]
    assert f"Sampling at {HZ} Hertz of PID {p} by user + kernel stack" in text.stderr

    # text, as BCC prints it: leaf first, then "-  comm (pid)", then the count
    blocks = parse_text_stacks(text.stdout)
    assert all(comm == f"stk_hot ({p})" for _, comm, _ in blocks), {c for _, c, _ in blocks}
    a = sum(n for frames, _, n in blocks if "hot_a" in frames)
    b = sum(n for frames, _, n in blocks if "hot_b" in frames)
    _check_3_to_1(a, b, "text")
    # the biggest hot_a stack (a sample in hot_a's prologue, before it set its frame pointer,
    # misses its caller burn: a frame-pointer unwinder's usual artifact, in a few samples)
    leaf_first = max((b for b in blocks if b[0] and b[0][0] == "hot_a"), key=lambda b: b[2])[0]
    assert leaf_first[:3] == ["hot_a", "burn", "main"], leaf_first

    # folded: root first (comm, then main, burn, hot_a), one line per stack
    folded = parse_folded(files.stdout)
    assert all(st[0] == "stk_hot" for st in folded)
    _check_3_to_1(total_with(folded, lambda st: "hot_a" in st), total_with(folded, lambda st: "hot_b" in st), "folded")
    hot = max(folded, key=folded.get)
    assert hot[-3:] == ("main", "burn", "hot_a"), hot

    # SVG: the frames' own counts (the flame graph merges equal frames per parent)
    frames = svg_frames(hot_run["svg"].read_text())
    a = sum(n for name, n, _ in frames if name == "hot_a")
    b = sum(n for name, n, _ in frames if name == "hot_b")
    _check_3_to_1(a, b, "svg")
    assert any(t.startswith("hot_a (") and " samples, " in t for _, _, t in frames)

    # pprof: decode the profile, stacks root first
    data = hot_run["pprof"].read_bytes()
    prof = from_pprof(data)
    _check_3_to_1(total_with(prof, lambda st: "hot_a" in st), total_with(prof, lambda st: "hot_b" in st), "pprof")
    meta = decode_pprof(data)
    assert meta["period_type"] == ("cpu", "nanoseconds")
    assert meta["period"] == int(1e9 / HZ)


def test_user_stacks_only_and_kernel_stacks_only(hot_run):
    u = _stacks(hot_run["tools"]["user"])
    assert u and all(set(s["kinds"]) <= {"comm", "user", "unknown"} for s in u)
    assert sum(s["count"] for s in u if "hot_a" in s["frames"]) > 0
    k = _stacks(hot_run["tools"]["kernel"])
    assert all(set(s["kinds"]) <= {"comm", "kernel", "unknown"} for s in k)
    assert not any("hot_a" in s["frames"] for s in k)
    assert "by kernel stack" in hot_run["tools"]["kernel"].stderr


def test_thread_filter_and_sample_period(hot_run):
    tool = hot_run["tools"]["tid_period"]
    assert f"every 2000000 events of TID {hot_run['pid']}" in tool.stderr
    t = _stacks(tool)
    a = sum(s["count"] for s in t if "hot_a" in s["frames"])
    b = sum(s["count"] for s in t if "hot_b" in s["frames"])
    assert a > b > 0


def test_json_stats_report_collisions_and_unresolved_share(hot_run):
    objs = hot_run["tools"]["user"].json_lines()
    sc = next(o for o in objs if o.get("type") == "stacks")
    st = sc["stats"]
    for key in ("stack_collisions", "stacks_recovered", "stack_errors", "unresolved_ratio",
                "unresolved_ratio_weighted", "frames_resolved",
                "lost_events", "missed_user_stacks", "processes_captured"):
        assert key in st, key
    assert 0 <= st["unresolved_ratio"] <= 1
    assert st["unresolved_ratio_weighted"] < 0.2  # stk_hot's frames are named (libc's start may not be)
    assert st["total"] == sum(s["count"] for s in sc["stacks"])
    assert st["processes_captured"] >= 1
    summary = objs[-1]
    assert summary["type"] == "summary" and summary["lost_events"] == 0 and "stack_collisions" in summary


def test_target_exiting_mid_run_keeps_named_frames():
    """-p on a process that exits after 0.6 s of a 2 s run: the run goes on and ends normally,
    its frames are named thanks to the maps captured while it was alive."""
    with Prog("stk_hot", "0.6", "wait") as prog:
        tool = ToolProcess("profile", "-p", str(prog.pid), "-F", str(HZ), "-d", "2", "-f").ready(READY_S)
        prog.send()
        prog.expect("chunks")
        prog.proc.wait()
        assert tool.wait(STOP_S) == 0, tool.stderr
    assert "Traceback" not in tool.stderr
    folded = parse_folded(tool.stdout)
    assert total_with(folded, lambda st: "hot_a" in st) > 0
    for st in folded:
        assert all(f and (f == "[unknown]" or not f.startswith("0x")) for f in st)


@pytest.fixture
def cgroup(tmp_path):
    """A fresh, empty cgroup v2 (removed afterwards)."""
    from bpfscope.k8s.cgroups import cgroup2_mount

    cg = Path(cgroup2_mount()) / f"bpfscope-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    yield cg
    for _ in range(100):
        try:
            cg.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def test_short_lived_process_started_after_attach(cgroup):
    """A process that did not exist when the profiler attached and is gone before the end:
    its user frames are still named (maps captured when its first sample was counted). The
    profile is limited to a fresh cgroup the process joins before it starts burning, so the
    run does not have to symbolize the whole machine."""
    tool = ToolProcess("profile", "-U", "--cgroup", str(cgroup), "-F", str(HZ), "--json").ready(READY_S)
    with Prog("stk_hot", "0.5", "wait") as prog:
        (cgroup / "cgroup.procs").write_text(str(prog.pid))
        prog.send()
        prog.expect("chunks")
        prog.proc.wait()
    assert not os.path.exists(f"/proc/{prog.pid}")
    time.sleep(0.2)
    tool.stop(timeout=STOP_S)
    assert tool.proc.returncode == 0, tool.stderr
    sc = next(o for o in tool.json_lines() if o.get("type") == "stacks")
    mine = {tuple(s["frames"]): s["count"] for s in sc["stacks"] if s["frames"][0] == "stk_hot"}
    assert mine, "no stk_hot stacks"
    named = total_with(mine, lambda st: "hot_a" in st or "hot_b" in st)
    assert named >= 0.8 * sum(mine.values()), mine
    assert sc["stats"]["processes_captured"] >= 1


def test_cgroup_filter_only_profiles_that_cgroup(cgroup):
    with Prog("stk_hot") as inside, Prog("stk_hot") as outside:
        (cgroup / "cgroup.procs").write_text(str(inside.pid))
        tool = ToolProcess("profile", "--cgroup", str(cgroup), "-F", str(HZ), "--json").ready(READY_S)
        wait_cpu(inside.pid, 0.5)
        tool.stop(timeout=STOP_S)
        assert tool.proc.returncode == 0, tool.stderr
        outside_pid = outside.pid
    stacks = _stacks(tool)
    comms = {s["frames"][0] for s in stacks}
    assert comms == {"stk_hot"}, comms
    assert sum(s["count"] for s in stacks) > 0.5 * 0.5 * HZ
    assert str(outside_pid) not in tool.stdout
    assert f"in cgroup /{cgroup.name}" in tool.stderr


def _idle_seconds() -> float:
    """CPU idle time so far, all CPUs (from /proc/stat, in USER_HZ ticks)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[4]) / os.sysconf("SC_CLK_TCK")


def test_idle_only_with_dash_i():
    """Without -I, CPU idle (pid 0) is never counted; with -I it is (swapper/N), in proportion
    to the idle time the kernel accounted meanwhile (a busy machine may have little)."""
    with_idle = ToolProcess("profile", "-I", "-K", "-F", str(HZ), "-d", "2", "-f")
    without = ToolProcess("profile", "-K", "-F", str(HZ), "-d", "2", "-f")
    with_idle.ready(READY_S)
    without.ready(READY_S)
    idle0 = _idle_seconds()
    assert with_idle.wait(STOP_S) == 0 and without.wait(STOP_S) == 0
    idle = _idle_seconds() - idle0
    assert not [st for st in parse_folded(without.stdout) if st[0].startswith("swapper/")]
    swapper = total_with(parse_folded(with_idle.stdout), lambda st: st[0].startswith("swapper/"))
    expected = idle * HZ
    if expected >= 50:
        assert swapper >= 0.3 * expected, f"{swapper} idle samples, {idle:.2f} s idle"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_prints_and_releases(sig):
    with Prog("stk_hot") as prog:
        tool = ToolProcess("profile", "-p", str(prog.pid), "-F", str(HZ), "-f").ready(READY_S)
        during = {i for i, n in program_names().items() if n == "do_sample"}
        assert during
        time.sleep(0.5)
        took = tool.stop(sig, timeout=STOP_S)
    assert tool.proc.returncode == 0, tool.stderr
    assert took < 30, f"exit took {took:.2f}s"  # includes printing the profile (symbolization)
    assert "Traceback" not in tool.stderr
    assert "hot_a" in tool.stdout
    assert not set(program_names()) & during


@pytest.mark.parametrize(
    "args,needle",
    [
        (["-F", "0"], "frequency"),
        (["-F", "99", "-c", "1000"], "not both"),
        (["-U", "-K"], "exclude each other"),
        (["-p", "4000000"], "no process with ID 4000000"),
        (["-p", "1", "-L", "1"], "not both"),
        (["--cgroup", "/no/such/cgroup-x"], "no such cgroup"),
        (["--stack-storage-size", "1"], "minimum"),
        (["-d", "1", "2"], "two durations"),
        (["-F", "900000"], "sampling rate"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle):
    r = run_cli("profile", *args, "-d", "0.2") if "-d" not in args else run_cli("profile", *args)
    assert r.returncode != 0, r.stdout
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_positional_duration_like_bcc():
    t0 = time.monotonic()
    r = run_cli("profile", "-K", "-F", "49", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 10
    assert "for 0.5 secs" in r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["type"] == "summary"


def test_help_lists_bcc_flags():
    r = run_cli("profile", "--help")
    for flag in ("-p PID", "-L TID", "-U", "-K", "-F HZ", "-c COUNT", "-I", "--cgroup", "--stack-storage-size",
                 "-f", "--svg", "--pprof", "duration"):
        assert flag in r.stdout, flag
