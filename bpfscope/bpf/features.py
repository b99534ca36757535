"""Kernel feature probe: what this kernel lets us load and attach, found by trying.

Each feature is probed lazily and once, by loading (and where it matters attaching) a tiny
program from probe.bpf.o; `bpfscope doctor` shows them all, a tool asks only for those
its hook plan needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import BpfscopeError
from . import libbpf as L
from . import mounts

PROBE_OBJECT = Path(__file__).with_name("probe.bpf.o")

PROG_SOCKET_FILTER, PROG_CGROUP_SKB = 1, 8
MAP_RINGBUF, MAP_TASK_STORAGE = 27, 29


class Features:
    """feature name -> (available, detail). Use has(name) / detail(name)."""

    DESCRIPTIONS = {
        "root": "running with the privileges BPF tracing needs (root or CAP_BPF+CAP_PERFMON)",
        "btf": "kernel BTF at /sys/kernel/btf/vmlinux (CO-RE)",
        "bpf": "bpf() syscall usable",
        "tracefs": "tracefs mounted",
        "bpffs": "bpffs mounted",
        "tracepoint": "tracepoint programs",
        "raw_tp": "raw tracepoints",
        "tp_btf": "BTF-typed tracepoints (tp_btf)",
        "fentry": "fentry/fexit (BPF trampolines)",
        "kprobe": "kprobes / kretprobes",
        "uprobe": "uprobes / uretprobes",
        "perf_event": "perf_event sampling (cpu-clock)",
        "hw_pmu": "hardware PMU events (cycles, instructions, cache misses)",
        "cgroup2": "cgroup v2 mounted",
        "cgroup_skb": "cgroup_skb programs",
        "ringbuf": "BPF ring buffer",
        "task_storage": "task-local storage maps",
        "bpf_stats": "kernel.bpf_stats_enabled (program run time)",
    }

    def __init__(self) -> None:
        self._cache: dict[str, tuple[bool, str]] = {}

    def has(self, name: str) -> bool:
        return self.check(name)[0]

    def detail(self, name: str) -> str:
        return self.check(name)[1]

    def check(self, name: str) -> tuple[bool, str]:
        if name not in self._cache:
            fn: Callable[[], tuple[bool, str]] = getattr(self, f"_probe_{name}")
            try:
                self._cache[name] = fn()
            except BpfscopeError as e:
                self._cache[name] = (False, str(e).splitlines()[0])
            except OSError as e:
                self._cache[name] = (False, f"{e.strerror or e}")
        return self._cache[name]

    def all(self) -> dict[str, tuple[bool, str]]:
        return {name: self.check(name) for name in self.DESCRIPTIONS}

    # ---- probes ------------------------------------------------------------
    def _probe_root(self) -> tuple[bool, str]:
        if os.geteuid() == 0:
            return True, "uid 0"
        caps = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
        cap_bpf, cap_perfmon = 1 << 39, 1 << 38
        if caps & cap_bpf and caps & cap_perfmon:
            return True, "CAP_BPF and CAP_PERFMON"
        return False, "not root and missing CAP_BPF/CAP_PERFMON: run as root (sudo)"

    def _probe_btf(self) -> tuple[bool, str]:
        p = "/sys/kernel/btf/vmlinux"
        if os.path.exists(p):
            return True, p
        return False, "missing /sys/kernel/btf/vmlinux: kernel built without CONFIG_DEBUG_INFO_BTF"

    def _probe_bpf(self) -> tuple[bool, str]:
        ret = L.lib.libbpf_probe_bpf_prog_type(PROG_SOCKET_FILTER, None)
        if ret == 1:
            return True, "program load works"
        return False, f"cannot load a BPF program ({os.strerror(-ret) if ret < 0 else 'unsupported'})"

    def _probe_tracefs(self) -> tuple[bool, str]:
        return True, mounts.tracefs()

    def _probe_bpffs(self) -> tuple[bool, str]:
        return True, mounts.ensure_mounted("bpf")

    def _probe_cgroup2(self) -> tuple[bool, str]:
        return True, mounts.cgroup2()

    def _probe_ringbuf(self) -> tuple[bool, str]:
        ok = L.lib.libbpf_probe_bpf_map_type(MAP_RINGBUF, None) == 1
        return ok, "BPF_MAP_TYPE_RINGBUF" if ok else "no ring buffer (kernel < 5.8)"

    def _probe_task_storage(self) -> tuple[bool, str]:
        ok = L.lib.libbpf_probe_bpf_map_type(MAP_TASK_STORAGE, None) == 1
        return ok, "BPF_MAP_TYPE_TASK_STORAGE" if ok else "no task storage (kernel < 5.11)"

    def _probe_cgroup_skb(self) -> tuple[bool, str]:
        ok = L.lib.libbpf_probe_bpf_prog_type(PROG_CGROUP_SKB, None) == 1
        return ok, "BPF_PROG_TYPE_CGROUP_SKB" if ok else "cgroup_skb programs not supported"

    def _probe_bpf_stats(self) -> tuple[bool, str]:
        p = "/proc/sys/kernel/bpf_stats_enabled"
        if not os.path.exists(p):
            return False, "kernel has no bpf_stats_enabled"
        return True, f"currently {Path(p).read_text().strip()}"

    def _probe_hw_pmu(self) -> tuple[bool, str]:
        from .perf import PERF_TYPE_HARDWARE, perf_event_open

        try:
            os.close(perf_event_open(PERF_TYPE_HARDWARE, 0, cpu=0, pid=-1, disabled=True))
        except BpfscopeError as e:
            return False, str(e)
        return True, "cycles counter opens"

    def _probe_kprobe(self) -> tuple[bool, str]:
        pmu = Path("/sys/bus/event_source/devices/kprobe")
        tracefs_dir = self.check("tracefs")
        legacy = tracefs_dir[0] and Path(tracefs_dir[1], "kprobe_events").exists()
        if not pmu.exists() and not legacy:
            return False, "kernel built without CONFIG_KPROBE_EVENTS (no kprobe PMU, no kprobe_events)"
        return self._load_and_attach("probe_kprobe", lambda p: p.attach_kprobe("do_nanosleep"))

    def _probe_fentry(self) -> tuple[bool, str]:
        if not self.has("btf"):
            return False, "needs kernel BTF"
        return self._load_and_attach("probe_fentry", lambda p: p.attach_trace())

    def _probe_tracepoint(self) -> tuple[bool, str]:
        self.check("tracefs")
        return self._load_and_attach("probe_tracepoint", lambda p: p.attach_tracepoint("syscalls", "sys_enter_getppid"))

    def _probe_raw_tp(self) -> tuple[bool, str]:
        return self._load_and_attach("probe_raw_tp", lambda p: p.attach_raw_tracepoint("sys_enter"))

    def _probe_tp_btf(self) -> tuple[bool, str]:
        if not self.has("btf"):
            return False, "needs kernel BTF"
        return self._load_and_attach("probe_tp_btf", lambda p: p.attach_trace())

    def _probe_uprobe(self) -> tuple[bool, str]:
        if not Path("/sys/bus/event_source/devices/uprobe").exists():
            return False, "kernel built without CONFIG_UPROBE_EVENTS"
        libc = _libc_path()
        return self._load_and_attach("probe_uprobe", lambda p: p.attach_uprobe(libc, func="getpid"))

    def _probe_perf_event(self) -> tuple[bool, str]:
        from .perf import PERF_TYPE_SOFTWARE, SW, perf_event_open

        def attach(p):  # noqa: ANN001
            fd = perf_event_open(PERF_TYPE_SOFTWARE, SW["cpu-clock"], cpu=0, pid=-1, freq=1)
            return p.attach_perf_event(fd)

        return self._load_and_attach("probe_perf_event", attach)

    def _load_and_attach(self, prog_name: str, attach: Callable) -> tuple[bool, str]:
        from .object import BpfObject

        if not self.has("root"):
            return False, self.detail("root")
        with BpfObject(PROBE_OBJECT) as obj:
            obj.only_programs({prog_name})
            try:
                obj.load()
            except L.BpfError as e:
                return False, f"load refused: {os.strerror(e.errno) if e.errno else e}"
            try:
                attach(obj.program(prog_name))
            except L.BpfError as e:
                return False, f"attach refused: {os.strerror(e.errno) if e.errno else e}"
        return True, "loads and attaches"


def _libc_path() -> str:
    """Path of the libc this process runs with (from its own maps)."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.rstrip("\n").split(maxsplit=5)[-1]
            if "/libc.so" in path or "/libc-" in path:
                return path
    raise BpfscopeError("cannot find libc in /proc/self/maps")


def require_root() -> None:
    f = Features()
    ok, why = f.check("root")
    if not ok:
        raise BpfscopeError(why)
