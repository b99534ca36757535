"""Example custom tool: read() latency as one log2 histogram per cgroup.

    bpfscope run examples/readlat_cgroup.py -d 10 [--cgroup /sys/fs/cgroup/unified/mygroup]
"""

from __future__ import annotations

import os
from pathlib import Path

from bpfscope.api import (
    CGROUP,
    DURATION,
    INTERVAL,
    TIMESTAMP,
    Hook,
    HookPlan,
    Notice,
    Tool,
    UsageError,
    compile_bpf,
    interval_loop,
    open_object,
    read_histograms,
    register,
)
from bpfscope.bpf import mounts


def _cgroup_paths() -> dict[int, str]:
    """cgroup id (the directory's inode on cgroup v2) -> path under the mount."""
    root = mounts.cgroup2()
    out = {}
    for dirpath, _dirs, _files in os.walk(root):
        try:
            out[os.stat(dirpath).st_ino] = "/" + os.path.relpath(dirpath, root).lstrip(".")
        except OSError:
            continue
    return out


@register
class ReadlatCgroup(Tool):
    name = "readlat-cgroup-example"
    help = "read() latency histogram per cgroup (example of a custom tool)"
    output = "histogram"
    hooks = HookPlan((Hook("tracepoint", ("tracepoint", "task_storage"), "syscalls:sys_{enter,exit}_read"),))
    options = [CGROUP, INTERVAL, DURATION, TIMESTAMP]

    def run(self, opts, ctx):
        with open_object(compile_bpf(Path(__file__).with_name("readlat_cgroup.bpf.c"))) as obj:
            if opts.cgroup:
                path = opts.cgroup if opts.cgroup.startswith("/sys/") else os.path.join(mounts.cgroup2(), opts.cgroup.lstrip("/"))
                if not os.path.isdir(path):
                    raise UsageError(f"cgroup {opts.cgroup} not found")
                obj.set_global("targ_cgroup", os.stat(path).st_ino)
            obj.load()
            obj.program("read_enter").attach_tracepoint("syscalls", "sys_enter_read")
            obj.program("read_exit").attach_tracepoint("syscalls", "sys_exit_read")
            ctx.mark_attached()
            yield Notice("Tracing read() latency per cgroup (tracepoint mode)... Hit Ctrl-C to end.")
            hists = obj.map("hists")
            hist_t = obj.struct("hist")
            names: dict[int, str] = {}

            def label(key: bytes) -> str:
                cg = int.from_bytes(key, "little")
                if cg not in names:
                    names.update(_cgroup_paths())
                return f"{names.get(cg, '?')} (id {cg})"

            yield from interval_loop(ctx, opts.interval, lambda: read_histograms(hists, hist_t, "usecs", "cgroup", label))
