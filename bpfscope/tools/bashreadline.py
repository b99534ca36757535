"""bashreadline: the commands typed into bash, system wide (uretprobe on readline()).

Debian's /bin/bash carries readline itself (nm -D /bin/bash | grep -w readline); where bash
links libreadline instead, the library is found through bash's DT_NEEDED. -s names another
binary or library that defines readline (libreadline.so.8, a REPL linked statically...).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from typing import Any

from ..errors import BpfscopeError, UsageError
from ..options import DURATION, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Column, Notice, Result
from ..toolkit import cstr, monotonic_to_wall, object_path, open_object, stream_events

DEFAULT_BINARY = "/bin/bash"
SYMBOL = "readline"
LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
            "/usr/local/lib")


def _elf_info(path: str) -> tuple[bool, list[str]]:
    """(defines a `readline` function, DT_NEEDED libraries) of an ELF file."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            defined = False
            needed: list[str] = []
            for sec in elf.iter_sections():
                if isinstance(sec, SymbolTableSection) and not defined:
                    for sym in sec.get_symbol_by_name(SYMBOL) or []:
                        if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                            defined = True
                elif isinstance(sec, DynamicSection):
                    needed += [t.needed for t in sec.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
            return defined, needed
    except (ELFError, ValueError) as e:
        raise UsageError(f"{path} is not an ELF file ({e})") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def find_readline(binary: str | None) -> str:
    """The file to put the uretprobe in: `binary` (or /bin/bash) if it defines readline,
    else the libreadline it links."""
    path = binary or DEFAULT_BINARY
    if not os.path.isabs(path):
        raise UsageError(f"shared: give an absolute path, not {path!r}")
    if not os.path.isfile(path):
        raise UsageError(f"shared: no such file {path}")
    real = os.path.realpath(path)
    defined, needed = _elf_info(real)
    if defined:
        return real
    for lib in needed:
        if lib.startswith("libreadline.so"):
            for d in LIB_DIRS:
                cand = os.path.join(d, lib)
                if os.path.isfile(cand) and _elf_info(os.path.realpath(cand))[0]:
                    return os.path.realpath(cand)
    raise UsageError(f"{path} has no {SYMBOL}() function and links no libreadline; "
                     "name the binary or library that has it with -s PATH")


@register
class Bashreadline(Tool):
    name = "bashreadline"
    help = "print the commands typed into bash (readline() return values): TIME PID COMMAND"
    output = "events"
    streaming = True
    hooks = HookPlan((Hook("uretprobe", ("uprobe",), "uretprobe on readline()"),),
                     hint="bashreadline needs uprobes (CONFIG_UPROBE_EVENTS).")
    options = [
        Option("shared", str, None, "binary or library with readline() (default: /bin/bash, or the "
               "libreadline it links)", ("-s", "--shared"), pattern=r"/[A-Za-z0-9_./+@-]{1,254}", metavar="PATH",
               cli_only=True),
        Option("pid", int, None, "this process only", ("-p", "--pid"), min=1, max=2**22, metavar="PID"),
        DURATION,
    ]
    examples = [
        "bpfscope bashreadline                                   # commands typed into any bash",
        "bpfscope bashreadline --json                            # one JSON object per command",
        "bpfscope bashreadline -s /usr/lib/x86_64-linux-gnu/libreadline.so.8  # every readline user",
    ]
    columns = [
        Column("TIME", "time", 8),
        Column("PID", "pid", 7),
        Column("COMMAND", "command"),
    ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        target = find_readline(opts.shared)
        hook = self.mode(opts, ctx.features)
        with open_object(object_path("bashreadline"), needs_tracefs=False) as obj:
            if opts.pid:
                obj.set_global("targ_pid", opts.pid)
            obj.load()
            try:
                obj.program("uretprobe_readline").attach_uprobe(target, func=SYMBOL, retprobe=True)
            except BpfscopeError as e:
                raise BpfscopeError(f"cannot attach a uretprobe to {SYMBOL}() in {target}: "
                                    f"{str(e).splitlines()[0]}") from None
            ctx.mode = hook.mode
            ctx.mark_attached()
            yield Notice(f"Tracing {SYMBOL}() in {target} (uretprobe mode)... Hit Ctrl-C to end.")
            event_t = obj.struct("event")
            size = ctypes.sizeof(event_t)

            def decode(raw: bytes) -> dict[str, Any]:
                e = event_t.from_buffer_copy(raw[:size].ljust(size, b"\0"))
                line = e.line[: e.len].decode("utf-8", "backslashreplace")
                wall = monotonic_to_wall(e.ts_ns)
                return {
                    "time": time.strftime("%H:%M:%S", time.localtime(wall)),
                    "timestamp": round(wall, 6),
                    "pid": e.pid,
                    "uid": e.uid,
                    "comm": cstr(e.comm),
                    "command": line,
                    "truncated": bool(e.truncated),
                }

            yield from stream_events(obj, ctx, decode)
