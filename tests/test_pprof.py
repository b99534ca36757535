"""pprof and speedscope export of StackCounts (pure Python)."""

from __future__ import annotations

import gzip
import json

import pytest

from bpfscope.render import pprof
from bpfscope.render.pprof import decode_pprof, from_pprof, to_pprof
from bpfscope.render.speedscope import to_speedscope
from bpfscope.results import Frame, StackCounts

COMM = Frame("bash", "comm")
MAIN = Frame("main", "user", "/usr/bin/bash", offset=0x1234, address=0x401234)
READ = Frame("read", "user", "/usr/lib/libc.so.6", offset=0x10, address=0x7F0000000010)
KREAD = Frame("vfs_read", "kernel", address=0xFFFFFFFF81000000)
POLL = Frame("poll", "user", "/usr/lib/libc.so.6", offset=0x20)


def sample_sc(**kw) -> StackCounts:
    return StackCounts(
        counts={
            (COMM, MAIN, READ, KREAD): 30,
            (COMM, MAIN, READ): 5,
            (COMM, MAIN): 1,
            (Frame("sshd", "comm"), POLL): 64,
        },
        **kw,
    )


def names(sc: StackCounts) -> dict[tuple[str, ...], int]:
    return {tuple(f.name for f in k): v for k, v in sc.counts.items()}


# ------------------------------------------------------------------- varints
@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**32, 2**63 - 1])
def test_varint_round_trip(n):
    enc = pprof._varint(n)
    assert pprof._read_varint(enc, 0) == (n, len(enc))


def test_varint_known_encodings():
    assert pprof._varint(0) == b"\x00"
    assert pprof._varint(1) == b"\x01"
    assert pprof._varint(150) == b"\x96\x01"  # protobuf docs' example
    assert pprof._varint(300) == b"\xac\x02"
    assert len(pprof._varint(-1)) == 10  # int64 -1: ten bytes, two's complement
    assert pprof._signed(pprof._read_varint(pprof._varint(-5), 0)[0]) == -5


# ------------------------------------------------------------------ profile
def test_pprof_is_gzip_and_round_trips():
    sc = sample_sc()
    data = to_pprof(sc)
    assert data[:2] == b"\x1f\x8b"
    raw = gzip.decompress(data)
    assert raw == to_pprof(sc, compress=False)
    assert from_pprof(data) == names(sc)
    assert from_pprof(raw) == names(sc)


def test_pprof_structure():
    prof = decode_pprof(to_pprof(sample_sc()))
    assert prof["strings"][0] == ""
    assert prof["sample_type"] == [("samples", "count")]
    assert prof["period_type"] is None
    assert sorted(prof["mappings"]) == ["/usr/bin/bash", "/usr/lib/libc.so.6", "[kernel.kallsyms]"]
    assert len(prof["strings"]) == len(set(prof["strings"]))  # interned once
    totals = sum(v[0] for _, v in prof["samples"])
    assert totals == 100


def test_pprof_locations_leaf_first():
    """profile.proto wants location_id[0] to be the leaf: check the raw message."""
    raw = to_pprof(StackCounts(counts={(COMM, MAIN, KREAD): 7}), compress=False)
    strings, samples, locs, funcs = [], [], {}, {}
    for field, _wire, value in pprof._fields(raw):
        if field == 6:
            strings.append(value.decode())
        elif field == 2:
            for f, w, v in pprof._fields(value):
                if f == 1:
                    samples.append(pprof._ints(w, v))
        elif field == 4:
            d = dict((f, v) for f, _w, v in pprof._fields(value))
            line = dict((f, v) for f, _w, v in pprof._fields(d[4]))
            locs[d[1]] = (line[1], d.get(3, 0))
        elif field == 5:
            d = dict((f, v) for f, _w, v in pprof._fields(value))
            funcs[d[1]] = d[2]
    (ids,) = samples
    leaf_fn = funcs[locs[ids[0]][0]]
    root_fn = funcs[locs[ids[-1]][0]]
    assert strings[leaf_fn] == "vfs_read" and strings[root_fn] == "bash"
    assert locs[ids[0]][1] == KREAD.address
    assert locs[ids[1]][1] == MAIN.address


def test_pprof_cpu_time_when_sample_period_set():
    sc = sample_sc(sample_period=10_101_010)  # 99 Hz
    prof = decode_pprof(to_pprof(sc))
    assert prof["sample_type"] == [("samples", "count"), ("cpu", "nanoseconds")]
    assert prof["period_type"] == ("cpu", "nanoseconds")
    assert prof["period"] == 10_101_010
    for _names, vals in prof["samples"]:
        assert vals[1] == vals[0] * 10_101_010
    assert from_pprof(to_pprof(sc), value_index=1)[("sshd", "poll")] == 64 * 10_101_010


def test_pprof_offcpu_microseconds():
    sc = sample_sc(countname="us", palette="cold")
    prof = decode_pprof(to_pprof(sc))
    assert prof["sample_type"] == [("offcpu", "microseconds")]
    assert from_pprof(to_pprof(sc)) == names(sc)


def test_pprof_merges_equal_name_stacks_and_skips_zero():
    sc = StackCounts(
        counts={
            (Frame("a", address=1),): 2,
            (Frame("a", address=2),): 3,  # distinct location, same function
            (Frame("b"),): 0,
        }
    )
    prof = decode_pprof(to_pprof(sc))
    assert len(prof["samples"]) == 2
    assert from_pprof(to_pprof(sc)) == {("a",): 5}
    assert prof["strings"].count("a") == 1


def test_pprof_empty_and_deterministic():
    assert from_pprof(to_pprof(StackCounts(counts={}))) == {}
    assert to_pprof(sample_sc()) == to_pprof(sample_sc())


def test_pprof_unicode_names():
    sc = StackCounts(counts={(Frame("naïve_ünïcode"), Frame("日本")): 4})
    assert from_pprof(to_pprof(sc)) == {("naïve_ünïcode", "日本"): 4}


def test_pprof_large_round_trip():
    counts = {}
    for i in range(2000):
        stack = (Frame(f"comm{i % 7}", "comm"),) + tuple(
            Frame(f"f{(i * j) % 97}") for j in range(1, 2 + i % 30)
        )
        counts[stack] = counts.get(stack, 0) + i + 1
    sc = StackCounts(counts=counts)
    assert from_pprof(to_pprof(sc)) == names(sc)


def test_from_pprof_rejects_garbage():
    with pytest.raises(ValueError):
        from_pprof(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError):
        from_pprof(b"\x12\x05\x0a")  # truncated sample field


# ------------------------------------------------------------------ speedscope
def test_speedscope_sampled_profile():
    sc = sample_sc()
    doc = json.loads(to_speedscope(sc))
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    (prof,) = doc["profiles"]
    assert prof["type"] == "sampled" and prof["unit"] == "none"
    assert len(prof["samples"]) == len(prof["weights"]) == 4
    assert prof["endValue"] == sum(prof["weights"]) == 100
    frames = doc["shared"]["frames"]
    got = {
        tuple(frames[i]["name"] for i in s): w for s, w in zip(prof["samples"], prof["weights"], strict=True)
    }
    assert got == names(sc)  # root first
    assert {"name": "main", "file": "/usr/bin/bash"} in frames


def test_speedscope_units():
    assert json.loads(to_speedscope(sample_sc(countname="us")))["profiles"][0]["unit"] == "microseconds"
    prof = json.loads(to_speedscope(sample_sc(sample_period=1000)))["profiles"][0]
    assert prof["unit"] == "nanoseconds" and prof["endValue"] == 100_000
