"""tcplife: one line per TCP session (IPv4 and IPv6), as BCC's tcplife prints them."""

from __future__ import annotations

import ctypes
import ipaddress
import time
from collections.abc import Iterator
from typing import Any

from ..errors import UsageError
from ..options import DURATION, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Column, Notice, Result
from ..toolkit import cstr, monotonic_to_wall, object_path, open_object, stream_events

AF_INET, AF_INET6 = 2, 10
MAX_PORTS = 8  # as in tcplife.bpf.c
PORTS_PATTERN = r"[0-9]{1,5}(,[0-9]{1,5}){0,63}"


def _ports(spec: list[str] | None, what: str) -> list[int]:
    out: list[int] = []
    for item in spec or []:
        for p in str(item).split(","):
            port = int(p)
            if not 1 <= port <= 65535:
                raise UsageError(f"{what}: port {port} out of range 1-65535")
            out.append(port)
    if len(out) > MAX_PORTS:
        raise UsageError(f"{what}: at most {MAX_PORTS} ports")
    return out


@register
class Tcplife(Tool):
    name = "tcplife"
    help = "trace TCP sessions and summarize lifespan: PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS"
    output = "events"
    streaming = True
    hooks = HookPlan((Hook("tracepoint", ("tracepoint",), "sock:inet_sock_set_state"),))
    options = [
        Option("time", bool, False, "include time column on output (HH:MM:SS)", ("-T", "--time")),
        Option("timestamp", bool, False, "include timestamp on output (seconds)", ("-t", "--timestamp")),
        Option("wide", bool, False, "wide column output (fits IPv6 addresses)", ("-w", "--wide")),
        Option("pid", int, None, "trace this PID only", ("-p", "--pid"), min=1, max=2**22, metavar="PID"),
        Option("localport", str, None, "comma-separated list of local ports to trace", ("-L", "--localport"),
               multiple=True, pattern=PORTS_PATTERN, metavar="PORT[,PORT...]"),
        Option("remoteport", str, None, "comma-separated list of remote ports to trace", ("-D", "--remoteport"),
               multiple=True, pattern=PORTS_PATTERN, metavar="PORT[,PORT...]"),
        Option("ipv4", bool, False, "trace IPv4 family only", ("-4", "--ipv4")),
        Option("ipv6", bool, False, "trace IPv6 family only", ("-6", "--ipv6")),
        DURATION,
    ]
    examples = [
        "bpfscope tcplife              # trace all TCP connect()s",
        "bpfscope tcplife -t           # include time column (seconds since start)",
        "bpfscope tcplife -w           # wider columns (fit IPv6)",
        "bpfscope tcplife -p 181       # only trace PID 181",
        "bpfscope tcplife -L 80        # only trace local port 80",
        "bpfscope tcplife -L 80,81     # only trace local ports 80 and 81",
        "bpfscope tcplife -D 80        # only trace remote port 80",
        "bpfscope tcplife -4           # only trace IPv4 family",
        "bpfscope tcplife --json       # one JSON object per session, bytes exact",
    ]

    @classmethod
    def text_columns(cls, ns: Any) -> list[Column]:
        wide = getattr(ns, "wide", False)
        aw = 26 if wide else 15
        cw = 16 if wide else 10
        cols = []
        if getattr(ns, "time", False):
            cols.append(Column("TIME", "time_of_day", 8))
        if getattr(ns, "timestamp", False):
            cols.append(Column("TIME(s)", "elapsed", 9, fmt=lambda v, r: f"{v:.6f}"))
        cols.append(Column("PID", "pid", 7 if wide else 5))
        cols.append(Column("COMM", "comm", cw, fmt=lambda v, r: v[:cw]))
        if wide:
            cols.append(Column("IP", "ip", 2))
        cols += [
            Column("LADDR", "laddr", aw),
            Column("LPORT", "lport", 5),
            Column("RADDR", "raddr", aw),
            Column("RPORT", "rport", 5),
            Column("TX_KB", "tx_kb", 6 if wide else 5, align=">"),
            Column("RX_KB", "rx_kb", 6 if wide else 5, align=">"),
            Column("MS", "ms", fmt=lambda v, r: f"{v:.2f}"),
        ]
        return cols

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        if opts.ipv4 and opts.ipv6:
            raise UsageError("-4 and -6 exclude each other")
        lports = _ports(opts.localport, "localport")
        rports = _ports(opts.remoteport, "remoteport")
        with open_object(object_path("tcplife")) as obj:
            if opts.pid:
                obj.set_global("targ_tgid", opts.pid)
            if opts.ipv4 or opts.ipv6:
                obj.set_global("targ_family", AF_INET if opts.ipv4 else AF_INET6)
            if lports:
                obj.set_global("targ_lports", b"".join(p.to_bytes(2, "little") for p in lports))
            if rports:
                obj.set_global("targ_rports", b"".join(p.to_bytes(2, "little") for p in rports))
            obj.load()
            start_ns = time.monotonic_ns()
            obj.program("tp_set_state").attach_tracepoint("sock", "inet_sock_set_state")
            ctx.mode = "tracepoint"
            ctx.mark_attached()
            yield Notice("Tracing TCP sessions (tracepoint mode)... Hit Ctrl-C to end.")

            event_t = obj.struct("event")
            size = ctypes.sizeof(event_t)

            def decode(raw: bytes) -> dict[str, Any]:
                e = event_t.from_buffer_copy(raw[:size].ljust(size, b"\0"))
                v4 = e.family == AF_INET
                la, ra = bytes(e.laddr), bytes(e.raddr)
                laddr = ipaddress.ip_address(la[:4] if v4 else la)
                raddr = ipaddress.ip_address(ra[:4] if v4 else ra)
                return {
                    "pid": e.pid,
                    "comm": cstr(e.comm),
                    "owner_known": bool(e.owner_known),
                    "family": "IPv4" if v4 else "IPv6",
                    "ip": 4 if v4 else 6,
                    "laddr": str(laddr),
                    "lport": e.lport,
                    "raddr": str(raddr),
                    "rport": e.rport,
                    "tx_bytes": e.tx_bytes,
                    "rx_bytes": e.rx_bytes,
                    "tx_kb": e.tx_bytes // 1024,
                    "rx_kb": e.rx_bytes // 1024,
                    "ms": e.span_ns / 1e6,
                    "timestamp_ns": e.ts_ns,
                    "time": monotonic_to_wall(e.ts_ns),
                    "elapsed": (e.ts_ns - start_ns) / 1e9,
                    "time_of_day": time.strftime("%H:%M:%S"),
                }

            yield from stream_events(obj, ctx, decode)
