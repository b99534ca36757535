"""Raw ctypes bindings to the system libbpf.so.1: declarations only, no policy.

Pointers to libbpf objects are opaque c_void_p. Functions that return pointers return
NULL and set errno on failure (libbpf >= 1.0 semantics); int functions return -errno.
"""

from __future__ import annotations

import ctypes
import os
from collections import deque
from collections.abc import Callable

from ..errors import BpfscopeError

c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
c_int = ctypes.c_int
c_uint = ctypes.c_uint32
c_size_t = ctypes.c_size_t
c_bool = ctypes.c_bool
c_u64 = ctypes.c_uint64


def _load() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        pass
    from ctypes.util import find_library  # runs ldconfig: only when the usual name fails

    name = find_library("bpf")
    if name:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            pass
    raise BpfscopeError("libbpf.so.1 not found: install libbpf1 (apt-get install libbpf1)")


lib = _load()
libc = ctypes.CDLL(None, use_errno=True)


class BpfUprobeOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", c_u64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
    ]


class BpfKprobeOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("bpf_cookie", c_u64),
        ("offset", c_size_t),
        ("retprobe", c_bool),
    ]


class BpfMapBatchOpts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_u64), ("flags", c_u64)]


RingBufferSampleFn = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
PrintFn = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    # objects
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__name": (c_char_p, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    # programs
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__autoload": (c_bool, [c_void_p]),
    "bpf_program__set_attach_target": (c_int, [c_void_p, c_int, c_char_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_tracepoint": (c_void_p, [c_void_p, c_char_p, c_char_p]),
    "bpf_program__attach_raw_tracepoint": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__attach_trace": (c_void_p, [c_void_p]),
    "bpf_program__attach_kprobe_opts": (c_void_p, [c_void_p, c_char_p, c_void_p]),
    "bpf_program__attach_uprobe_opts": (c_void_p, [c_void_p, c_int, c_char_p, c_size_t, c_void_p]),
    "bpf_program__attach_perf_event": (c_void_p, [c_void_p, c_int]),
    "bpf_program__attach_cgroup": (c_void_p, [c_void_p, c_int]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_link__fd": (c_int, [c_void_p]),
    # maps
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_uint, [c_void_p]),
    "bpf_map__value_size": (c_uint, [c_void_p]),
    "bpf_map__max_entries": (c_uint, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint]),
    "bpf_map__set_autocreate": (c_int, [c_void_p, c_bool]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, ctypes.POINTER(c_size_t)]),
    "bpf_map__btf_key_type_id": (c_uint, [c_void_p]),
    "bpf_map__btf_value_type_id": (c_uint, [c_void_p]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_u64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_lookup_and_delete_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, ctypes.POINTER(c_uint), c_void_p],
    ),
    "bpf_map_delete_batch": (c_int, [c_int, c_void_p, ctypes.POINTER(c_uint), c_void_p]),
    "bpf_prog_get_next_id": (c_int, [c_uint, ctypes.POINTER(c_uint)]),
    "bpf_prog_get_fd_by_id": (c_int, [c_uint]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, ctypes.POINTER(c_uint)]),
    "bpf_enable_stats": (c_int, [c_int]),
    # btf
    "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_uint]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint]),
    "btf__resolve_size": (ctypes.c_int64, [c_void_p, c_uint]),
    "btf__load_vmlinux_btf": (c_void_p, []),
    "btf__free": (None, [c_void_p]),
    # ring buffer
    "ring_buffer__new": (c_void_p, [c_int, RingBufferSampleFn, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    # probes and misc
    "libbpf_probe_bpf_prog_type": (c_int, [c_int, c_void_p]),
    "libbpf_probe_bpf_map_type": (c_int, [c_int, c_void_p]),
    "libbpf_num_possible_cpus": (c_int, []),
    "libbpf_set_print": (c_void_p, [PrintFn]),
}

for _name, (_res, _args) in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype = _res
    _fn.argtypes = _args

libc.vsnprintf.restype = c_int
libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]


def errno() -> int:
    return ctypes.get_errno()


def check_ptr(ptr: int | None, what: str) -> int:
    """Raise BpfError with errno when libbpf returned NULL."""
    if not ptr:
        err = ctypes.get_errno()
        raise BpfError(f"{what}: {os.strerror(err) if err else 'failed'}", err)
    return ptr


def check_int(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret
        raise BpfError(f"{what}: {os.strerror(err)}", err)
    return ret


class BpfError(BpfscopeError):
    """A libbpf call failed; errno kept so callers can tell EPERM from ENOENT."""

    def __init__(self, message: str, errno_: int = 0, log_tail: str = ""):
        super().__init__(message + (f"\n{log_tail}" if log_tail else ""))
        self.errno = errno_
        self.log_tail = log_tail


# ----------------------------------------------------------------- libbpf logging
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
recent_log: deque[str] = deque(maxlen=400)  # last libbpf lines: verifier logs come through here
# Where libbpf's lines go besides recent_log: nowhere by default (libbpf warns about probes that
# fail, which we handle ourselves); `-v` sets a sink that logs them. No logging import here:
# the CLI's start-up path does not pay for it.
_sink: Callable[[int, str], None] | None = None


def set_log_sink(sink: Callable[[int, str], None] | None) -> None:
    """sink(level, line) for every libbpf line (LIBBPF_WARN / INFO / DEBUG), or None."""
    global _sink
    _sink = sink


@PrintFn
def _print_cb(level: int, fmt: bytes, va_list: int) -> int:
    # libbpf says a hundred DEBUG lines per object load (CO-RE relocations...): without -v they
    # are dropped unformatted. Failures and the verifier's log come at WARN, and are kept.
    if level == LIBBPF_DEBUG and _sink is None:
        return 0
    buf = ctypes.create_string_buffer(1 << 20)  # verifier logs arrive as one long message
    n = libc.vsnprintf(buf, len(buf), fmt, va_list)
    text = buf.value.decode("utf-8", "replace")
    for line in text.rstrip("\n").split("\n"):
        recent_log.append(line)
        if _sink is not None:
            _sink(level, line)
    return max(n, 0)


lib.libbpf_set_print(_print_cb)
