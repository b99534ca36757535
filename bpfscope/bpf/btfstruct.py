"""ctypes types derived from BTF through libbpf's btf__ API.

Struct layouts live once, in the .bpf.c file; the compiled object's BTF describes them,
so Python decoders are built from it instead of being mirrored by hand.
"""

from __future__ import annotations

import ctypes

from . import libbpf as L

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_TYPE_TAG, KIND_ENUM64 = 14, 15, 16, 18, 19
_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_or_type", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class _BtfArray(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("index_type", ctypes.c_uint32), ("nelems", ctypes.c_uint32)]


class _BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32), ("size", ctypes.c_uint32)]


_INTS = {
    (1, False): ctypes.c_uint8, (1, True): ctypes.c_int8,
    (2, False): ctypes.c_uint16, (2, True): ctypes.c_int16,
    (4, False): ctypes.c_uint32, (4, True): ctypes.c_int32,
    (8, False): ctypes.c_uint64, (8, True): ctypes.c_int64,
}


class Btf:
    """A view over a libbpf `struct btf *` that builds ctypes types on demand."""

    def __init__(self, btf_ptr: int):
        self._btf = btf_ptr
        self._cache: dict[int, type] = {}

    def _type(self, type_id: int) -> _BtfType:
        ptr = L.lib.btf__type_by_id(self._btf, type_id)
        return _BtfType.from_address(L.check_ptr(ptr, f"btf type {type_id}"))

    def _name(self, off: int) -> str:
        raw = L.lib.btf__name_by_offset(self._btf, off)
        return raw.decode() if raw else ""

    @staticmethod
    def _kind(t: _BtfType) -> int:
        return (t.info >> 24) & 0x1F

    def find(self, name: str, kind: int) -> int:
        tid = L.lib.btf__find_by_name_kind(self._btf, name.encode(), kind)
        if tid < 0:
            raise KeyError(f"no BTF type {name!r} (kind {kind}) in object")
        return tid

    def struct(self, name: str) -> type[ctypes.Structure]:
        """ctypes class for `struct name` (falls back to a typedef of that name)."""
        try:
            return self.ctype(self.find(name, KIND_STRUCT))
        except KeyError:
            return self.ctype(self.find(name, KIND_TYPEDEF))

    def ctype(self, type_id: int) -> type:
        if type_id in self._cache:
            return self._cache[type_id]
        t = self._type(type_id)
        kind = self._kind(t)
        if kind in _MODIFIERS:
            result = self.ctype(t.size_or_type)
        elif kind == KIND_INT:
            enc = ctypes.c_uint32.from_address(ctypes.addressof(t) + ctypes.sizeof(t)).value
            signed = bool((enc >> 24) & 1)
            is_bool = bool((enc >> 24) & 4)
            if is_bool:
                result = ctypes.c_bool
            elif t.size_or_type == 1 and (enc >> 24) & 2 or self._name(t.name_off) == "char":
                result = ctypes.c_char  # char arrays decode to bytes
            else:
                result = _INTS.get((t.size_or_type, signed), ctypes.c_uint8 * t.size_or_type)
        elif kind in (KIND_ENUM, KIND_ENUM64):
            result = _INTS[(t.size_or_type, False)]
        elif kind == KIND_PTR:
            result = ctypes.c_uint64
        elif kind == KIND_FLOAT:
            result = ctypes.c_double if t.size_or_type == 8 else ctypes.c_float
        elif kind == KIND_ARRAY:
            arr = _BtfArray.from_address(ctypes.addressof(t) + ctypes.sizeof(t))
            elem = self.ctype(arr.type)
            result = elem * arr.nelems
        elif kind in (KIND_STRUCT, KIND_UNION):
            result = self._record(type_id, t, kind)
        else:
            raise TypeError(f"BTF kind {kind} not decodable (type {type_id})")
        self._cache[type_id] = result
        return result

    def _record(self, type_id: int, t: _BtfType, kind: int) -> type:
        """Build a packed Structure with explicit padding so offsets match BTF exactly."""
        vlen = t.info & 0xFFFF
        kflag = t.info >> 31
        base = ctypes.addressof(t) + ctypes.sizeof(t)
        fields: list[tuple] = []
        pos = 0
        pad_no = 0
        members = [_BtfMember.from_address(base + i * ctypes.sizeof(_BtfMember)) for i in range(vlen)]
        name = self._name(t.name_off) or f"anon_{type_id}"
        if kind == KIND_UNION:
            ufields = [(self._name(m.name_off) or f"_u{i}", self.ctype(m.type)) for i, m in enumerate(members)]
            cls = type(name, (ctypes.Union,), {"_pack_": 1, "_fields_": ufields})
            return cls
        for i, m in enumerate(members):
            bit_off = m.offset & 0xFFFFFF if kflag else m.offset
            bitfield = (m.offset >> 24) if kflag else 0
            if bitfield or bit_off % 8:
                continue  # bitfields are not used in event structs; skip rather than misdecode
            byte_off = bit_off // 8
            if byte_off < pos:
                continue
            if byte_off > pos:
                fields.append((f"_pad{pad_no}", ctypes.c_uint8 * (byte_off - pos)))
                pad_no += 1
            ctype = self.ctype(m.type)
            fields.append((self._name(m.name_off) or f"_anon{i}", ctype))
            pos = byte_off + ctypes.sizeof(ctype)
        if t.size_or_type > pos:
            fields.append((f"_pad{pad_no}", ctypes.c_uint8 * (t.size_or_type - pos)))
        cls = type(name, (ctypes.Structure,), {"_pack_": 1, "_fields_": fields})
        assert ctypes.sizeof(cls) == t.size_or_type, (name, ctypes.sizeof(cls), t.size_or_type)
        return cls

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int, int]]:
        """name -> (offset, size, type_id) of each global in a data section (.rodata, .bss...)."""
        try:
            sec_id = self.find(section, KIND_DATASEC)
        except KeyError:
            return {}
        t = self._type(sec_id)
        base = ctypes.addressof(t) + ctypes.sizeof(t)
        out: dict[str, tuple[int, int, int]] = {}
        for i in range(t.info & 0xFFFF):
            info = _BtfVarSecinfo.from_address(base + i * ctypes.sizeof(_BtfVarSecinfo))
            var = self._type(info.type)
            out[self._name(var.name_off)] = (info.offset, info.size, var.size_or_type)
        return out
