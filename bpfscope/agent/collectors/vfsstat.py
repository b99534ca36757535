"""VFS operations by op, on vfsstat's BPF object: bpfscope_vfs_operations_total{op}.

Same hooks as `bpfscope vfsstat` (fentry, else kprobes on the vfs_* functions; where neither is
allowed, the read/write/fsync/open/creat/unlink/mkdir/rmdir system calls at sys_enter, mapped to
the same ops). Its counters are per-CPU and never cleared: summed at scrape time they only grow.
The hook in use is the collector's mode (bpfscope_collector_up{collector="vfs",mode=...}).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

from ...options import Option
from ...toolkit import object_path, open_object
from ..collector import Collector


class VfsCollector(Collector):
    name = "vfs"
    help = "VFS operations by op (vfsstat's counters: fentry, kprobe or syscall mode)"
    settings = [
        Option("mode", str, None, "force a hook: fentry, kprobe, syscall (tp_btf), syscall-raw (raw_tp)",
               choices=("fentry", "kprobe", "syscall", "syscall-raw")),
    ]

    def __init__(self, settings: Any = None, env: Any = None):
        super().__init__(settings, env)
        self.obj: Any = None
        self.counters: Any = None

    def start(self) -> None:
        from ...tools import vfsstat as V

        hook = V.HOOKS.choose(self.env.ctx.features, self.opts.mode)
        mode = hook.mode
        funcs = V._kernel_funcs(need_btf=mode == "fentry") if mode in ("fentry", "kprobe") else []
        self.obj = obj = open_object(object_path("vfsstat"), needs_tracefs=mode == "kprobe")
        try:
            obj.set_global("filter_cgroup", False)
            obj.only_programs(V.programs(mode, funcs))
            obj.load()
            V.attach(obj, mode, funcs)
        except BaseException:
            self.close()
            raise
        self.counters = obj.map("counters")
        self.counters.value_type = ctypes.c_uint64
        self.stats = V.STATS
        self.mode = mode

    def close(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def bpf_objects(self) -> list[Any]:
        return [self.obj] if self.obj is not None else []

    def totals(self) -> dict[str, int]:
        with self.lock:
            values = self.counters.array_values()
        return {s.lower(): (sum(v) if isinstance(v, list) else v) for s, v in zip(self.stats, values, strict=True)}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily("bpfscope_vfs_operations",
                                  "VFS operations by op (syscall mode: the system calls that make them)",
                                  labels=["op"])
        for op, n in self.totals().items():
            fam.add_metric([op], n)
        yield fam


COLLECTOR = VfsCollector
