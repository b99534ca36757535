"""pprof (profile.proto, gzipped) export of StackCounts, with a hand-written protobuf encoder.

Readable by `go tool pprof`, pprof's web UI, Pyroscope, Grafana, Speedscope... The message
layout follows github.com/google/pprof/proto/profile.proto:

  Profile  1 sample_type* 2 sample* 3 mapping* 4 location* 5 function* 6 string_table*
           9 time_nanos 10 duration_nanos 11 period_type 12 period 14 default_sample_type
  ValueType 1 type 2 unit (string indexes)
  Sample   1 location_id* (packed, LEAF FIRST) 2 value* (packed)
  Mapping  1 id 2 memory_start 3 memory_limit 4 file_offset 5 filename 7 has_functions
  Location 1 id 2 mapping_id 3 address 4 line*
  Line     1 function_id 2 line
  Function 1 id 2 name 3 system_name 4 filename

Only what is needed is encoded: varints (wire type 0) and length-delimited fields (2).
"""

from __future__ import annotations

import gzip
import zlib

from bpfscope.results import Frame, StackCounts

# ------------------------------------------------------------------- protobuf encoding


def _varint(n: int) -> bytes:
    """Base-128 varint; negative int64 values as their 64-bit two's complement."""
    if n < 0:
        n &= 0xFFFFFFFFFFFFFFFF
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _uint(field: int, n: int) -> bytes:
    """A varint field; zero (the default) is left out, as proto3 does."""
    return _key(field, 0) + _varint(n) if n else b""


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _packed(field: int, values: list[int]) -> bytes:
    return _bytes(field, b"".join(map(_varint, values))) if values else b""


class _Strings:
    """pprof string table: index 0 is ""."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {"": 0}
        self.table: list[str] = [""]

    def __call__(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.table)
            self.table.append(s)
        return i


# countname -> (sample type, unit) of the first value
_SAMPLE_TYPES = {
    "samples": ("samples", "count"),
    "us": ("offcpu", "microseconds"),
    "usecs": ("offcpu", "microseconds"),
    "ns": ("offcpu", "nanoseconds"),
    "nsecs": ("offcpu", "nanoseconds"),
    "ms": ("offcpu", "milliseconds"),
    "bytes": ("space", "bytes"),
}

_KIND_MODULE = {"kernel": "[kernel.kallsyms]", "jit": "[jit]"}


def _module_of(f: Frame) -> str:
    return f.module or _KIND_MODULE.get(f.kind, "")


def to_pprof(sc: StackCounts, *, compress: bool = True) -> bytes:
    """A gzipped profile.proto of the stack counts (raw protobuf with compress=False).

    Sample types: ("samples", "count") for sampled profiles, plus ("cpu", "nanoseconds")
    = count x sample_period when sc.sample_period (ns per sample) is set; off-CPU
    profiles (countname "us") get ("offcpu", "microseconds"). Every distinct Frame is a
    Location (address = Frame.address, else Frame.offset) with one Line -> Function
    (name, filename = module); one Mapping per module (kernel frames without a module
    map to "[kernel.kallsyms]"). Samples list their locations leaf first.
    Optional sc.stats keys: time_nanos, duration_nanos.
    """
    st = _Strings()
    countname = sc.countname or "samples"
    vtypes = [_SAMPLE_TYPES.get(countname, (countname, "count"))]
    period = sc.sample_period if countname == "samples" and sc.sample_period > 0 else 0
    if period:
        vtypes.append(("cpu", "nanoseconds"))

    mappings: dict[str, int] = {}
    functions: dict[tuple[str, str], int] = {}
    locations: dict[Frame, bytes] = {}  # Frame -> its location id, varint-encoded
    by_id: dict[int, bytes] = {}  # id(Frame) -> same; frames are usually shared objects
    fn_msgs: list[bytes] = []
    loc_msgs: list[bytes] = []
    samples: list[bytes] = []

    def location(f: Frame) -> bytes:
        enc = locations.get(f)
        if enc is not None:
            by_id[id(f)] = enc
            return enc
        module = _module_of(f)
        mid = 0
        if module:
            mid = mappings.get(module, 0)
            if not mid:
                mid = mappings[module] = len(mappings) + 1
        fkey = (f.name, module)
        fid = functions.get(fkey)
        if fid is None:
            fid = functions[fkey] = len(functions) + 1
            name = st(f.name)
            fn_msgs.append(_bytes(5, _uint(1, fid) + _uint(2, name) + _uint(3, name) + _uint(4, st(module))))
        loc = len(locations) + 1
        line = _bytes(4, _uint(1, fid))
        loc_msgs.append(_bytes(4, _uint(1, loc) + _uint(2, mid) + _uint(3, f.address or f.offset) + line))
        enc = locations[f] = by_id[id(f)] = _varint(loc)
        return enc

    get = by_id.get
    for stack, n in sc.counts.items():
        if n <= 0:
            continue
        # leaf first; the id() cache is valid while sc.counts holds the frames alive
        ids = b"".join([get(id(f)) or location(f) for f in reversed(stack)])
        values = _varint(n) + _varint(n * period) if period else _varint(n)
        body = _bytes(1, ids) if ids else b""
        samples.append(_bytes(2, body + _bytes(2, values)))

    out = bytearray()
    for t, u in vtypes:
        out += _bytes(1, _uint(1, st(t)) + _uint(2, st(u)))
    for s in samples:
        out += s
    for module, mid in mappings.items():
        out += _bytes(3, _uint(1, mid) + _uint(5, st(module)) + _uint(7, 1))
    for m in loc_msgs:
        out += m
    for m in fn_msgs:
        out += m
    # period type/period and comments reference strings: intern before writing the table
    extra = bytearray()
    stats = sc.stats or {}
    for field, key in ((9, "time_nanos"), (10, "duration_nanos")):
        v = stats.get(key)
        if isinstance(v, int) and v > 0:
            extra += _uint(field, v)
    if period:
        extra += _bytes(11, _uint(1, st("cpu")) + _uint(2, st("nanoseconds")))
        extra += _uint(12, period)
    for s in st.table:
        out += _bytes(6, s.encode("utf-8", errors="surrogatepass"))
    out += extra
    data = bytes(out)
    return gzip.compress(data, mtime=0) if compress else data


# ------------------------------------------------------------------- protobuf decoding


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = 0
    result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """(field, wire type, value) for each field; value is int (varint/fixed) or bytes."""
    i = 0
    n = len(buf)
    while i < n:
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            size, i = _read_varint(buf, i)
            if i + size > n:
                raise ValueError("truncated field")
            value = buf[i : i + size]
            i += size
        elif wire == 1:
            value = int.from_bytes(buf[i : i + 8], "little")
            i += 8
        elif wire == 5:
            value = int.from_bytes(buf[i : i + 4], "little")
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def _ints(wire: int, value) -> list[int]:
    """A repeated integer field occurrence: packed (bytes) or a single varint."""
    if wire == 2:
        out = []
        i = 0
        while i < len(value):
            v, i = _read_varint(value, i)
            out.append(v)
        return out
    return [value]


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def decode_pprof(data: bytes) -> dict:
    """Decoded profile: {"sample_type": [(type, unit)], "samples": [(names root first, values)],
    "period": int, "period_type": (type, unit) | None, "mappings": [filename], "strings": [...]}.
    Accepts gzipped or raw protobuf."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"bad gzip data: {e}") from e
    strings: list[str] = []
    raw_types: list[tuple[int, int]] = []
    raw_samples: list[tuple[list[int], list[int]]] = []
    locs: dict[int, list[int]] = {}  # location id -> function ids, innermost first
    funcs: dict[int, int] = {}  # function id -> name string index
    mapping_names: list[int] = []
    period = 0
    period_type = None

    def vtype(buf: bytes) -> tuple[int, int]:
        t = u = 0
        for f, _w, v in _fields(buf):
            if f == 1:
                t = v
            elif f == 2:
                u = v
        return t, u

    for field, wire, value in _fields(data):
        if field == 1 and wire == 2:
            raw_types.append(vtype(value))
        elif field == 2 and wire == 2:
            ids: list[int] = []
            vals: list[int] = []
            for f, w, v in _fields(value):
                if f == 1:
                    ids += _ints(w, v)
                elif f == 2:
                    vals += [_signed(x) for x in _ints(w, v)]
            raw_samples.append((ids, vals))
        elif field == 3 and wire == 2:
            for f, _w, v in _fields(value):
                if f == 5:
                    mapping_names.append(v)
        elif field == 4 and wire == 2:
            lid = 0
            fids: list[int] = []
            for f, _w, v in _fields(value):
                if f == 1:
                    lid = v
                elif f == 4:
                    for lf, _lw, lv in _fields(v):
                        if lf == 1:
                            fids.append(lv)
            locs[lid] = fids
        elif field == 5 and wire == 2:
            fid = name = 0
            for f, _w, v in _fields(value):
                if f == 1:
                    fid = v
                elif f == 2:
                    name = v
            funcs[fid] = name
        elif field == 6 and wire == 2:
            strings.append(value.decode("utf-8", errors="replace"))
        elif field == 11 and wire == 2:
            period_type = vtype(value)
        elif field == 12 and wire == 0:
            period = _signed(value)

    def s(i: int) -> str:
        if not 0 <= i < len(strings):
            raise ValueError(f"string index {i} out of range")
        return strings[i]

    samples = []
    for ids, vals in raw_samples:
        names: list[str] = []
        for lid in ids:  # leaf first; a location's lines are innermost (inlined) first
            if lid not in locs:
                raise ValueError(f"sample references unknown location {lid}")
            for fid in locs[lid]:
                if fid not in funcs:
                    raise ValueError(f"location references unknown function {fid}")
                names.append(s(funcs[fid]))
        names.reverse()
        samples.append((tuple(names), vals))
    return {
        "sample_type": [(s(t), s(u)) for t, u in raw_types],
        "samples": samples,
        "period": period,
        "period_type": (s(period_type[0]), s(period_type[1])) if period_type else None,
        "mappings": [s(i) for i in mapping_names],
        "strings": strings,
    }


def from_pprof(data: bytes, value_index: int = 0) -> dict[tuple[str, ...], int]:
    """{(root, ..., leaf): value} from a (gzipped) pprof profile; equal stacks are summed."""
    out: dict[tuple[str, ...], int] = {}
    for names, vals in decode_pprof(data)["samples"]:
        v = vals[value_index] if value_index < len(vals) else 0
        out[names] = out.get(names, 0) + v
    return out
