"""Shell alerts on /metrics: shellwatch's own run() in a thread (ToolThreadCollector), its alert
counters (bpfscope_shellwatch_alerts_total{kind,container}, webhook and log counters) exported.

Used while bpfscope/tools/shellwatch.py does not declare `collector` itself."""

from __future__ import annotations

from ...options import Option
from ...tools._sinks import METRICS
from ...tools.shellwatch import Shellwatch
from ..collector import ToolThreadCollector


class ShellwatchCollector(ToolThreadCollector):
    name = "shellwatch"
    help = "interactive shell alerts (shellwatch's rule), by kind and container"
    tool = Shellwatch
    metrics = METRICS
    settings = [
        Option("config", str, None, "shellwatch rule file (TOML: shells, launchers...)",
               pattern=r"[A-Za-z0-9_./+@-]{1,255}", metavar="FILE"),
    ]


COLLECTOR = ShellwatchCollector
