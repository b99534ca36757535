"""stackcount on the real kernel: a tracepoint, a user function counted exactly (uprobe on
tests/cprogs/stk_calls.c), the kernel-function path (here: one clear error; in the 6.1 VM:
fentry and kprobe for real), and stack-map collisions counted without losing counts."""

from __future__ import annotations

import os
import time

import pytest

from bpfscope.tools.stackcount import parse_pattern, resolve_binary
from tests.helpers import ToolProcess, run_cli
from tests.stkprogs import READY_S, STOP_S, Prog, build, parse_text_stacks

pytestmark = pytest.mark.bpf

CALLS = 1000


def _stacks(tool: ToolProcess) -> list[dict]:
    return next(o for o in tool.json_lines() if o.get("type") == "stacks")["stacks"]


def test_tracepoint_sched_switch():
    tool = ToolProcess("stackcount", "t:sched:sched_switch", "-d", "1", "--json").ready(READY_S)
    time.sleep(0.05)  # at least one switch of our own
    assert tool.wait(STOP_S) == 0, tool.stderr
    assert 'for "t:sched:sched_switch" (tracepoint mode)' in tool.stderr
    stacks = _stacks(tool)
    assert stacks and sum(s["count"] for s in stacks) > 0
    for s in stacks:
        assert s["kinds"][0] == "comm"
    kernel = [s for s in stacks if "kernel" in s["kinds"]]
    assert kernel
    # the stack ends where the event fired (tracing machinery trimmed), deepest last
    assert all(s["frames"][-1] in ("__schedule", "schedule") for s in kernel), {s["frames"][-1] for s in kernel}


def test_uprobe_counts_every_call_exactly():
    exe = build("stk_calls")
    with Prog("stk_calls", str(CALLS)) as prog:
        p = str(prog.pid)
        js = ToolProcess("stackcount", "-p", p, f"{exe}:counted_fn", "--json")
        text = ToolProcess("stackcount", "-p", p, "-P", f"{exe}:counted_fn")
        js.ready(READY_S)
        text.ready(READY_S)
        prog.send()
        prog.expect("done")
        time.sleep(0.1)
        js.stop(timeout=STOP_S)
        text.stop(timeout=STOP_S)
    assert js.proc.returncode == 0 and text.proc.returncode == 0, js.stderr + text.stderr
    assert "Tracing 1 functions" in js.stderr
    stacks = _stacks(js)
    assert sum(s["count"] for s in stacks) == CALLS
    for s in stacks:
        assert s["frames"][0] == "stk_calls"
        assert s["frames"][-1] == "counted_fn"  # leaf: the probed function
        assert "main" in s["frames"]
    blocks = parse_text_stacks(text.stdout)
    assert sum(n for _, _, n in blocks) == CALLS
    assert {c for _, c, _ in blocks} == {f"stk_calls ({p})"}  # -P: per process
    assert json_summary_ok(js)


def json_summary_ok(tool: ToolProcess) -> bool:
    summary = tool.json_lines()[-1]
    return summary["type"] == "summary" and summary["lost_events"] == 0


def test_tiny_stack_map_collisions_counted_and_recovered():
    """100 distinct stacks into a 64-slot stack map: the collisions are counted, and the
    collided stacks come whole through the ring buffer: every call counted, with its stack."""
    exe = build("stk_calls")
    with Prog("stk_calls", str(CALLS), "100") as prog:
        tool = ToolProcess("stackcount", "-p", str(prog.pid), "--stack-storage-size", "64", "-U",
                           f"{exe}:counted_fn", "--json").ready(READY_S)
        prog.send()
        prog.expect("done")
        time.sleep(0.1)
        tool.stop(timeout=STOP_S)
    assert tool.proc.returncode == 0, tool.stderr
    stacks = _stacks(tool)
    assert sum(s["count"] for s in stacks) == CALLS
    assert not [s for s in stacks if "[Missed User Stack]" in s["frames"]]
    # depth d: d frames of `deep` under main; 100 depths = 100 distinct stacks, 10 calls each
    depths = {s["frames"].count("deep"): s["count"] for s in stacks}
    assert len(depths) == 100 and set(depths.values()) == {CALLS // 100}, depths
    summary = tool.json_lines()[-1]
    assert summary["stack_collisions"] >= summary["stacks_recovered"] >= (100 - 64) * (CALLS // 100)
    assert summary["stack_errors"] == 0 and "WARNING" not in tool.stderr


def test_process_exiting_during_the_run():
    exe = build("stk_calls")
    with Prog("stk_calls", str(CALLS), "0", "exit") as prog:
        tool = ToolProcess("stackcount", "-p", str(prog.pid), f"{exe}:counted_fn", "-f").ready(READY_S)
        prog.send()
        prog.expect("done")
        prog.proc.wait()
        time.sleep(0.1)
        tool.stop(timeout=STOP_S)
    assert tool.proc.returncode == 0, tool.stderr
    assert "Traceback" not in tool.stderr
    lines = [line.rsplit(" ", 1) for line in tool.stdout.splitlines()]
    assert sum(int(n) for _, n in lines) == CALLS
    for st, _ in lines:
        assert st.split(";")[-1] == "counted_fn"
        assert all(f == "[unknown]" or not f.startswith("0x") for f in st.split(";"))


def test_kernel_function_is_one_clear_error_here():
    r = run_cli("stackcount", "do_nanosleep", "-d", "0.5")
    assert r.returncode == 3, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "fentry" in r.stderr and "kprobe" in r.stderr and "t:sched:sched_switch" in r.stderr


@pytest.mark.kernelfunc
@pytest.mark.parametrize("mode", ["fentry", "kprobe"])
def test_kernel_function_counts_do_nanosleep(mode):
    """Kernel matrix VM only (kprobes and fentry): do_nanosleep once per nanosleep()."""
    import subprocess
    import sys

    code = "import sys, time\nsys.stdin.readline()\nfor _ in range(50): time.sleep(0.001)\nprint('done', flush=True)\n" \
           "sys.stdin.readline()\n"
    prog = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        tool = ToolProcess("stackcount", "-p", str(prog.pid), "--mode", mode, "do_nanosleep", "--json").ready(READY_S)
        prog.stdin.write("go\n")
        prog.stdin.flush()
        assert prog.stdout.readline().strip() == "done"
        time.sleep(0.1)
        tool.stop(timeout=STOP_S)
    finally:
        prog.kill()
        prog.wait()
    assert tool.proc.returncode == 0, tool.stderr
    assert f"({mode} mode)" in tool.stderr
    stacks = _stacks(tool)
    assert sum(s["count"] for s in stacks) == 50
    for s in stacks:
        assert "do_nanosleep" in s["frames"], s
        assert "hrtimer_nanosleep" in s["frames"], s
        assert not any(f.startswith(("bpf_prog_", "bpf_trampoline")) for f in s["frames"]), s


@pytest.mark.parametrize(
    "pattern,needle",
    [
        ("t:sched", "expected t:CATEGORY:EVENT"),
        ("t:nosuchcat:nosuchevent", "no tracepoint nosuchcat:nosuchevent"),
        ("c:no_such_function_xyz", "no function matching 'no_such_function_xyz'"),
        ("nosuchlibxyz:foo", "can't find library or program 'nosuchlibxyz'"),
        ("/no/such/file:foo", "no such file"),
        ("u:c:probe", "USDT"),
        ("a:b:c:d", "bad pattern"),
        ("tcp_*", "wildcards"),
        # perf events (tests/test_stackcount_events.py)
        ("sw:no-such-event", "unknown event 'no-such-event'"),
        ("sw:cycles", "cycles is a hardware event: write hw:cycles"),
        ("hw:page-faults", "page-faults is a software event"),
        ("sw:page-faults:0", "bad period '0'"),
        ("sw:page-faults:x", "bad period 'x'"),
        ("sw:cpu-clock:1", "the shortest period is"),
        ("sw:", "expected sw:EVENT[:PERIOD]"),
    ],
)
def test_bad_patterns_are_one_clear_line(pattern, needle):
    r = run_cli("stackcount", pattern, "-d", "0.2")
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_pattern_forms_and_library_resolution():
    assert parse_pattern("t:sched:sched_switch").kind == "tracepoint"
    assert parse_pattern("do_nanosleep").kind == "kfunc"
    assert parse_pattern("k:do_nanosleep").name == "do_nanosleep"
    assert parse_pattern("p::vfs_read").kind == "kfunc"
    t = parse_pattern("c:malloc")
    assert (t.kind, t.library, t.name) == ("uprobe", "c", "malloc")
    t = parse_pattern("p:/usr/bin/bash:readline")
    assert (t.library, t.name) == ("/usr/bin/bash", "readline")
    libc = resolve_binary("c", [])
    assert os.path.basename(libc).startswith("libc.so") and open(libc, "rb").read(4) == b"\x7fELF"
    assert resolve_binary("c", [os.getpid()]).startswith(f"/proc/{os.getpid()}/root/")
    assert resolve_binary("true", []).endswith("/true")
