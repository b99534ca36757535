"""Ring buffer consumer over libbpf's ring_buffer__*.

The C callback only copies bytes into a list (cheap); decoding happens in a batch after
each poll, so Python work per event stays small. Losses are counted on the BPF side
(`lost_events` global, bumped whenever bpf_ringbuf_reserve fails: see bpfscope.bpf.h).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import libbpf as L

if TYPE_CHECKING:
    from .object import BpfObject


class RingBuffer:
    def __init__(self, obj: BpfObject, map_name: str = "events", record: Any = None):
        """record: ctypes class to decode each sample into (None: raw bytes)."""
        self._obj = obj
        self._pending: list[bytes] = []
        self._record = record
        pending = self._pending

        def _cb(_ctx: int, data: int, size: int) -> int:
            pending.append(ctypes.string_at(data, size))
            return 0

        self._cb = L.RingBufferSampleFn(_cb)  # keep a reference: libbpf holds the pointer
        fd = obj.map(map_name).fd
        self._ptr = L.check_ptr(L.lib.ring_buffer__new(fd, self._cb, None, None), f"ring buffer {map_name}")

    def poll(self, timeout_ms: int = 100) -> list[Any]:
        """Wait up to timeout_ms for samples; return the decoded batch (maybe empty)."""
        ret = L.lib.ring_buffer__poll(self._ptr, timeout_ms)
        if ret < 0 and ret != -4:  # -EINTR: a signal arrived, the caller checks its stop flag
            raise L.BpfError("ring buffer poll failed", -ret)
        return self._drain()

    def consume(self) -> list[Any]:
        """Take what is already there without waiting (used at shutdown)."""
        L.lib.ring_buffer__consume(self._ptr)
        return self._drain()

    def _drain(self) -> list[Any]:
        batch = self._pending[:]
        self._pending.clear()
        if self._record is None:
            return batch
        size = ctypes.sizeof(self._record)
        decode: Callable[[bytes], Any] = self._record.from_buffer_copy
        return [decode(b[:size].ljust(size, b"\0")) for b in batch]

    @property
    def lost(self) -> int:
        """Events the BPF side could not reserve room for."""
        return self._obj.get_global("lost_events") if self._obj.has_global("lost_events") else 0

    def close(self) -> None:
        if self._ptr:
            L.lib.ring_buffer__free(self._ptr)
            self._ptr = 0
