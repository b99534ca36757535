"""The agent's web page in Debian's headless chromium (Playwright): forms from tool schemas,
live event rows for processes the test spawns, a flame graph of a program the test runs
(zoom by click, search), histograms as bars, the metrics overview, the token flow.
Screenshots go to test-artifacts/ (gitignored)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.agent_helpers import ROOT, Agent
from tests.helpers import build_c

pytestmark = [pytest.mark.bpf, pytest.mark.browser]

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SPIN_C = r"""
volatile unsigned long sink;
__attribute__((noinline)) void %(name)s(void) { for (;;) { for (int i = 0; i < 1000; i++) sink += i; } }
int main(void) { %(name)s(); return 0; }
"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    with Agent(log=tmp_path_factory.mktemp("web") / "agent.log") as a:  # default collectors (overview)
        a.ready()
        yield a


@pytest.fixture
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.errors = errors
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-final.png"), full_page=True)
    ctx.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _open_tool(page, agent, tool: str):
    page.goto(agent.url + "/")
    page.click(f"details[data-tool={tool}] > summary")
    return page.locator(f"form[data-tool={tool}]")


def _run_id(page) -> str:
    # (no wait_for_function: the page's CSP forbids the eval it needs, and the CSP stays on)
    page.wait_for_url(re.compile(r".*#run/.+"))
    return page.url.split("#run/", 1)[1]


def test_tools_with_modes_and_forms_from_schema(page, agent):
    page.goto(agent.url + "/")
    page.wait_for_selector("details[data-tool=execsnoop]")
    summary = page.locator("details[data-tool=execsnoop] .mode").inner_text()
    assert summary.startswith("tracepoint")
    form = _open_tool(page, agent, "execsnoop")
    # one input per option of the schema, typed by it
    assert form.locator("input[name=fails][type=checkbox]").count() == 1
    assert form.locator("input[name=uid][type=number]").get_attribute("step") == "1"
    assert form.locator("input[name=name][type=text]").count() == 1
    form.locator("input[name=uid]").fill("1.5")
    form.locator("button[type=submit]").click()
    assert "integer" in form.locator(".error").inner_text()
    _shot(page, "tools")
    assert not page.errors, page.errors


def test_execsnoop_rows_appear_live_with_filter_and_pause(page, agent):
    form = _open_tool(page, agent, "execsnoop")
    form.locator("input[name=ppid]").fill(str(os.getpid()))
    form.locator("input[name=__duration]").fill("60")
    form.locator("button[type=submit]").click()
    run_id = _run_id(page)
    page.wait_for_selector("#run-state.state-running")
    with agent.client() as c:  # attached before we spawn
        deadline = time.monotonic() + 20
        while not c.get(f"/api/v1/runs/{run_id}").json()["attached"] and time.monotonic() < deadline:
            time.sleep(0.02)
    tag = uuid.uuid4().hex[:10]
    subprocess.run(["/bin/true", f"{tag}-one"], check=True)
    row = page.locator("#events tbody tr", has_text=f"{tag}-one")
    row.wait_for(timeout=10000)
    cells = row.locator("td").all_inner_texts()
    assert "true" in cells and str(os.getpid()) in cells
    heads = page.locator("#events thead th").all_inner_texts()
    assert heads[:6] == ["TIME", "COMM", "PID", "PPID", "UID", "RET"] and heads[-1] == "ARGS", heads
    subprocess.run(["/bin/true", f"{tag}-two"], check=True)
    page.locator("#events tbody tr", has_text=f"{tag}-two").wait_for(timeout=10000)
    # filter box
    page.fill("#event-filter", f"{tag}-two")
    assert page.locator("#events tbody tr:visible").count() == 1
    page.fill("#event-filter", "")
    # pause: rows are held, not lost
    page.click("#pause")
    subprocess.run(["/bin/true", f"{tag}-three"], check=True)
    expect(page.locator("#pause")).to_contain_text("1 new", timeout=10000)
    assert page.locator("#events tbody tr", has_text=f"{tag}-three").count() == 0
    page.click("#pause")
    page.locator("#events tbody tr", has_text=f"{tag}-three").wait_for(timeout=5000)
    _shot(page, "execsnoop-live")
    page.click("#run-cancel")
    page.wait_for_selector("#run-state.state-cancelled", timeout=15000)
    assert page.locator("#stream-state").inner_text().startswith("stream ended")
    assert not page.errors, page.errors


def test_profile_flame_graph_zoom_and_search(page, agent, tmp_path):
    marker = f"webspin_{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([str(build_c(SPIN_C % {"name": marker}, tmp_path / marker))])
    try:
        form = _open_tool(page, agent, "profile")
        form.locator("input[name=pid]").fill(str(proc.pid))
        form.locator("input[name=__duration]").fill("3")
        form.locator("button[type=submit]").click()
        _run_id(page)
        page.wait_for_selector("#run-state.state-done", timeout=60000)
    finally:
        proc.kill()
        proc.wait()
    page.wait_for_selector("#panel-flame:not(.hidden)")
    fg = page.frame_locator("#flame")
    frame = fg.locator("#frames > g", has=fg.locator("title", has_text=re.compile(f"^{marker} ")))
    frame.first.wait_for(timeout=20000)
    _shot(page, "flamegraph")
    # the flame graph's own viewer runs: click a frame to zoom
    w_before = float(frame.first.locator("rect").get_attribute("width"))
    frame.first.click()
    unzoom = fg.locator("#unzoom")
    page.wait_for_timeout(200)
    assert "hide" not in (unzoom.get_attribute("class") or "")
    w_after = float(frame.first.locator("rect").get_attribute("width"))
    assert w_after >= w_before and w_after > 500, (w_before, w_after)
    # search from the page's box: matched frames and the percentage
    page.fill("#flame-search", marker)
    page.click("#flame-search-btn")
    matched = fg.locator("#matched")
    matched.wait_for(state="visible", timeout=5000)
    pct = float(re.search(r"Matched: ([0-9.]+)%", matched.text_content()).group(1))
    assert pct > 50  # the spinner is nearly all of the samples of its pid
    assert fg.locator("#frames > g.m").count() >= 1
    _shot(page, "flamegraph-zoom-search")
    page.click("#flame-reset")
    page.wait_for_timeout(200)
    assert "hide" in (unzoom.get_attribute("class") or "")
    assert not page.errors, page.errors


def test_histogram_bars(page, agent):
    form = _open_tool(page, agent, "runqlat")
    form.locator("input[name=__duration]").fill("1")
    form.locator("button[type=submit]").click()
    _run_id(page)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # something to schedule
        subprocess.run(["/bin/true"], check=True)
    page.wait_for_selector("#run-state.state-done", timeout=20000)
    page.wait_for_selector("#histograms .hist .bar")
    widths = [b.evaluate("e => e.getBoundingClientRect().width") for b in page.locator("#histograms .bar").all()]
    assert max(widths) > 100 and any(w < max(widths) for w in widths)
    assert "usecs" in page.locator("#histograms .hist h4").first.inner_text()
    _shot(page, "histogram")
    assert not page.errors, page.errors


def test_overview_shows_exec_rate_and_cgroups(page, agent, tmp_path):
    comm = f"ov{uuid.uuid4().hex[:8]}"  # a command name of our own: other execs on the machine vary
    exe = tmp_path / comm
    shutil.copy("/bin/true", exe)
    page.goto(agent.url + "/#overview")
    expect(page.locator("#ov-updated")).to_have_text(re.compile("^updated"), timeout=10000)
    end = time.monotonic() + 7
    while time.monotonic() < end:  # two scrapes (3 s apart) see our execs
        subprocess.run([str(exe)], check=True)
    expect(page.locator("#ov-exec-rate")).to_have_text(re.compile("/s$"), timeout=15000)
    expect(page.locator("#ov-execs tbody tr td:first-child", has_text=re.compile(f"^{comm}$"))).to_have_count(1)
    assert page.locator("#ov-cgroups tbody tr").count() >= 1
    assert page.locator("#ov-collectors tbody tr").count() >= 1
    _shot(page, "overview")
    assert not page.errors, page.errors


def test_token_kept_in_session_storage_and_sent(browser, tmp_path):
    token = "web-token-" + uuid.uuid4().hex
    (tmp_path / "token").write_text(token)
    (tmp_path / "token").chmod(0o600)
    with Agent("--collectors", "execs", "--token-file", str(tmp_path / "token"), token=token,
               log=tmp_path / "a.log") as a:
        a.ready()
        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(a.url + "/")
        page.wait_for_selector("#banner:not(.hidden)")
        assert "token" in page.locator("#banner").inner_text()
        assert page.locator("details.tool").count() == 0
        page.fill("#token", token)
        page.click("#token-form button")
        page.wait_for_selector("details[data-tool=execsnoop]")
        assert page.evaluate("sessionStorage.getItem('bpfscope-token')") == token
        assert page.evaluate("localStorage.length") == 0
        page.reload()  # same tab: still there
        page.wait_for_selector("details[data-tool=execsnoop]")
        _shot(page, "token")
        ctx.close()
        ctx2 = browser.new_context()  # a new session does not have it
        p2 = ctx2.new_page()
        p2.goto(a.url + "/")
        p2.wait_for_selector("#banner:not(.hidden)")
        ctx2.close()


def test_artifacts_dir_is_ignored():
    assert "test-artifacts/" in (ROOT / ".gitignore").read_text().split()
    assert Path(ROOT / "bpfscope" / "agent" / "static" / "index.html").exists()
