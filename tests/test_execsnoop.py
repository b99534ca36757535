"""execsnoop on the real kernel: spawn processes, compare what it saw with what we did."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from bpfscope.bpf.object import program_names
from tests.helpers import ToolProcess, programs_left, run_cli

pytestmark = pytest.mark.bpf
EXEC_PROGS = {n[:15] for n in ("tp_enter_execve", "tp_exit_execve", "tp_enter_execveat", "tp_exit_execveat")}  # kernel keeps 15 chars


def _spawn_markers(n: int, tag: str) -> list[list[str]]:
    argvs = []
    for i in range(n):
        argv = ["/bin/true", f"{tag}-{i}", "with space", "non-ASCII é ü 日本"]
        subprocess.run(argv, check=True)
        argvs.append(argv)
    return argvs


def test_reports_each_exec_once_with_ppid_uid_retval():
    tag = f"m{uuid.uuid4().hex[:10]}"
    tool = ToolProcess("execsnoop", "--json").ready()
    argvs = _spawn_markers(50, tag)
    time.sleep(0.3)
    tool.stop()
    events = [e for e in tool.json_lines() if e.get("argv") and any(tag in a for a in e["argv"])]
    seen = {}
    for e in events:
        seen.setdefault(e["argv"][1], []).append(e)
    assert len(seen) == 50, f"saw {len(seen)} of 50 markers"
    for argv in argvs:
        got = seen[argv[1]]
        assert len(got) == 1, f"{argv[1]} reported {len(got)} times"
        e = got[0]
        assert e["argv"] == argv  # spaces and non-ASCII intact
        assert e["ppid"] == os.getpid()
        assert e["uid"] == os.getuid()
        assert e["retval"] == 0
        assert e["comm"] == "true"
        assert e["filename"] == "/bin/true"
        assert e["cgroup_id"] > 0
    summary = tool.json_lines()[-1]
    assert summary == {"type": "summary", "lost_events": 0}


def test_text_output_has_bcc_columns():
    tag = f"t{uuid.uuid4().hex[:10]}"
    tool = ToolProcess("execsnoop").ready()
    subprocess.run(["/bin/echo", tag, "x y"], stdout=subprocess.DEVNULL, check=True)
    time.sleep(0.3)
    tool.stop()
    lines = tool.stdout.splitlines()
    assert lines[0].split() == ["PCOMM", "PID", "PPID", "RET", "ARGS"]
    row = next(line for line in lines if tag in line)
    fields = row.split()
    assert fields[0] == "echo"
    assert int(fields[2]) == os.getpid()
    assert fields[3] == "0"
    assert row.endswith(f"/bin/echo {tag} x y")


def _failed_exec(path: str) -> None:
    with pytest.raises(FileNotFoundError):
        subprocess.run([path, "arg"])


def test_failed_execs_only_with_x():
    missing = f"/nonexistent-{uuid.uuid4().hex[:8]}"
    plain = ToolProcess("execsnoop", "--json").ready()
    with_x = ToolProcess("execsnoop", "--json", "-x").ready()
    _failed_exec(missing)
    time.sleep(0.3)
    plain.stop()
    with_x.stop()
    assert not [e for e in plain.json_lines() if e.get("filename") == missing]
    failed = [e for e in with_x.json_lines() if e.get("filename") == missing]
    assert len(failed) == 1
    assert failed[0]["retval"] == -2  # -ENOENT
    assert failed[0]["ppid"] == os.getpid()


def test_name_filter():
    tag = f"n{uuid.uuid4().hex[:10]}"
    tool = ToolProcess("execsnoop", "--json", "-n", "^echo$").ready()
    subprocess.run(["/bin/echo", tag], stdout=subprocess.DEVNULL, check=True)
    subprocess.run(["/bin/true", tag], check=True)
    time.sleep(0.3)
    tool.stop()
    got = [e for e in tool.json_lines() if tag in e.get("argv", [None, None])[1:]]
    assert [e["comm"] for e in got] == ["echo"]


def test_line_filter():
    tag = f"l{uuid.uuid4().hex[:10]}"
    tool = ToolProcess("execsnoop", "--json", "-l", f"{tag}-keep").ready()
    subprocess.run(["/bin/true", f"{tag}-keep"], check=True)
    subprocess.run(["/bin/true", f"{tag}-drop"], check=True)
    time.sleep(0.3)
    tool.stop()
    args = [e["argv"][1] for e in tool.json_lines() if "argv" in e and len(e["argv"]) > 1]
    assert f"{tag}-keep" in args and f"{tag}-drop" not in args


def test_uid_filter_in_kernel():
    tag = f"u{uuid.uuid4().hex[:10]}"
    tool = ToolProcess("execsnoop", "--json", "-u", "65534").ready()
    subprocess.run(["/bin/true", f"{tag}-nobody"], check=True, user=65534)
    subprocess.run(["/bin/true", f"{tag}-root"], check=True)
    time.sleep(0.3)
    tool.stop()
    got = [e for e in tool.json_lines() if "argv" in e]
    assert [e["argv"][1] for e in got if tag in " ".join(e["argv"])] == [f"{tag}-nobody"]
    assert all(e["uid"] == 65534 for e in got)


def test_max_args_truncates_and_says_so():
    tool = ToolProcess("execsnoop", "--json", "--max-args", "3").ready()
    tag = f"a{uuid.uuid4().hex[:10]}"
    subprocess.run(["/bin/true", tag, "2", "3", "4", "5"], check=True)
    time.sleep(0.3)
    tool.stop()
    e = next(e for e in tool.json_lines() if tag in e.get("argv", []))
    assert e["argv"] == ["/bin/true", tag, "2"]
    assert e["args_truncated"] is True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_fast_and_releases_programs(sig):
    tool = ToolProcess("execsnoop").ready()
    during = {i for i, n in program_names().items() if n in EXEC_PROGS}
    assert len(during) >= 4, f"expected execsnoop's programs loaded, saw {during}"
    took = tool.stop(sig)
    assert tool.proc.returncode == 0, tool.stderr
    assert took < 1.0, f"exit took {took:.2f}s"
    assert "Traceback" not in tool.stderr
    left = programs_left(during)
    assert not left, f"programs still loaded after exit: {left}"


def test_duration_stops_by_itself():
    t0 = time.monotonic()
    r = run_cli("execsnoop", "-d", "0.5")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 5


def test_doctor_reports_this_kernel():
    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    import json

    rep = json.loads(r.stdout)
    feats = rep["features"]
    assert feats["tracepoint"]["available"] is True
    assert feats["kprobe"]["available"] is False
    assert feats["fentry"]["available"] is False
    assert "Operation not permitted" in feats["fentry"]["detail"]
    assert feats["ringbuf"]["available"] is True
    assert rep["tools"]["execsnoop"][0]["mode"].startswith("tracepoint")
    text = run_cli("doctor").stdout
    assert "execsnoop" in text and "fentry" in text


@pytest.mark.parametrize(
    "args,needle",
    [
        (["nosuchtool"], "unknown tool"),
        (["execsnoop", "-u", "abc"], "uid"),
        (["execsnoop", "-n", "("], "bad regular expression"),
        (["execsnoop", "--max-args", "999"], "maximum"),
        (["execsnoop", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle):
    r = run_cli(*args)
    assert r.returncode != 0
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_not_root_is_a_clear_error():
    """Run the CLI in a forked child that dropped to nobody (the venv's python may live
    under /root, which nobody cannot exec, so fork instead of exec)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        import sys

        sys.stderr = os.fdopen(w, "w")
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        from bpfscope.cli import main

        rc = main(["execsnoop", "-d", "0.1"])
        sys.stderr.flush()
        os._exit(rc)
    os.close(w)
    err = b""
    while chunk := os.read(r, 4096):
        err += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    text = err.decode()
    assert os.waitstatus_to_exitcode(status) != 0
    assert "root" in text and text.count("\n") == 1
    assert "Traceback" not in text
