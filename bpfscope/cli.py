"""`bpfscope <tool|command> [options]`: the CLI, generated from the tool registry.

Only the named tool's module is imported, so start-up stays in the tens of milliseconds.
Errors the user can act on print one line and exit non-zero; tracebacks need -v.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from typing import Any

from . import registry
from .errors import BpfscopeError, UsageError

COMMANDS = {
    "doctor": ("bpfscope.commands.doctor", "check what this kernel supports and how each tool would run"),
    "flamegraph": ("bpfscope.commands.flamegraph", "draw an SVG flame graph from folded stacks (--diff too)"),
    "serve": ("bpfscope.agent.serve", "run the node agent: REST API, event streams, /metrics, web page"),
    "run": ("bpfscope.commands.run", "run a user-written tool from a Python file"),
    "cluster": ("bpfscope.commands.cluster", "run a tool on every node's agent and merge the results"),
}

STACK_OUTPUT_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("-f", "--folded"), {"action": "store_true", "help": "output folded stacks (FlameGraph / speedscope input)"}),
    (("-a", "--annotations"), {"action": "store_true", "help": "folded: add _[k] to kernel frames"}),
    (("--svg",), {"metavar": "FILE", "help": "write an interactive SVG flame graph to FILE"}),
    (("--pprof",), {"metavar": "FILE", "help": "write a gzipped pprof profile to FILE"}),
    (("--speedscope",), {"metavar": "FILE", "help": "write a speedscope JSON profile to FILE"}),
    (("--title",), {"help": "flame graph title"}),
    (("--width",), {"type": int, "default": 1200, "help": "flame graph width in pixels"}),
    (("--minwidth",), {"type": float, "default": 0.1, "help": "merge frames narrower than this (pixels)"}),
    (("--inverted",), {"action": "store_true", "help": "icicle graph (root at the top)"}),
    (("--countname",), {"help": "count unit in tooltips (samples, us...)"}),
]


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfscope",
        description="Low-overhead Linux tracing with CO-RE eBPF.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_tool_listing(),
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show libbpf's log and tracebacks")
    p.add_argument("--version", action="version", version=f"bpfscope {_version()}")
    p.add_argument("tool", metavar="TOOL|COMMAND", help="a tool or command below")
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bpfscope")
    except PackageNotFoundError:
        return "dev"


def _tool_listing() -> str:
    lines = ["tools:"]
    for name, cls in registry.all_tools().items():
        lines.append(f"  {name:<14} {cls.help}")
    lines.append("\ncommands:")
    for name, (_, help_) in COMMANDS.items():
        lines.append(f"  {name:<14} {help_}")
    lines.append("\n`bpfscope TOOL --help` shows a tool's options.")
    return "\n".join(lines)


def tool_parser(cls: type[registry.Tool]) -> argparse.ArgumentParser:
    examples = "\n".join(f"  {e}" for e in cls.examples)
    p = argparse.ArgumentParser(
        prog=f"bpfscope {cls.name}",
        description=cls.help + ("\n\n" + cls.description if cls.description else ""),
        epilog=("examples:\n" + examples) if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for opt in cls.options:
        opt.add_to(p)
    names = {o.name for o in cls.options}
    if "json" not in names:
        p.add_argument("--json", action="store_true", help="one JSON object per line")
    if cls.output == "stacks":
        for flags, kw in STACK_OUTPUT_OPTIONS:
            p.add_argument(*flags, **kw)
    p.add_argument("-v", "--verbose", action="store_true", help="show libbpf's log and tracebacks")
    return p


def parse_tool_args(cls: type[registry.Tool], argv: list[str]) -> tuple[Any, argparse.Namespace]:
    """Parse argv for a tool and validate through its option model."""
    parser = tool_parser(cls)
    ns = parser.parse_args(argv)
    raw = {o.name: getattr(ns, o.name, None) for o in cls.options}
    raw = {k: v for k, v in raw.items() if v is not None and v != []}
    for o in cls.options:  # argparse already turned bools into real bools
        if o.type is bool and raw.get(o.name) is False:
            raw.pop(o.name)
    opts = cls.validate(raw, strict=False)
    return opts, ns


def _setup_logging(verbose: bool) -> None:
    """-v: debug logging, libbpf's own lines included. Without it nothing is imported (start-up
    time); warnings of modules that log still reach stderr through logging's last resort."""
    if not verbose:
        return
    import logging

    from .bpf import libbpf

    logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s", stream=sys.stderr)
    log = logging.getLogger("bpfscope.libbpf")
    levels = {libbpf.LIBBPF_WARN: logging.WARNING, libbpf.LIBBPF_INFO: logging.INFO}
    libbpf.set_log_sink(lambda level, line: log.log(levels.get(level, logging.DEBUG), "%s", line))


class _StopOnSignal:
    """First SIGINT/SIGTERM asks the run to stop cleanly; a second one interrupts."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        # Not self.stop.set() here: it takes the Event's lock, which the interrupted main thread
        # may hold (inside Event.wait, i.e. RunContext.wait): the handler would then wait for
        # itself forever (seen under load: ~1% of SIGINTs to a tight wait loop). Another thread
        # can wait for that lock.
        threading.Thread(target=self.stop.set, daemon=True).start()
        if self.count > 1:
            raise KeyboardInterrupt

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def _countdown(ctx: registry.RunContext, done: threading.Event) -> None:
    while not done.wait(0.5):
        rem = ctx.remaining()
        if rem is None:
            return
        sys.stderr.write(f"\r{rem:5.0f}s left (Ctrl-C to stop early) ")
        sys.stderr.flush()
    sys.stderr.write("\r" + " " * 40 + "\r")


def run_tool(cls: type[registry.Tool], argv: list[str]) -> int:
    from .output import make_renderer

    opts, ns = parse_tool_args(cls, argv)
    _setup_logging(ns.verbose)
    tool = cls()
    ctx = registry.RunContext(duration=opts.get("duration"))
    _StopOnSignal(ctx.stop).install()
    renderer = make_renderer(cls, ns, sys.stdout, sys.stderr)
    done = threading.Event()
    if ctx.deadline and cls.output != "events" and sys.stderr.isatty():
        threading.Thread(target=_countdown, args=(ctx, done), daemon=True).start()
    try:
        for item in tool.run(opts, ctx):
            renderer.render(item)
    finally:
        done.set()
        renderer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        return _main(argv)
    except BpfscopeError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"bpfscope: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:  # the reader went away (| head): exit quietly
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0
    except Exception as e:  # noqa: BLE001 - last line of defence: no traceback without -v
        if verbose:
            raise
        sys.stderr.write(f"bpfscope: internal error: {type(e).__name__}: {e} (run with -v for details)\n")
        return 70


def _main(argv: list[str]) -> int:
    # global flags before the tool name
    while argv and argv[0] in ("-v", "--verbose"):
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"bpfscope {_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name in COMMANDS:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    if name.startswith("-"):
        raise UsageError(f"unknown option {name}; usage: bpfscope [-v] TOOL [options]")
    cls = registry.get(name)
    return run_tool(cls, rest)


if __name__ == "__main__":
    sys.exit(main())
