"""What tools share: locating their .bpf.o, opening it ready to configure, event loops.

This is also the public API for user-written tools (see bpfscope.api).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .bpf import mounts
from .bpf.object import BpfObject
from .bpf.ringbuf import RingBuffer
from .errors import BpfscopeError
from .registry import RunContext
from .results import Event, Summary

TOOLS_DIR = Path(__file__).with_name("tools")


def object_path(name: str) -> Path:
    """The compiled object of tool `name` (tools/<name>.bpf.o, built by `make bpf`)."""
    return TOOLS_DIR / f"{name}.bpf.o"


def check_privileges() -> None:
    if os.geteuid() == 0:
        return
    from .bpf.features import Features

    ok, why = Features().check("root")
    if not ok:
        raise BpfscopeError(why)


def open_object(path: str | os.PathLike[str], needs_tracefs: bool = True) -> BpfObject:
    """Open a BPF object after checking privileges and mounting tracefs if needed."""
    check_privileges()
    if needs_tracefs:
        mounts.tracefs()
    return BpfObject(path)


def stream_events(
    obj: BpfObject,
    ctx: RunContext,
    decode: Callable[[bytes], dict[str, Any] | None],
    map_name: str = "events",
) -> Iterator[Event | Summary]:
    """Poll the ring buffer until the run stops; yield decoded events, then a Summary."""
    rb = RingBuffer(obj, map_name)
    try:
        while ctx.running():
            for raw in rb.poll(ctx.poll_timeout_ms()):
                rec = decode(raw)
                if rec is not None:
                    yield Event(rec)
        for raw in rb.consume():
            rec = decode(raw)
            if rec is not None:
                yield Event(rec)
        ctx.lost_events = rb.lost
        yield Summary(lost_events=rb.lost)
    finally:
        rb.close()


def cstr(raw: bytes) -> str:
    """A NUL-terminated C string field as text (invalid UTF-8 kept visible, not dropped)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def monotonic_to_wall(ts_ns: int) -> float:
    """bpf_ktime_get_ns() (CLOCK_MONOTONIC) to a Unix timestamp."""
    return time.time() - (time.monotonic_ns() - ts_ns) / 1e9
