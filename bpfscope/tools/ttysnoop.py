"""ttysnoop: watch everything written to one terminal, live (BCC's ttysnoop, also without kprobes).

Kernel mode hooks tty_write (fentry, else kprobe; both its (file, buf, count) and its
>= 5.10.11 (kiocb, iov_iter) signatures). Where neither exists (this kernel), tracepoint
mode hooks the write/writev/pwrite64 syscalls and keeps, in BPF, the fds whose file is the
terminal (task->files->fdt->fd[fd]->f_inode->i_rdev against the terminal's device number).
Tracepoint mode sees writes made through the terminal's own device node (what shells,
editors and programs started on it do); writes through /dev/tty and console redirection
reach the tty layer only, so kernel mode alone sees those.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..bpf.ringbuf import RingBuffer
from ..errors import BpfscopeError, UsageError
from ..options import DURATION, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Event, Notice, Result, Summary
from ..toolkit import cstr, object_path, open_object

TRACEPOINT_PROGRAMS = {"tp_write": "sys_enter_write", "tp_writev": "sys_enter_writev",
                       "tp_pwrite64": "sys_enter_pwrite64"}
SYSCALLS = {1: "write", 2: "writev", 3: "pwrite64", 4: "tty_write"}
EV_TRUNCATED, EV_FAULT = 1, 2
MINORBITS = 20
PTS_MAJORS = range(136, 144)  # UNIX98_PTY_SLAVE_MAJOR .. + UNIX98_PTY_MAJOR_COUNT
CLEAR = "\033c"  # what BCC's ttysnoop prints first (reset the watching terminal)
MAX_DATA, MAX_COUNT = 8192, 128  # as in ttysnoop.bpf.c
KIND_FUNC = 12  # BTF_KIND_FUNC


def kernel_dev(dev: int) -> int:
    """A user-space dev_t (stat) in the kernel's encoding: MKDEV(major, minor)."""
    return (os.major(dev) << MINORBITS) | os.minor(dev)


@dataclass(frozen=True)
class Terminal:
    path: str
    rdev: int  # kernel dev_t of the terminal
    sb_dev: int  # pts: kernel dev_t of its devpts instance (a container's pts/0 is not the host's)


def _tty_majors(proc_devices: str = "/proc/devices") -> set[int]:
    """Character-device majors whose drivers are terminals (tty, ttyS, pts, ttyUSB...)."""
    majors: set[int] = set()
    try:
        with open(proc_devices) as f:
            text = f.read()
    except OSError:
        return set(range(2, 6)) | set(PTS_MAJORS)
    chars = text.split("Block devices:")[0]
    for line in chars.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            name = parts[1].strip()
            if re.match(r"(tty|pts|/dev/vc/|/dev/tty|ttyS|ttyUSB|ttyACM|ttyAMA|hvc)", name) and name != "/dev/ptmx":
                majors.add(int(parts[0]))
    return majors


def resolve_terminal(arg: str) -> Terminal:
    """`3`, `pts/3`, `/dev/pts/3`, `tty1`, `/dev/tty1` -> the terminal to watch (UsageError if none)."""
    arg = arg.strip()
    if re.fullmatch(r"[0-9]{1,7}", arg):
        path = f"/dev/pts/{int(arg)}"
    elif arg.startswith("/dev/"):
        path = arg
    elif re.fullmatch(r"(pts/[0-9]{1,7}|[A-Za-z][A-Za-z0-9]{0,31})", arg):
        path = "/dev/" + arg
    else:
        raise UsageError(f"device: {arg!r} is not a terminal (give /dev/pts/N, N, or /dev/ttyX)")
    if os.path.normpath(path) != path or ".." in path.split("/"):
        raise UsageError(f"device: {arg!r} is not a terminal path")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"device: no such terminal {path}") from None
    except OSError as e:
        raise UsageError(f"device: cannot stat {path}: {e.strerror}") from None
    if not stat.S_ISCHR(st.st_mode):
        raise UsageError(f"device: {path} is not a character device")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    if (major, minor) == (5, 0):
        raise UsageError("device: /dev/tty is each process's own terminal; name the terminal (e.g. /dev/pts/3)")
    if (major, minor) == (5, 2) or major in (128, 129) or path.endswith("/ptmx"):
        raise UsageError(f"device: {path} is the pty master multiplexer, not a terminal")
    if major not in _tty_majors() and major not in PTS_MAJORS:
        raise UsageError(f"device: {path} ({major}:{minor}) is not a terminal")
    sb_dev = kernel_dev(st.st_dev) if major in PTS_MAJORS else 0
    return Terminal(path=path, rdev=kernel_dev(st.st_rdev), sb_dev=sb_dev)


@contextlib.contextmanager
def _vmlinux_btf() -> Iterator[Any]:
    """The running kernel's BTF (a bpfscope Btf view), or None without /sys/kernel/btf/vmlinux."""
    from ..bpf import libbpf as L
    from ..bpf.btfstruct import Btf

    ptr = L.lib.btf__load_vmlinux_btf()
    try:
        yield Btf(ptr) if ptr else None
    finally:
        if ptr:
            L.lib.btf__free(ptr)


def kernel_has_func(name: str) -> bool:
    """Whether kernel BTF describes a function (kfuncs such as bpf_rdonly_cast included)."""
    with _vmlinux_btf() as btf:
        if btf is None:
            return False
        try:
            btf.find(name, KIND_FUNC)
        except KeyError:
            return False
        return True


def tty_write_signature() -> str | None:
    """'iter' for tty_write(struct kiocb *, struct iov_iter *) (5.11+, 5.10.11+), 'file' for
    tty_write(struct file *, const char *, size_t, loff_t *), None if kernel BTF does not say."""
    from ..bpf.btfstruct import KIND_PTR, Btf

    with _vmlinux_btf() as btf:
        if btf is None:
            return None
        try:
            func = btf._type(btf.find("tty_write", KIND_FUNC))
        except KeyError:
            return None
        proto = btf._type(func.size_or_type)
        nparams = proto.info & 0xFFFF
        if nparams == 0:
            return None
        # struct btf_param {name_off, type} follows the FUNC_PROTO record
        first_type = ctypes.c_uint32.from_address(ctypes.addressof(proto) + ctypes.sizeof(proto) + 4).value
        first = btf._type(first_type)
        if Btf._kind(first) == KIND_PTR:
            name = btf._name(btf._type(first.size_or_type).name_off)
            if name in ("kiocb", "file"):
                return "iter" if name == "kiocb" else "file"
        return "iter" if nparams == 2 else "file"


class _Decoder:
    """Ring-buffer records -> Events (JSON record + the bytes for text mode)."""

    def __init__(self, event_t: Any, clear: bool):
        self.event_t = event_t
        self.size = ctypes.sizeof(event_t)
        self.data_off = event_t.data.offset
        self.text = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self.clear = clear
        self.writes_cut = 0
        self.bytes_not_shown = 0
        self.unreadable = 0

    def __call__(self, raw: bytes) -> tuple[Event, bool]:
        e = self.event_t.from_buffer_copy(raw[: self.size].ljust(self.size, b"\0"))
        count = min(e.count, len(raw) - self.data_off, MAX_DATA)
        data = raw[self.data_off : self.data_off + count]
        truncated = bool(e.flags & EV_TRUNCATED)
        if truncated:
            self.writes_cut += 1
            self.bytes_not_shown += e.not_shown
        if e.flags & EV_FAULT:
            self.unreadable += 1
        rec = {
            "pid": e.pid,
            "tid": e.tid,
            "uid": e.uid,
            "comm": cstr(e.comm),
            "fd": e.fd if e.fd >= 0 else None,
            "syscall": SYSCALLS.get(e.syscall, str(e.syscall)),
            "count": count,
            "data": data.decode("utf-8", "backslashreplace"),
            "part": e.part,
            "write_bytes": e.total,
            "truncated": truncated,
            "not_shown": e.not_shown,
            "unreadable": bool(e.flags & EV_FAULT),
            "timestamp_ns": e.ts_ns,
        }
        text = self.text.decode(data)
        if self.clear:
            text, self.clear = CLEAR + text, False
        return Event(rec, text=text), truncated


@register
class Ttysnoop(Tool):
    name = "ttysnoop"
    help = "watch everything written to a terminal (/dev/pts/N or /dev/ttyX), live"
    description = (
        "Kernel mode hooks tty_write (fentry, else kprobe). Without them (tracepoint mode) the\n"
        "write/writev/pwrite64 syscalls are filtered in BPF down to the fds open on the terminal."
    )
    output = "events"
    streaming = True
    hooks = HookPlan(
        (
            Hook("fentry", ("fentry",), "fentry on tty_write"),
            Hook("kprobe", ("kprobe",), "kprobe on tty_write"),
            Hook("tracepoint", ("tracepoint",), "syscalls:sys_enter_write/writev/pwrite64, filtered by device"),
        ),
        hint="ttysnoop needs tracepoints at least (CONFIG_FTRACE_SYSCALLS) or kprobes.",
    )
    options = [
        Option("device", str, None, "the terminal: /dev/pts/N, N, or /dev/ttyX", pattern=r"[A-Za-z0-9/_.-]{1,64}",
               metavar="DEVICE"),
        Option("noclear", bool, False, "don't clear the screen first", ("-C", "--noclear")),
        Option("datasize", int, 256, "bytes per event (larger writes span several events)", ("-s", "--datasize"),
               min=1, max=MAX_DATA, metavar="SIZE"),
        Option("datacount", int, 16, "events per write at most (the rest is counted, not shown)",
               ("-c", "--datacount"), min=1, max=MAX_COUNT, metavar="COUNT"),
        Option("mode", str, None, "force a hook mode", ("--mode",), choices=("fentry", "kprobe", "tracepoint")),
        DURATION,
    ]
    examples = [
        "bpfscope ttysnoop /dev/pts/3      # replay what pts/3 shows",
        "bpfscope ttysnoop -C 3            # same, without clearing the screen first",
        "bpfscope ttysnoop --json /dev/tty1 # one JSON object per write (data escaped)",
        "bpfscope ttysnoop -s 1024 -c 64 3 # bigger events, more of them per write",
    ]

    @classmethod
    def text_columns(cls, ns: Any) -> list:
        return []  # text mode replays the terminal's bytes

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        if not opts.device:
            raise UsageError("device: name the terminal to watch (/dev/pts/N, N, or /dev/ttyX)")
        term = resolve_terminal(opts.device)
        hook = self.mode(opts, ctx.features)
        # the chosen mode, then (unless --mode forced it) the later ones this kernel supports:
        # tty_write may be missing or not traceable on a kernel that has fentry or kprobes
        modes = [hook.mode]
        if not opts.get("mode"):
            later = self.hooks.alternatives[[h.mode for h in self.hooks.alternatives].index(hook.mode) + 1 :]
            modes += [h.mode for h in later if all(ctx.features.has(n) for n in h.needs)]
        failed: list[str] = []
        for mode in modes:
            try:
                if mode == "tracepoint":
                    obj = self._open_tracepoints(term, opts)
                    how = "tracepoint mode: write/writev/pwrite64 syscalls on its device"
                else:
                    obj, how = self._open_kernel_mode(mode, term, opts)
                break
            except BpfscopeError as e:
                failed.append(f"{mode}: {str(e).splitlines()[0]}")
        else:
            raise BpfscopeError("ttysnoop could not attach (" + "; ".join(failed) + ")")
        with obj:
            ctx.mode = mode
            ctx.mark_attached()
            if failed:
                yield Notice("ttysnoop: " + "; ".join(failed) + f"; using {mode} mode", level="warning")
            yield Notice(f"Watching {term.path} ({how}). Ctrl-C to end.")
            yield from self._stream(obj, ctx, opts)

    def _open_kernel_mode(self, mode: str, term: Terminal, opts: Options) -> tuple[Any, str]:
        """fentry or kprobe on tty_write, its argument layout chosen from kernel BTF."""
        sig = tty_write_signature()
        prog = f"{mode}_tty_write"
        obj = open_object(object_path("ttysnoop"))
        try:
            self._configure(obj, term, opts)
            obj.set_global("tty_write_iter", sig != "file")
            obj.only_programs({prog})
            obj.load()
            if mode == "fentry":
                obj.program(prog).attach_trace()
            else:
                obj.program(prog).attach_kprobe("tty_write")
        except BpfscopeError as e:
            obj.close()
            raise BpfscopeError(f"{mode} on tty_write failed ({str(e).splitlines()[0]})") from None
        except BaseException:
            obj.close()
            raise
        args = "kiocb, iov_iter" if sig != "file" else "file, buf, count"
        return obj, f"{mode} mode: tty_write({args})"

    @staticmethod
    def _configure(obj: Any, term: Terminal, opts: Options) -> None:
        obj.set_global("target_rdev", term.rdev)
        obj.set_global("target_sb_dev", term.sb_dev)
        obj.set_global("data_size", opts.datasize)
        obj.set_global("data_count", opts.datacount)

    def _open_tracepoints(self, term: Terminal, opts: Options) -> Any:
        """The object, loaded and attached in tracepoint mode: the *_cast programs where the
        kernel has bpf_rdonly_cast (6.2+: the fd filter is plain loads for any fd table),
        else the plain ones (a probe read or three once a task's fd table has grown)."""
        variants = ["_cast", ""] if kernel_has_func("bpf_rdonly_cast") else [""]
        for i, suffix in enumerate(variants):
            obj = open_object(object_path("ttysnoop"))
            try:
                self._configure(obj, term, opts)
                obj.only_programs({p + suffix for p in TRACEPOINT_PROGRAMS})
                obj.load()
                for prog, tp in TRACEPOINT_PROGRAMS.items():
                    obj.program(prog + suffix).attach_tracepoint("syscalls", tp)
                return obj
            except BpfscopeError:
                obj.close()
                if i == len(variants) - 1:
                    raise
            except BaseException:
                obj.close()
                raise
        raise AssertionError("unreachable")

    def _stream(self, obj: Any, ctx: RunContext, opts: Options) -> Iterator[Result]:
        decode = _Decoder(obj.struct("event"), clear=not opts.noclear)
        warned = False
        rb = RingBuffer(obj, "events")
        try:
            while True:
                running = ctx.running()
                batch = rb.poll(ctx.poll_timeout_ms()) if running else rb.consume()
                for raw in batch:
                    event, cut = decode(raw)
                    yield event
                    if cut and not warned:
                        warned = True
                        r = event.record
                        yield Notice(
                            f"ttysnoop: a write of {r['write_bytes']} bytes by {r['comm']} ({r['pid']}) is longer "
                            f"than -s {opts.datasize} x -c {opts.datacount}: {r['not_shown']} bytes not shown "
                            "(raise -s or -c)", level="warning")
                if not running:
                    break
            ctx.lost_events = rb.lost
            extra = {"writes_cut": decode.writes_cut, "bytes_not_shown": decode.bytes_not_shown,
                     "unreadable_events": decode.unreadable}
            yield Summary(lost_events=rb.lost, extra=extra)
        finally:
            rb.close()
