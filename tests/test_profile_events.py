"""profile -e EVENT: stacks of where software events happen, counted exactly at -c 1."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ToolProcess, build_c, run_cli

pytestmark = pytest.mark.bpf
PAGES = 20000


def test_page_faults_are_attributed_to_the_function_touching_pages(tmp_path):
    prog = build_c((Path(__file__).with_name("cprogs") / "evwork.c").read_text(), tmp_path / "evwork")
    work = subprocess.Popen([str(prog), "faults", str(PAGES)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert work.stdout.readline().startswith(b"ready")
    tool = ToolProcess("profile", "-e", "page-faults", "-p", str(work.pid), "-f").ready()
    work.stdin.write(b"\n")
    work.stdin.flush()
    work.wait(timeout=60)
    time.sleep(0.2)
    tool.stop()
    lines = [ln.rsplit(" ", 1) for ln in tool.stdout.splitlines() if ln.strip()]
    touching = sum(int(n) for stack, n in lines if stack.split(";")[-1] == "touch_pages")
    assert abs(touching - PAGES) <= PAGES * 0.05, tool.stdout[-2000:]


def test_unknown_event_is_one_clear_line():
    r = run_cli("profile", "-e", "no-such-event", "-d", "0.1")
    assert r.returncode != 0 and "unknown event" in r.stderr and "Traceback" not in r.stderr


def test_hardware_event_without_pmu_is_one_clear_line():
    from bpfscope.bpf.features import Features

    r = run_cli("profile", "-e", "cycles", "-c", "100000", "-d", "0.2")
    if Features().has("hw_pmu"):
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0 and "PMU" in r.stderr and "Traceback" not in r.stderr
