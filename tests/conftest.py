"""Test-wide rules. With BPFSCOPE_REQUIRE_BPF=1 (set by .ci/run) a skipped test is a failure:
on this machine every BPF test must load and attach for real."""

from __future__ import annotations

import os

import pytest

REQUIRE_BPF = os.environ.get("BPFSCOPE_REQUIRE_BPF") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_BPF and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped, but BPFSCOPE_REQUIRE_BPF=1 makes skips failures: {reason}"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="BPF tests need root")
        for item in items:
            if "bpf" in item.keywords:
                item.add_marker(skip)
