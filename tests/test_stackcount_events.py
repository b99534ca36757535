"""stackcount sw:EVENT: stacks of where software perf events happen, counted against the
work a test program did (getrusage), through folded, SVG and pprof output."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from bpfscope.render.pprof import decode_pprof, from_pprof
from bpfscope.tools.stackcount import parse_pattern
from tests.helpers import ToolProcess, build_c, run_cli
from tests.stkprogs import READY_S, STOP_S, svg_frames

pytestmark = pytest.mark.bpf
PAGES = 20000
SLEEPS = 500


@pytest.fixture(scope="module")
def evwork(tmp_path_factory) -> Path:
    src = (Path(__file__).with_name("cprogs") / "evwork.c").read_text()
    return build_c(src, tmp_path_factory.mktemp("evwork") / "evwork")


def traced_work(evwork: Path, work: list[str], *tool_args: str) -> tuple[ToolProcess, dict]:
    """Start evwork, trace it with stackcount, let it work; (stopped tool, its rusage record)."""
    proc = subprocess.Popen([str(evwork), *work], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        tool = ToolProcess("stackcount", "-p", str(proc.pid), *tool_args).ready(READY_S)
        proc.stdin.write("\n")
        proc.stdin.flush()
        res = json.loads(proc.stdout.readline())
        proc.wait(timeout=60)
        time.sleep(0.2)
        tool.stop(timeout=STOP_S)
    finally:
        proc.kill()
        proc.wait()
    assert tool.proc.returncode == 0, tool.stderr
    assert "Traceback" not in tool.stderr
    return tool, res


def test_page_faults_land_on_the_touching_function_in_folded_svg_and_pprof(evwork, tmp_path):
    svg, pprof = tmp_path / "faults.svg", tmp_path / "faults.pb.gz"
    tool, res = traced_work(evwork, ["faults", str(PAGES)], "sw:page-faults", "-f", "--svg", str(svg),
                            "--pprof", str(pprof))
    assert 'for "sw:page-faults:1" (perf_event mode)' in tool.stderr
    folded = [ln.rsplit(" ", 1) for ln in tool.stdout.splitlines() if ln.strip()]
    touching = sum(int(n) for st, n in folded if "touch_pages" in st.split(";"))
    total = sum(int(n) for _, n in folded)
    assert abs(touching - PAGES) <= 0.05 * PAGES, tool.stdout[-2000:]
    # every fault the process took is counted once (a few more in exit and ld.so, none missing)
    assert res["minflt"] <= total + 5 and total <= res["minflt"] + 300, (total, res)
    # the user stack ends in the faulting function; kernel frames (if any) come after it
    leafs = {st.split(";")[-1] for st, n in folded if "touch_pages" in st.split(";")}
    assert "touch_pages" in leafs or any("fault" in leaf for leaf in leafs), leafs

    frames = svg_frames(svg.read_text())
    in_svg = sum(n for name, n, _ in frames if name == "touch_pages")
    assert in_svg == touching
    assert any(t.startswith("touch_pages (") and "page-faults" in t for _, _, t in frames), frames[:5]

    prof = from_pprof(pprof.read_bytes())
    assert sum(v for st, v in prof.items() if "touch_pages" in st) == touching
    assert decode_pprof(pprof.read_bytes())["sample_type"][0][0] == "page-faults"


def test_context_switches_of_a_sleeping_program(evwork):
    tool, res = traced_work(evwork, ["sleep", str(SLEEPS), "1000"], "sw:context-switches", "--json")
    stacks = next(o for o in tool.json_lines() if o.get("type") == "stacks")["stacks"]
    switches = res["nvcsw"] + res["nivcsw"]
    assert switches >= SLEEPS
    total = sum(s["count"] for s in stacks)
    assert switches <= total <= switches + 20, (total, res)
    sleeping = sum(s["count"] for s in stacks if any("nanosleep" in f for f in s["frames"]))
    assert abs(sleeping - SLEEPS) <= 0.05 * SLEEPS, [(s["frames"][-6:], s["count"]) for s in stacks]
    assert all(s["frames"][0] == "evwork" for s in stacks)
    summary = tool.json_lines()[-1]
    assert summary["type"] == "summary" and summary["lost_events"] == 0


def test_a_period_samples_one_event_in_period(evwork):
    tool, res = traced_work(evwork, ["faults", str(PAGES)], "sw:faults:100", "-f")
    assert 'for "sw:page-faults:100"' in tool.stderr
    folded = [ln.rsplit(" ", 1) for ln in tool.stdout.splitlines() if ln.strip()]
    samples = sum(int(n) for st, n in folded if "touch_pages" in st.split(";"))
    assert abs(samples - PAGES / 100) <= 0.1 * PAGES / 100 + 2, samples


def test_pattern_forms():
    t = parse_pattern("sw:page-faults")
    assert (t.kind, t.name, t.category, t.period) == ("perf", "page-faults", "sw", 1)
    assert parse_pattern("software:cs:10").name == "context-switches"
    assert parse_pattern("software:cs:10").period == 10
    assert parse_pattern("sw:cpu-clock").period == 1_000_000  # clocks: 1 ms by default
    assert parse_pattern("hw:cycles:100000").category == "hw"


def test_hardware_event_without_pmu_is_one_clear_line():
    from bpfscope.bpf.features import Features

    r = run_cli("stackcount", "hw:cache-misses:10000", "-d", "0.3")
    if Features().has("hw_pmu"):
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0 and "PMU" in r.stderr and "sw:page-faults" in r.stderr
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_profile_refuses_a_clock_period_below_the_kernel_minimum():
    r = run_cli("profile", "-c", "1", "-d", "0.2")
    assert r.returncode != 0 and "the shortest period is" in r.stderr and "Traceback" not in r.stderr
