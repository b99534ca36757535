"""llcstat on the real kernel.

No PMU here: `bpfscope llcstat` must say so in one line and exit non-zero; where a PMU exists
the same test runs it for real. The sampling and per-task attribution path (perf_event programs
crediting the period to the current task, per CPU and thread) runs here for real by feeding it
software events with a known count (page faults of a program that touches N pages), and BCC's
table look and hit rate are checked on synthetic counts.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from bpfscope.bpf.object import program_names
from bpfscope.registry import RunContext
from bpfscope.render.text import TextRenderer
from bpfscope.results import Event, Notice, Summary
from bpfscope.tools import _perfevents as pe
from bpfscope.tools.llcstat import Llcstat, build_rows, collect, total_line
from tests.helpers import build_c, programs_left, run_cli
from tests.test_perfstat import prog_ids_of

pytestmark = pytest.mark.bpf
CPROGS = Path(__file__).with_name("cprogs")
PAGES = 20000


@pytest.fixture(scope="module")
def evwork(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("ev") / "evwork"
    return str(build_c((CPROGS / "evwork.c").read_text(), out))


def touch_pages(evwork: str, pages: int) -> tuple[int, dict]:
    import json

    p = subprocess.Popen([evwork, "faults", str(pages)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin and p.stdout
    pid = int(p.stdout.readline().split()[1])
    p.stdin.write("go\n")
    p.stdin.flush()
    res = json.loads(p.stdout.readline())
    assert p.wait(timeout=30) == 0
    return pid, res


def run_collect(evwork: str, period: int, per_thread: bool) -> tuple[int, dict, list[dict], list]:
    ctx = RunContext()
    gen = collect(ctx, "page-faults", "major-faults", period, per_thread)
    first = next(gen)  # attached
    assert isinstance(first, Notice)
    ours = {i for i, n in program_names().items() if n in ("on_reference", "on_miss")} & prog_ids_of(os.getpid())
    assert len(ours) == 2
    pid, res = touch_pages(evwork, PAGES)
    ctx.stop.set()
    rest = list(gen)
    assert not programs_left(ours), "programs left loaded"
    rows = [r.record for r in rest if isinstance(r, Event)]
    return pid, res, rows, rest


def test_no_pmu_is_one_clear_line_or_real_counts_with_one():
    if pe.pmu_present():
        r = run_cli("llcstat", "1", "--json")
        assert r.returncode == 0, r.stderr
        assert "Total References:" in r.stderr
        return
    r = run_cli("llcstat", "1")
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "llcstat: cannot count cache-references, cache-misses" in r.stderr and "PMU" in r.stderr
    r = run_cli("llcstat", "--events", "llc", "1")
    assert r.returncode == 3 and "LLC-loads, LLC-load-misses" in r.stderr


@pytest.mark.parametrize("period", [1, 10])
def test_sampled_counts_are_credited_to_the_task_that_caused_them(evwork, period):
    pid, res, rows, rest = run_collect(evwork, period, per_thread=False)
    mine = [r for r in rows if r["pid"] == pid]
    assert mine and all(r["comm"] == "evwork" and r["tid"] == 0 for r in mine)
    refs = sum(r["references"] for r in mine)  # over the CPUs it ran on
    assert abs(refs - PAGES) <= 0.05 * PAGES, (refs, res)
    assert refs % period == 0  # each sample credits one period
    assert sum(r["misses"] for r in mine) == 0 and all(r["hit_percent"] == 100.0 for r in mine)
    assert len({r["cpu"] for r in mine}) == len(mine)  # one row per CPU
    assert isinstance(rest[-1], Summary) and rest[-1].lost_events == 0
    assert rest[-2].message.startswith("Total References: ")


def test_per_thread_rows_carry_the_tid(evwork):
    pid, _, rows, _ = run_collect(evwork, 1, per_thread=True)
    mine = [r for r in rows if r["pid"] == pid]
    assert mine and {r["tid"] for r in mine} == {pid}  # single-threaded: tid == pid


# --------------------------------------------------------------------- synthetic counter values
def test_rows_hit_rate_and_total_like_bcc():
    rows = build_rows([
        (10, 0, 1, "app", 1000, 250),
        (10, 0, 0, "app", 3000, 30),
        (20, 0, 1, "noisy", 100, 200),  # sampled misses can exceed sampled references: BCC shows 0
        (30, 0, 0, "idle", 0, 0),  # nothing sampled: no row
    ])
    assert [(r["pid"], r["cpu"], r["hit_percent"]) for r in rows] == [(10, 0, 99.0), (10, 1, 75.0), (20, 1, 0.0)]
    assert total_line(rows) == "Total References: 4100 Total Misses: 480 Hit Rate: 88.29%"


@pytest.mark.parametrize("tid", [False, True])
def test_text_table_matches_bcc_layout(tid):
    out, err = io.StringIO(), io.StringIO()
    r = TextRenderer(out, err, columns=Llcstat.text_columns(SimpleNamespace(tid=tid)))
    rows = build_rows([(4242, 4243 if tid else 0, 3, "postgres", 3515000, 640000)])
    for row in rows:
        r.render(Event(row))
    head, line = out.getvalue().splitlines()
    if tid:
        assert head == "PID      TID      NAME             CPU     REFERENCE         MISS    HIT%"
        bcc = "%-8d %-8d %-16s %-4d %12d %12d %6.2f%%"  # noqa: UP031 - BCC's own printf format
        assert line == bcc % (4242, 4243, "postgres", 3, 3515000, 640000, 81.79)
    else:
        assert head == "PID      NAME             CPU     REFERENCE         MISS    HIT%"
        bcc = "%-8d %-16s %-4d %12d %12d %6.2f%%"  # noqa: UP031 - BCC's own printf format
        assert line == bcc % (4242, "postgres", 3, 3515000, 640000, 81.79)


def test_bad_input_is_one_clear_line():
    for args, needle in ((["-c", "0"], "minimum"), (["--events", "l2"], "not one of"), (["abc"], "number")):
        r = run_cli("llcstat", *args)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
