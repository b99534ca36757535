"""The libbpf layer itself: loss accounting, typed maps, globals, BTF-derived records."""

from __future__ import annotations

import ctypes
import os
import subprocess
import uuid

import pytest

from bpfscope.bpf import mounts
from bpfscope.bpf.object import BpfObject, loaded_program_ids
from bpfscope.bpf.ringbuf import RingBuffer
from bpfscope.toolkit import object_path
from tests.helpers import programs_left

pytestmark = pytest.mark.bpf


def _execsnoop(ring_bytes: int | None = None) -> BpfObject:
    mounts.tracefs()
    obj = BpfObject(object_path("execsnoop"))
    obj.set_global("targ_ppid", os.getpid())
    obj.set_global("max_args", 4)
    if ring_bytes:
        obj.map("events").resize(ring_bytes)
    obj.load()
    for prog in ("tp_enter_execve", "tp_exit_execve"):
        obj.program(prog).attach_tracepoint("syscalls", "sys_" + prog.split("_", 1)[1])
    return obj


def test_ring_buffer_losses_are_counted_exactly():
    """A one-page ring buffer nobody drains: every exec is either delivered or counted lost."""
    n = 40
    with _execsnoop(ring_bytes=4096) as obj:
        rb = RingBuffer(obj, "events")
        tag = uuid.uuid4().hex[:8]
        for i in range(n):
            subprocess.run(["/bin/true", f"{tag}-{i}"], check=True)
        got = rb.consume()
        mine = [b for b in got if tag.encode() in b]
        lost = rb.lost
        rb.close()
    assert lost > 0, "a 4 KiB ring buffer must overflow with 40 exec events"
    assert len(mine) + lost == n


def test_globals_struct_and_cleanup():
    before = loaded_program_ids()
    with _execsnoop() as obj:
        assert obj.get_global("max_args") == 4
        assert obj.get_global("targ_ppid") == os.getpid()
        ev = obj.struct("event")
        assert ctypes.sizeof(ev) == ev.args.offset + 60 * 128  # struct layout straight from BTF
        assert ev.comm.size == 16
        assert obj.get_global("lost_events") == 0
        during = loaded_program_ids() - before
        assert len(during) >= 2
        with pytest.raises(RuntimeError):
            obj.set_global("max_args", 5)
    assert not programs_left(during)


def test_hash_map_update_lookup_items_delete():
    with _execsnoop() as obj:
        m = obj.map("execs")  # hash, key u32, value struct event
        ev = obj.struct("event")
        m.typed(ctypes.c_uint32, ev)
        for k in range(1, 101):
            e = ev()
            e.pid = k * 10
            m.update(k, bytes(e))
        items = {int(k): v.pid for k, v in m.items()}
        assert items == {k: k * 10 for k in range(1, 101)}
        assert m.lookup(7).pid == 70
        assert m.delete(7) and m.lookup(7) is None
        popped = m.pop_all()
        assert len(popped) == 99 and not m.items()
