"""The agent's metrics side: continuous collectors from the registry, one prometheus_client
registry read at scrape time, and self-metrics (collector health, lost events, BPF program run
count and run time, scrape duration).

Program run time needs kernel.bpf_stats_enabled. The agent turns it on with BPF_ENABLE_STATS,
which keeps it on only while the agent holds the returned fd: the kernel restores it when the
agent exits, however it exits. Where that is refused, run time is reported as off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import registry
from ..errors import BpfscopeError, UsageError
from .collector import AgentEnv, Collector
from .config import AgentConfig

log = logging.getLogger("bpfscope.agent")

BPF_STATS_RUN_TIME = 0
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


def available_collectors() -> dict[str, type[Collector]]:
    """Collector name -> class, for every registered tool with one: its own `collector`, else an
    agent-side one in bpfscope/agent/collectors/<tool>.py (COLLECTOR)."""
    out: dict[str, type[Collector]] = {}
    for tool, cls in registry.all_tools().items():
        col = getattr(cls, "collector", None) or _agent_side(tool)
        if isinstance(col, type) and getattr(col, "name", None):
            out.setdefault(col.name, col)
    return out


def _agent_side(tool: str) -> type[Collector] | None:
    import importlib
    import importlib.util

    name = f"{__package__}.collectors.{tool.replace('-', '_')}"
    try:
        if importlib.util.find_spec(name) is None:
            return None
        return getattr(importlib.import_module(name), "COLLECTOR", None)
    except (ImportError, BpfscopeError) as e:
        log.warning("collector for %s not available: %s", tool, e)
        return None


# --------------------------------------------------------------------------------------------------
# BPF program statistics


class BpfStats:
    """kernel.bpf_stats_enabled on while this object is open (fd from BPF_ENABLE_STATS)."""

    def __init__(self, enable: bool = True):
        self.fd = -1
        self.detail = ""
        self.was_enabled = self.sysctl()
        if enable:
            fd = _libbpf().bpf_enable_stats(BPF_STATS_RUN_TIME)
            if fd >= 0:
                self.fd = fd
                self.detail = "enabled by the agent while it runs"
            else:
                self.detail = f"cannot enable: {os.strerror(-fd)}"
        else:
            self.detail = "not requested (bpf_stats = false)"

    @staticmethod
    def sysctl() -> bool:
        try:
            with open(STATS_SYSCTL) as f:
                return f.read().strip() == "1"
        except OSError:
            return False

    @property
    def enabled(self) -> bool:
        return self.fd >= 0 or self.sysctl()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _libbpf() -> Any:
    from ..bpf import libbpf as L

    return L.lib


_prog_info_type: Any = None
_prog_info_lock = threading.Lock()


def prog_info_type() -> Any:
    """ctypes class of the kernel's struct bpf_prog_info, derived from the vmlinux BTF."""
    global _prog_info_type
    with _prog_info_lock:
        if _prog_info_type is None:
            from ..bpf import libbpf as L
            from ..bpf.btfstruct import Btf

            ptr = L.check_ptr(L.lib.btf__load_vmlinux_btf(), "load vmlinux BTF")
            try:
                _prog_info_type = Btf(ptr).struct("bpf_prog_info")
            finally:
                L.lib.btf__free(ptr)
        return _prog_info_type


def prog_stats(fd: int) -> tuple[int, int] | None:
    """(run_cnt, run_time_ns) of a loaded program."""
    from ..bpf import libbpf as L

    t = prog_info_type()
    info = t()
    size = ctypes.c_uint32(ctypes.sizeof(t))
    if L.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        return None
    return int(info.run_cnt), int(info.run_time_ns)


# --------------------------------------------------------------------------------------------------
# the agent


class _Adapter:
    """A collector as prometheus_client sees it (for collectors without expose())."""

    def __init__(self, col: Collector):
        self.col = col

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        return self.col.collect()


class _SelfMetrics:
    def __init__(self, agent: Agent):
        self.agent = agent

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        a = self.agent
        up = GaugeMetricFamily("bpfscope_collector_up", "1 if the collector runs", labels=["collector", "mode"])
        lost = CounterMetricFamily("bpfscope_collector_lost_events",
                                   "events the collector's BPF programs could not record (map full, buffer full)",
                                   labels=["collector"])
        errors = CounterMetricFamily("bpfscope_collector_errors", "scrapes where the collector failed",
                                     labels=["collector"])
        secs = GaugeMetricFamily("bpfscope_collector_scrape_duration_seconds",
                                 "time the collector took in this scrape", labels=["collector"])
        cpu = GaugeMetricFamily("bpfscope_collector_scrape_cpu_seconds",
                                "CPU time the collector took in this scrape (its thread)", labels=["collector"])
        runs = CounterMetricFamily("bpfscope_bpf_program_runs", "times the BPF program ran (needs bpf_stats)",
                                   labels=["collector", "program"])
        rtime = CounterMetricFamily("bpfscope_bpf_program_run_seconds",
                                    "time spent in the BPF program (needs bpf_stats)", labels=["collector", "program"])
        for name, col in a.collectors.items():
            up.add_metric([name, col.mode or ""], 1)
            lost.add_metric([name], col.lost_events())
            errors.add_metric([name], a.error_total.get(name, 0))
            secs.add_metric([name], a.collect_seconds.get(name, 0.0))
            cpu.add_metric([name], a.collect_cpu_seconds.get(name, 0.0))
            for obj in col.bpf_objects():
                for prog in obj.programs():
                    if not prog.autoload or prog.fd < 0:
                        continue
                    st = prog_stats(prog.fd)
                    if st is None:
                        continue
                    cnt, ns = st
                    runs.add_metric([name, prog.name], cnt)
                    rtime.add_metric([name, prog.name], ns / 1e9)
        for name, why in a.failed.items():
            up.add_metric([name, ""], 0)
            log.debug("collector %s not running: %s", name, why)
        yield from (up, lost, errors, secs, cpu, runs, rtime)
        yield GaugeMetricFamily("bpfscope_bpf_stats_enabled",
                                "1 while kernel.bpf_stats_enabled is on (program run count and time count)",
                                value=1 if a.stats is not None and a.stats.enabled else 0)
        if a.env.pods is not None:
            p = a.env.pods
            yield GaugeMetricFamily("bpfscope_kubernetes_pods", "pods of this node known from the API", value=len(p))
            yield GaugeMetricFamily("bpfscope_kubernetes_synced", "1 once the node's pod list is loaded",
                                    value=1 if p.synced else 0)


class Agent:
    """Owns the running collectors, the metrics registry and the bpf_stats switch."""

    def __init__(self, config: AgentConfig, *, pods: Any = None):
        self.config = config
        self._pods = pods
        self.env = AgentEnv(pods=pods)
        self.collectors: dict[str, Collector] = {}
        self.failed: dict[str, str] = {}
        self.collect_seconds: dict[str, float] = {}
        self.collect_cpu_seconds: dict[str, float] = {}
        self.error_total: dict[str, int] = {}
        self.stats: BpfStats | None = None
        self.registry: Any = None
        self.started = False
        self._own_pods = False
        self._scrape_lock = threading.Lock()
        self._scrape_summary: Any = None
        self._col_registries: dict[str, Any] = {}

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> Agent:
        if self.started:
            return self
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self.started = True
        return self

    def _start(self) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector, Summary

        from ..k8s.filters import in_cluster, open_pod_index
        from ..k8s.pods import K8sError

        cfg = self.config
        available = available_collectors()
        explicit = cfg.collectors is not None
        wanted = cfg.collectors if explicit else sorted(available)
        for name in cfg.settings:
            if name not in available:
                raise UsageError(f"config: no collector {name!r}; available: {', '.join(sorted(available))}")
        want_k8s = cfg.kubernetes if cfg.kubernetes is not None else in_cluster()
        if want_k8s and self.env.pods is None:
            try:
                self.env.pods = open_pod_index()
                self._own_pods = True
            except K8sError as e:
                if cfg.kubernetes:
                    raise
                log.warning("no pod labels (in a cluster, but %s); labels fall back to cgroup paths", e)
        for name in wanted:
            cls = available.get(name)
            if cls is None:
                raise UsageError(f"unknown collector {name!r}; available: {', '.join(sorted(available)) or 'none'}")
            col = cls(cfg.settings.get(name), self.env)
            try:
                col.start()
            except BpfscopeError as e:
                col.close()
                if explicit:
                    raise BpfscopeError(f"collector {name}: {str(e).splitlines()[0]}") from None
                log.warning("collector %s not started: %s", name, str(e).splitlines()[0])
                self.failed[name] = str(e).splitlines()[0]
                continue
            self.collectors[name] = col
        if not self.collectors:
            raise BpfscopeError("no collector could start: " + "; ".join(f"{k}: {v}" for k, v in self.failed.items()))
        self.stats = BpfStats(cfg.bpf_stats)
        for name, col in self.collectors.items():
            reg = CollectorRegistry(auto_describe=False)
            reg.register(_Adapter(col))
            self._col_registries[name] = reg
        reg = CollectorRegistry(auto_describe=False)
        reg.register(_SelfMetrics(self))
        ProcessCollector(registry=reg)
        self._scrape_summary = Summary("bpfscope_scrape_duration_seconds", "time to produce /metrics", registry=reg)
        self.registry = reg

    def close(self) -> None:
        cols, self.collectors = list(self.collectors.values()), {}
        errors = []
        for col in cols:
            try:
                col.close()
            except Exception as e:  # keep closing the others
                errors.append(e)
        if self.stats is not None:
            self.stats.close()
            self.stats = None
        if self._own_pods and self.env.pods is not None:
            self.env.pods.stop()
            self.env.pods = None
        self.started = False
        if errors:
            raise errors[0]

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- serving -----------------------------------------------------------
    @property
    def ready(self) -> bool:
        if not self.started:
            return False
        pods = self.env.pods
        return pods is None or pods.synced

    def metrics(self) -> bytes:
        """The exposition text (format 0.0.4), every map read now."""
        from prometheus_client.exposition import generate_latest

        with self._scrape_lock:  # one scrape at a time: collectors keep per-scrape state
            t0 = time.perf_counter()
            parts: list[bytes] = []
            for name, col in self.collectors.items():
                t, c = time.perf_counter(), time.thread_time()
                try:
                    text = col.expose()
                    parts.append(text.encode() if text is not None else generate_latest(self._col_registries[name]))
                except Exception as e:  # one collector's trouble must not take /metrics down
                    log.warning("collector %s: %s", name, e)
                    self.error_total[name] = self.error_total.get(name, 0) + 1
                finally:
                    self.collect_seconds[name] = time.perf_counter() - t
                    self.collect_cpu_seconds[name] = time.thread_time() - c
            parts.append(generate_latest(self.registry))
            self._scrape_summary.observe(time.perf_counter() - t0)
        return b"".join(parts)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
