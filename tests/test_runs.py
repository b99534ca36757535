"""The agent's run manager: real tool runs in threads, limits, strict options, cancel."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from bpfscope.agent.runs import LimitError, Limits, RunManager
from bpfscope.bpf.object import program_names
from bpfscope.errors import UsageError
from tests.agent_helpers import owned_program_ids
from tests.helpers import programs_left

pytestmark = pytest.mark.bpf


def _wait_running(run, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if run.ctx.attached_at is not None or not run.active:
            return
        time.sleep(0.01)
    raise AssertionError("run never attached")


def test_execsnoop_run_collects_events_and_streams():
    mgr = RunManager()
    run = mgr.start("execsnoop", {"ppid": os.getpid()}, duration=10)
    _wait_running(run)
    tag = uuid.uuid4().hex[:8]
    for i in range(5):
        subprocess.run(["/bin/true", f"{tag}-{i}"], check=True)
    time.sleep(0.3)
    mgr.cancel(run.id)
    assert run.state == "cancelled"
    seen = [e["argv"][1] for e in run.events.all() if tag in e["argv"][-1]]
    assert seen == [f"{tag}-{i}" for i in range(5)]
    streamed = [d for kind, d, _ in mgr.stream(run.id) if kind == "event"]
    assert [e["argv"][1] for e in streamed if tag in e["argv"][-1]] == seen
    ctype, body = mgr.result(run.id, "text")
    assert b"PCOMM" in body and tag.encode() in body


def test_cancel_releases_bpf_programs():
    mgr = RunManager()
    run = mgr.start("execsnoop", {}, duration=30)
    _wait_running(run)
    # only this process's programs: other test runs on the machine load execsnoop too
    mine = {i for i, n in program_names(owned_program_ids()).items() if n.startswith("tp_e")}
    assert mine
    mgr.cancel(run.id)
    assert not programs_left(mine)


@pytest.mark.parametrize(
    "options",
    [
        {"uid": "0"},  # strings are not integers over the API
        {"fails": "false"},  # "false" is not a boolean
        {"uid": True},
        {"pid": "1 || 1"},
        {"name": "("},
        {"bogus": 1},
    ],
)
def test_strict_options(options):
    with pytest.raises(UsageError):
        RunManager().start("execsnoop", options, duration=1)


def test_false_is_false():
    mgr = RunManager()
    run = mgr.start("execsnoop", {"fails": False}, duration=0.2)
    mgr.wait(run.id, 10)
    assert run.options["fails"] is False and run.state == "done"


def test_concurrency_limit():
    mgr = RunManager(Limits(max_concurrent=2, max_per_tool=2))
    runs = [mgr.start("execsnoop", {}, duration=5) for _ in range(2)]
    with pytest.raises(LimitError):
        mgr.start("execsnoop", {}, duration=5)
    for r in runs:
        mgr.cancel(r.id)
