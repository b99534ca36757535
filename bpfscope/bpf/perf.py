"""perf_event_open(2) for sampling (profile) and counting (perfstat), one event per CPU."""

from __future__ import annotations

import ctypes
import os

from ..errors import BpfscopeError

PERF_TYPE_HARDWARE, PERF_TYPE_SOFTWARE, PERF_TYPE_TRACEPOINT, PERF_TYPE_HW_CACHE = 0, 1, 2, 3
# software configs
SW = {
    "cpu-clock": 0, "task-clock": 1, "page-faults": 2, "faults": 2, "context-switches": 3, "cs": 3,
    "cpu-migrations": 4, "migrations": 4, "minor-faults": 5, "major-faults": 6,
}
HW = {
    "cycles": 0, "cpu-cycles": 0, "instructions": 1, "cache-references": 2, "cache-misses": 3,
    "branch-instructions": 4, "branches": 4, "branch-misses": 5, "bus-cycles": 6, "ref-cycles": 9,
}
# LLC read access / miss: cache id 2 (LL), op read 0, result access 0 / miss 1
HW_CACHE = {"LLC-loads": 2 | (0 << 8) | (0 << 16), "LLC-load-misses": 2 | (0 << 8) | (1 << 16)}

_NR_PERF_EVENT_OPEN = 298  # x86_64
PERF_FLAG_FD_CLOEXEC = 8
_BIT_DISABLED, _BIT_FREQ = 1 << 0, 1 << 10
_BIT_EXCLUDE_IDLE = 1 << 7


class PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),  # or sample_freq when freq bit set
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("_reserved2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32),
        ("_reserved3", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
        ("config3", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def event_spec(name: str) -> tuple[int, int]:
    """(type, config) of a named event; raises with the list of known names."""
    if name in SW:
        return PERF_TYPE_SOFTWARE, SW[name]
    if name in HW:
        return PERF_TYPE_HARDWARE, HW[name]
    if name in HW_CACHE:
        return PERF_TYPE_HW_CACHE, HW_CACHE[name]
    known = ", ".join(sorted(set(SW) | set(HW) | set(HW_CACHE)))
    raise BpfscopeError(f"unknown event {name!r}; known: {known}")


def online_cpus() -> list[int]:
    """CPUs listed in /sys/devices/system/cpu/online ("0-3,5")."""
    with open("/sys/devices/system/cpu/online") as f:
        spec = f.read().strip()
    cpus: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def perf_event_open(
    type_: int, config: int, cpu: int, pid: int = -1, *, freq: int = 0, period: int = 0,
    disabled: bool = False, cgroup_fd: int = -1,
) -> int:
    attr = PerfEventAttr(type=type_, size=ctypes.sizeof(PerfEventAttr), config=config)
    flags = 0
    if freq:
        attr.sample_period = freq
        flags |= _BIT_FREQ
    elif period:
        attr.sample_period = period
    if disabled:
        flags |= _BIT_DISABLED
    attr.flags = flags
    target = pid
    open_flags = PERF_FLAG_FD_CLOEXEC
    if cgroup_fd >= 0:
        target = cgroup_fd
        open_flags |= 4  # PERF_FLAG_PID_CGROUP
    fd = _libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), target, cpu, -1, open_flags)
    if fd < 0:
        err = ctypes.get_errno()
        raise PerfOpenError(err, type_, config)
    return int(fd)


class PerfOpenError(BpfscopeError):
    def __init__(self, err: int, type_: int, config: int):
        what = {PERF_TYPE_HARDWARE: "hardware", PERF_TYPE_HW_CACHE: "hardware cache"}.get(type_, "software")
        hint = ""
        if type_ in (PERF_TYPE_HARDWARE, PERF_TYPE_HW_CACHE) and err in (2, 19, 95):
            hint = ": this CPU exposes no hardware PMU to the kernel (common in VMs); use software events"
        super().__init__(f"perf_event_open of {what} event {config} failed: {os.strerror(err)}{hint}")
        self.errno = err


def has_hardware_pmu() -> bool:
    try:
        os.close(perf_event_open(PERF_TYPE_HARDWARE, HW["cycles"], cpu=0, pid=-1, disabled=True))
        return True
    except BpfscopeError:
        return False
