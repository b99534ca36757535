"""Continuous collectors: BPF programs attached for the agent's whole life, read at scrape time.

A tool declares one with `collector = SomeCollector` (bpfscope.registry.Tool.collector), or,
while it does not, bpfscope/agent/collectors/<tool>.py provides one; the agent
(`bpfscope serve`) finds them through the registry, starts the ones asked for
(--collectors / config file), registers them with prometheus_client and closes them on exit.

A collector:
  - `name` (what --collectors takes), `help`, and `settings` (Options validated from its config
    file section, strict typing as over REST);
  - start(): load and attach (raise BpfscopeError / ToolUnavailable with one clear line);
    set self.mode to the hook mode that runs;
  - collect(): yield prometheus_client metric families, reading the BPF maps now (no polling
    thread); counters must never go backwards while the agent runs;
  - expose() (optional): the same metrics pre-formatted as exposition text, much faster for
    thousands of series (see escape_label_value / format_counter_family below);
  - close(): detach and free everything (idempotent);
  - lost_events() and bpf_objects() feed the agent's self-metrics (lost events per collector,
    per-program run count and run time).

This module imports nothing from prometheus_client at import time, so tool modules can import it
and stay fast on the plain CLI path: import prometheus_client inside collect().
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from ..options import Option, Options, validate

if TYPE_CHECKING:
    from ..bpf.object import BpfObject
    from ..k8s.filters import CgroupLabeler
    from ..k8s.pods import PodIndex
    from ..registry import RunContext


class AgentEnv:
    """What collectors share: kernel features, cgroup id -> labels (with pod metadata if on)."""

    def __init__(self, pods: PodIndex | None = None, labeler: CgroupLabeler | None = None):
        self.pods = pods
        self._labeler = labeler
        self._lock = threading.Lock()
        self._ctx: RunContext | None = None

    @property
    def labeler(self) -> CgroupLabeler:
        with self._lock:
            if self._labeler is None:
                from ..k8s.filters import CgroupLabeler

                self._labeler = CgroupLabeler(pods=self.pods)
            return self._labeler

    @property
    def ctx(self) -> RunContext:
        """A RunContext for code shared with a tool's run() (features, mode)."""
        if self._ctx is None:
            from ..registry import RunContext

            self._ctx = RunContext()
        return self._ctx


class Collector:
    name: ClassVar[str]
    help: ClassVar[str] = ""
    settings: ClassVar[list[Option]] = []

    def __init__(self, settings: Options | dict[str, Any] | None = None, env: AgentEnv | None = None):
        if not isinstance(settings, Options):
            settings = validate(self.settings, dict(settings or {}), strict=True)
        self.opts = settings
        self.env = env or AgentEnv()
        self.mode: str | None = None
        self.lock = threading.Lock()  # collect() runs in web server threads

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- prometheus_client custom collector protocol -----------------------
    def collect(self) -> Iterator[Any]:
        raise NotImplementedError

    def describe(self) -> list[Any]:
        return []  # no collect() at registration time

    def expose(self) -> str | None:
        """Optional fast path: this collector's metrics already in the text exposition format
        (version 0.0.4), for collectors with thousands of series where building prometheus_client
        families costs more than the scrape budget. None: the agent formats collect()."""
        return None

    # ---- self-metrics --------------------------------------------------------
    def lost_events(self) -> int:
        return 0

    def bpf_objects(self) -> list[BpfObject]:
        return []


class ToolThreadCollector(Collector):
    """The hook for event-stream tools (shellwatch...): the tool's own run() goes on in a thread
    for the agent's life; what it counts reaches Prometheus through `metrics`, an object with
    prometheus_client's collect() that the tool's sinks update (events themselves are dropped).

    A tool opts in with a few lines in its module, e.g. for shellwatch:

        class ShellwatchCollector(ToolThreadCollector):
            name = "shellwatch"
            help = "interactive shell alerts by kind"
            tool = Shellwatch
            metrics = METRICS
        Shellwatch.collector = ShellwatchCollector

    `settings` of the subclass that share a name with the tool's options are passed to it,
    over `tool_options`.
    """

    tool: ClassVar[type]
    metrics: ClassVar[Any]
    tool_options: ClassVar[dict[str, Any]] = {}
    start_timeout: ClassVar[float] = 30.0

    def __init__(self, settings: Options | dict[str, Any] | None = None, env: AgentEnv | None = None):
        super().__init__(settings, env)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ctx: Any = None

    def start(self) -> None:
        from ..registry import RunContext

        class _Ctx(RunContext):
            def mark_attached(self) -> None:  # no ready file: that is the agent's to write
                import time

                self.attached_at = time.monotonic()

        names = {o.name for o in self.tool.options}
        raw = dict(self.tool_options)
        raw.update({k: v for k, v in self.opts.as_dict().items() if k in names and v is not None})
        opts = self.tool.validate(raw, strict=True)
        self._ctx = ctx = _Ctx()
        gen = self.tool().run(opts, ctx)

        def run() -> None:
            try:
                for _item in gen:
                    if not ctx.running():
                        break
            except BaseException as e:  # surfaced by start() or logged by the agent
                self._error = e
            finally:
                gen.close()

        self._thread = threading.Thread(target=run, name=f"bpfscope-{self.name}", daemon=True)
        self._thread.start()
        import time

        deadline = time.monotonic() + self.start_timeout
        while ctx.attached_at is None and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.attached_at is None:
            err = self._error
            self.close()
            if err is not None:
                raise err
            from ..errors import BpfscopeError

            raise BpfscopeError(f"{self.tool.name} did not attach within {self.start_timeout:g}s")
        self.mode = ctx.mode

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def collect(self) -> Iterator[Any]:
        if self._error is not None:
            raise RuntimeError(f"{self.tool.name} stopped: {self._error}")
        return self.metrics.collect()

    def lost_events(self) -> int:
        return self._ctx.lost_events if self._ctx is not None else 0


# --------------------------------------------------------------------------------------------------
# fast text exposition (format 0.0.4), for Collector.expose()


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def label_string(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """'a="x",b="y"' (names must be valid label names: they come from code, not data)."""
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))


def format_family(name: str, kind: str, doc: str, samples: list[tuple[str, int | float]]) -> str:
    """One metric family: samples are (label string, value). Counters get the _total suffix."""
    sample_name = name + "_total" if kind == "counter" else name
    head = f"# HELP {sample_name} {escape_help(doc)}\n# TYPE {sample_name} {kind}\n"
    return head + "".join(f"{sample_name}{{{lab}}} {_num(v)}\n" if lab else f"{sample_name} {_num(v)}\n"
                          for lab, v in samples)


def _num(v: int | float) -> str:
    if isinstance(v, int):
        return str(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))
