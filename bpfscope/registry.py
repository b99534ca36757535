"""The tool registry: every frontend (CLI, REST, web, Prometheus) reads tools from here.

A tool is a subclass of Tool in bpfscope/tools/<name>.py decorated with @register, or one
registered by a plugin (entry point group "bpfscope.tools") or by user code (bpfscope run).
Modules are imported only when needed so `bpfscope execsnoop` imports execsnoop alone.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import BpfscopeError, ToolUnavailable, UsageError
from .options import Option, Options, validate

if TYPE_CHECKING:
    from .bpf.features import Features
    from .results import Column, Result

OUTPUT_KINDS = ("events", "histogram", "stacks", "rates", "table")


@dataclass(frozen=True)
class Hook:
    """One way a tool can attach: the mode's name and the kernel features it needs."""

    mode: str
    needs: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class HookPlan:
    """Ordered alternatives: the first whose needs the kernel meets is used."""

    alternatives: tuple[Hook, ...]
    hint: str = ""  # what to do when none fits

    def choose(self, features: Features, force: str | None = None) -> Hook:
        candidates = [h for h in self.alternatives if force is None or h.mode == force]
        if not candidates:
            raise UsageError(f"unknown mode {force!r}; modes: {', '.join(h.mode for h in self.alternatives)}")
        missing: list[str] = []
        for hook in candidates:
            lacking = [n for n in hook.needs if not features.has(n)]
            if not lacking:
                return hook
            missing.append(f"{hook.mode} needs {', '.join(lacking)}")
        raise ToolUnavailable(
            "no hook fits this kernel: " + "; ".join(missing) + (f". {self.hint}" if self.hint else "")
        )


class RunContext:
    """What a running tool needs from its caller: stop signal, deadline, kernel features."""

    def __init__(self, duration: float | None = None, features: Features | None = None):
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.deadline = self.started + duration if duration else None
        self._features = features
        self.mode: str | None = None
        self.lost_events = 0
        self.attached_at: float | None = None  # monotonic time probes were attached (bench)

    @property
    def features(self) -> Features:
        if self._features is None:
            from .bpf.features import Features

            self._features = Features()
        return self._features

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def running(self) -> bool:
        return not self.stop.is_set() and (self.deadline is None or time.monotonic() < self.deadline)

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds` (cut short by stop or deadline); True while the run goes on."""
        rem = self.remaining()
        if rem is not None:
            seconds = min(seconds, rem)
        self.stop.wait(max(0.0, seconds))
        return self.running()

    def poll_timeout_ms(self, default: int = 100) -> int:
        rem = self.remaining()
        return default if rem is None else max(0, min(default, int(rem * 1000)))

    def mark_attached(self) -> None:
        self.attached_at = time.monotonic()
        if os.environ.get("BPFSCOPE_READY_FILE"):  # bench/startup.py waits for this
            with open(os.environ["BPFSCOPE_READY_FILE"], "w") as f:
                f.write(f"{time.time():.6f}\n")


class Tool:
    """Base class of every tool. Subclasses set the ClassVars and implement run()."""

    name: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str] = ""
    output: ClassVar[str] = "events"  # one of OUTPUT_KINDS
    options: ClassVar[list[Option]] = []
    hooks: ClassVar[HookPlan] = HookPlan((Hook("tracepoint", ("tracepoint",)),))
    columns: ClassVar[list[Column]] = []  # text columns for event tools
    examples: ClassVar[list[str]] = []
    streaming: ClassVar[bool] = False  # emits events live (SSE-capable)
    # Its continuous collector for `bpfscope serve`, if it has one: a class following
    # bpfscope.agent.collector.Collector (start()/close() and prometheus_client's collect()).
    # The agent finds collectors here; tool modules must not import prometheus_client at import time.
    collector: ClassVar[type | None] = None

    def mode(self, opts: Options, features: Features) -> Hook:
        """The hook this run would use; tools whose mode depends on options override this."""
        return self.hooks.choose(features, opts.get("mode"))

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        raise NotImplementedError

    @classmethod
    def mode_report(cls, features: Features) -> list[tuple[str, bool, str]]:
        """For doctor and GET /tools: (target kind, usable, mode or reason) rows."""
        try:
            hook = cls.hooks.choose(features)
        except BpfscopeError as e:
            return [("", False, str(e))]
        return [("", True, hook.mode + (f" ({hook.description})" if hook.description else ""))]

    @classmethod
    def validate(cls, raw: dict[str, Any], strict: bool = True) -> Options:
        return validate(cls.options, raw, strict)


# ---------------------------------------------------------------- registration
_TOOLS: dict[str, type[Tool]] = {}
_TOOLS_DIR = os.path.join(os.path.dirname(__file__), "tools")
_lock = threading.Lock()


def register(cls: type[Tool]) -> type[Tool]:
    """Class decorator: make a tool known to every frontend."""
    if cls.output not in OUTPUT_KINDS:
        raise ValueError(f"{cls.__name__}.output must be one of {OUTPUT_KINDS}")
    with _lock:
        _TOOLS[cls.name] = cls
    return cls


def builtin_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([_TOOLS_DIR]) if not m.name.startswith("_"))


def _plugin_entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group="bpfscope.tools"))


def get(name: str) -> type[Tool]:
    """The tool class named `name`, importing only its module."""
    if name in _TOOLS:
        return _TOOLS[name]
    if name in builtin_names():
        importlib.import_module(f"bpfscope.tools.{name}")
    else:
        for ep in _plugin_entry_points():
            if ep.name == name:
                ep.load()
        if name not in _TOOLS:
            _load_tool_path()
    if name not in _TOOLS:
        raise UsageError(f"unknown tool {name!r}; `bpfscope --help` lists the tools")
    return _TOOLS[name]


def load_tool_file(path: str | os.PathLike[str]) -> list[type[Tool]]:
    """Import a user's tool file; return the tools it registered."""
    import importlib.util
    import sys

    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"tool file {path} not found")
    before = set(_TOOLS)
    mod_name = "bpfscope_user_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BpfscopeError:
        raise
    except Exception as e:
        raise BpfscopeError(f"loading {path} failed: {type(e).__name__}: {e}") from e
    new = [_TOOLS[n] for n in sorted(set(_TOOLS) - before)]
    if not new:
        new = [c for c in _TOOLS.values() if getattr(c, "__module__", "") == mod_name]
    return new


def _load_tool_path() -> None:
    """Tools from BPFSCOPE_TOOL_PATH: files or directories of .py files, ':'-separated."""
    for entry in filter(None, os.environ.get("BPFSCOPE_TOOL_PATH", "").split(":")):
        files = sorted(p for p in (os.path.join(entry, f) for f in os.listdir(entry)) if p.endswith(".py")) \
            if os.path.isdir(entry) else [entry]
        for f in files:
            if os.path.abspath(f) not in _loaded_files:
                _loaded_files.add(os.path.abspath(f))
                load_tool_file(f)


_loaded_files: set[str] = set()


def all_tools() -> dict[str, type[Tool]]:
    """Every tool: built-in modules, plugins, BPFSCOPE_TOOL_PATH files, and run-time registrations."""
    _load_tool_path()
    for name in builtin_names():
        try:
            importlib.import_module(f"bpfscope.tools.{name}")
        except BpfscopeError:
            continue
    for ep in _plugin_entry_points():
        try:
            ep.load()
        except Exception:  # a broken plugin must not take the CLI down
            continue
    return dict(sorted(_TOOLS.items()))
