"""-p PID and --cgroup PATH for the tools whose BPF side includes _task_filter.bpf.h
(funclatency, vfsstat): targ_tgid and filter_cgroup before load, the cgroup's fd in slot 0 of
the cgroup_filter array after load."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..bpf.object import BpfObject


def set_task_filter(obj: BpfObject, pid: int | None, cgroup: str | None) -> int | None:
    """Before load: the globals. Returns the cgroup's fd (owned by obj), for fill_cgroup_filter."""
    cg_fd = obj.own_fd(open_cgroup(cgroup)) if cgroup else None
    if pid:
        obj.set_global("targ_tgid", pid)
    obj.set_global("filter_cgroup", cg_fd is not None)
    return cg_fd


def fill_cgroup_filter(obj: BpfObject, cg_fd: int | None) -> None:
    """After load: the cgroup set_task_filter opened."""
    if cg_fd is not None:
        obj.map("cgroup_filter").update(0, cg_fd)


def open_cgroup(arg: str) -> int:
    from ..k8s.cgroups import fs_path, resolve_cgroup_arg

    path = fs_path(resolve_cgroup_arg(arg))
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise UsageError(f"cannot open cgroup {arg!r}: {e.strerror}") from None
