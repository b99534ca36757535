"""tracefs, debugfs and bpffs: libbpf needs tracefs to attach tracepoints. Mount when missing (root)."""

from __future__ import annotations

import ctypes
import os

from ..errors import BpfscopeError

_MOUNTS = {
    "tracefs": ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"],
    "debugfs": ["/sys/kernel/debug"],
    "bpf": ["/sys/fs/bpf"],
}


def mounted_types() -> dict[str, list[str]]:
    """fstype -> mount points, from /proc/self/mounts."""
    out: dict[str, list[str]] = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.setdefault(parts[2], []).append(parts[1])
    return out


def _mount(fstype: str, target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 4 + [ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(fstype.encode(), target.encode(), fstype.encode(), None, 0, None) != 0:
        err = ctypes.get_errno()
        raise BpfscopeError(f"cannot mount {fstype} on {target}: {os.strerror(err)}")


def ensure_mounted(fstype: str) -> str:
    """Return a mount point of fstype, mounting it at the standard place if none exists."""
    current = mounted_types().get(fstype, [])
    if current:
        return current[0]
    target = _MOUNTS[fstype][0]
    if fstype == "tracefs" and not os.path.isdir(target):
        ensure_mounted("debugfs")
        target = _MOUNTS["tracefs"][1]
    if os.geteuid() != 0:
        raise BpfscopeError(f"{fstype} is not mounted and mounting it needs root (mount -t {fstype} {fstype} {target})")
    _mount(fstype, target)
    return target


def tracefs() -> str:
    """tracefs mount point; also makes it reachable where libbpf looks (/sys/kernel/tracing or debug)."""
    return ensure_mounted("tracefs")


def cgroup2() -> str:
    """First cgroup v2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    mounts = mounted_types().get("cgroup2", [])
    if not mounts:
        raise BpfscopeError("no cgroup v2 file system is mounted (mount -t cgroup2 none /sys/fs/cgroup)")
    return "/sys/fs/cgroup" if "/sys/fs/cgroup" in mounts else mounts[0]
