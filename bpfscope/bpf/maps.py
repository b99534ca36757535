"""Map access: raw bytes or typed records (ctypes classes from the object's BTF).

Per-CPU maps return one value per possible CPU; `sum_percpu` folds them. Iteration uses
BPF_MAP_LOOKUP_BATCH where the kernel supports it (one syscall per chunk instead of two
per key) and falls back to get_next_key.
"""

from __future__ import annotations

import ctypes
import errno as E
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import libbpf as L

if TYPE_CHECKING:
    from .object import BpfObject

MAP_HASH, MAP_ARRAY, MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_STACK_TRACE = 1, 2, 5, 6, 7
MAP_LRU_HASH, MAP_LRU_PERCPU_HASH, MAP_RINGBUF = 9, 10, 27
PERCPU_TYPES = {MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH}

_ncpus: int | None = None


def possible_cpus() -> int:
    global _ncpus
    if _ncpus is None:
        _ncpus = L.lib.libbpf_num_possible_cpus()
    return _ncpus


class Map:
    def __init__(self, obj: BpfObject, ptr: int):
        self._obj = obj
        self._ptr = ptr
        self.name = L.lib.bpf_map__name(ptr).decode()
        self.key_type: Any = None  # ctypes class; default: raw bytes
        self.value_type: Any = None
        self._batch_ok = True

    # ---- shape -----------------------------------------------------------
    @property
    def fd(self) -> int:
        return L.lib.bpf_map__fd(self._ptr)

    @property
    def type(self) -> int:
        return L.lib.bpf_map__type(self._ptr)

    @property
    def key_size(self) -> int:
        return L.lib.bpf_map__key_size(self._ptr)

    @property
    def value_size(self) -> int:
        return L.lib.bpf_map__value_size(self._ptr)

    @property
    def max_entries(self) -> int:
        return L.lib.bpf_map__max_entries(self._ptr)

    def resize(self, max_entries: int) -> None:
        """Before load: set max_entries (stack map size, event buffer size...)."""
        L.check_int(L.lib.bpf_map__set_max_entries(self._ptr, max_entries), f"resize {self.name}")

    def set_autocreate(self, create: bool) -> None:
        """Before load: False leaves the map out (a map type this kernel lacks, used only by
        programs that are not loaded)."""
        L.check_int(L.lib.bpf_map__set_autocreate(self._ptr, create), f"autocreate {self.name}")

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_TYPES

    def _value_stride(self) -> int:
        return (self.value_size + 7) & ~7 if self.percpu else self.value_size

    def _value_len(self) -> int:
        return self._value_stride() * (possible_cpus() if self.percpu else 1)

    def typed(self, key: Any = None, value: Any = None) -> Map:
        """Decode keys/values as these ctypes classes (from obj.struct(...) or ctypes ints)."""
        self.key_type, self.value_type = key, value
        return self

    # ---- encode / decode -------------------------------------------------
    def _key_buf(self, key: Any) -> ctypes.Array:
        if isinstance(key, int):
            raw = key.to_bytes(self.key_size, "little")
        elif isinstance(key, (bytes, bytearray)):
            raw = bytes(key)
        else:
            raw = bytes(key)  # ctypes instance
        return ctypes.create_string_buffer(raw, self.key_size)

    def _decode_key(self, raw: bytes) -> Any:
        return _decode(self.key_type, raw)

    def _decode_value(self, raw: bytes) -> Any:
        if self.percpu:
            stride = self._value_stride()
            return [self._decode_one(raw[i * stride : i * stride + self.value_size]) for i in range(possible_cpus())]
        return self._decode_one(raw)

    def _decode_one(self, raw: bytes) -> Any:
        return _decode(self.value_type, raw)

    # ---- element ops -----------------------------------------------------
    def lookup(self, key: Any) -> Any:
        """Value for key, or None when absent."""
        kb = self._key_buf(key)
        vb = ctypes.create_string_buffer(self._value_len())
        if L.lib.bpf_map_lookup_elem(self.fd, kb, vb) != 0:
            err = L.errno()
            if err == E.ENOENT:
                return None
            raise L.BpfError(f"lookup in {self.name} failed", err)
        return self._decode_value(vb.raw)

    def update(self, key: Any, value: Any, flags: int = 0) -> None:
        kb = self._key_buf(key)
        if isinstance(value, int):
            raw = value.to_bytes(self.value_size, "little")
        else:
            raw = bytes(value)
        if self.percpu and len(raw) == self.value_size:
            raw = raw.ljust(self._value_stride(), b"\0") * possible_cpus()
        vb = ctypes.create_string_buffer(raw, self._value_len())
        L.check_int(
            -L.errno() if L.lib.bpf_map_update_elem(self.fd, kb, vb, flags) != 0 else 0, f"update {self.name}"
        )

    def delete(self, key: Any) -> bool:
        ok = L.lib.bpf_map_delete_elem(self.fd, self._key_buf(key)) == 0
        return ok

    def take(self, key: Any) -> bytes | None:
        """Read and delete one entry in one step, so no increment falls in between (raw value).

        Kernels before 5.14 refuse that on hash maps: then read, then delete.
        """
        kb = self._key_buf(key)
        vb = ctypes.create_string_buffer(self._value_len())
        if L.lib.bpf_map_lookup_and_delete_elem(self.fd, kb, vb) == 0:
            return vb.raw
        if L.errno() == E.ENOENT:
            return None
        if L.lib.bpf_map_lookup_elem(self.fd, kb, vb) != 0:
            return None
        L.lib.bpf_map_delete_elem(self.fd, kb)
        return vb.raw

    def keys(self) -> Iterator[bytes]:
        prev = None
        nk = ctypes.create_string_buffer(self.key_size)
        while L.lib.bpf_map_get_next_key(self.fd, prev, nk) == 0:
            raw = nk.raw
            yield raw
            prev = ctypes.create_string_buffer(raw, self.key_size)

    def items_raw(self) -> list[tuple[bytes, bytes]]:
        """All (key, value) pairs as bytes; batched when the kernel allows it."""
        if self._batch_ok and self.type not in (MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_STACK_TRACE):
            try:
                return self._items_batch()
            except L.BpfError as e:
                if e.errno not in (E.EINVAL, E.ENOTSUPP if hasattr(E, "ENOTSUPP") else 524, 524, E.EPERM):
                    raise
                self._batch_ok = False
        out = []
        vb = ctypes.create_string_buffer(self._value_len())
        for k in self.keys():
            if L.lib.bpf_map_lookup_elem(self.fd, ctypes.create_string_buffer(k, self.key_size), vb) == 0:
                out.append((k, vb.raw))
        return out

    def _items_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        ks, vs = self.key_size, self._value_len()
        n = max(1, min(chunk, self.max_entries))
        keys = ctypes.create_string_buffer(ks * n)
        vals = ctypes.create_string_buffer(vs * n)
        out_batch = ctypes.create_string_buffer(max(ks, 8))
        in_batch = None
        opts = L.BpfMapBatchOpts(sz=ctypes.sizeof(L.BpfMapBatchOpts))
        out: list[tuple[bytes, bytes]] = []
        while True:
            count = L.c_uint(n)
            ret = L.lib.bpf_map_lookup_batch(
                self.fd, in_batch, out_batch, keys, vals, ctypes.byref(count), ctypes.byref(opts)
            )
            err = L.errno() if ret != 0 else 0
            if ret != 0 and err != E.ENOENT:
                raise L.BpfError(f"batch lookup in {self.name} failed", err)
            kraw, vraw = keys.raw, vals.raw
            for i in range(count.value):
                out.append((kraw[i * ks : (i + 1) * ks], vraw[i * vs : (i + 1) * vs]))
            if ret != 0:  # ENOENT: that was the last chunk
                return out
            in_batch = ctypes.create_string_buffer(out_batch.raw, len(out_batch))

    def items(self) -> list[tuple[Any, Any]]:
        return [(self._decode_key(k), self._decode_value(v)) for k, v in self.items_raw()]

    def clear(self) -> None:
        for k in list(self.keys()):
            L.lib.bpf_map_delete_elem(self.fd, ctypes.create_string_buffer(k, self.key_size))

    def pop_all(self) -> list[tuple[Any, Any]]:
        """Read and delete every entry (interval output: print and clear)."""
        items = self.items_raw()
        for k, _ in items:
            L.lib.bpf_map_delete_elem(self.fd, ctypes.create_string_buffer(k, self.key_size))
        return [(self._decode_key(k), self._decode_value(v)) for k, v in items]

    # ---- arrays ----------------------------------------------------------
    def array_values(self) -> list[Any]:
        """Every slot of an array map, in index order (per-CPU values summed when integers)."""
        out = []
        vb = ctypes.create_string_buffer(self._value_len())
        for i in range(self.max_entries):
            kb = ctypes.create_string_buffer(i.to_bytes(4, "little"), 4)
            L.lib.bpf_map_lookup_elem(self.fd, kb, vb)
            out.append(self._decode_value(vb.raw))
        return out


def _decode(ctype: Any, raw: bytes) -> Any:
    """bytes -> ctypes record, or int/float for simple types, or bytes when untyped."""
    if ctype is None:
        return raw
    value = ctype.from_buffer_copy(raw[: ctypes.sizeof(ctype)])
    return value.value if isinstance(value, ctypes._SimpleCData) else value


def sum_percpu(values: list[Any]) -> Any:
    """Fold per-CPU values: ints add; ctypes structs add field by field."""
    if not values:
        return 0
    first = values[0]
    if isinstance(first, int):
        return sum(values)
    acc = type(first)()
    for v in values:
        for fname, _ in type(first)._fields_:
            if fname.startswith("_pad"):
                continue
            setattr(acc, fname, getattr(acc, fname) + getattr(v, fname))
    return acc
