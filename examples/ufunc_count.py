"""Example custom tool: count calls of a function in a user binary and histogram its first argument.

    bpfscope run examples/ufunc_count.py --binary ./myprog --func work -d 5
"""

from __future__ import annotations

from pathlib import Path

from bpfscope.api import (
    DURATION,
    PID,
    HistogramSet,
    Hook,
    HookPlan,
    Notice,
    Option,
    Summary,
    Tool,
    UsageError,
    compile_bpf,
    open_object,
    read_histograms,
    register,
)


@register
class UfuncCount(Tool):
    name = "ufunc-count-example"
    help = "count calls of a user-space function, histogram of its first argument (example)"
    output = "histogram"
    hooks = HookPlan((Hook("uprobe", ("uprobe",)),))
    options = [
        Option("binary", str, None, "the executable or library", ("--binary",),
               pattern=r"[A-Za-z0-9_./+-]{1,255}", metavar="PATH"),
        Option("func", str, None, "the function's symbol", ("--func",), pattern=r"[A-Za-z_][A-Za-z0-9_.@]{0,127}",
               metavar="NAME"),
        PID, DURATION,
    ]

    def run(self, opts, ctx):
        if not opts.binary or not opts.func:
            raise UsageError("--binary and --func are required")
        if not Path(opts.binary).exists():
            raise UsageError(f"{opts.binary} not found")
        with open_object(compile_bpf(Path(__file__).with_name("ufunc_count.bpf.c")), needs_tracefs=False) as obj:
            if opts.pid:
                obj.set_global("targ_pid", opts.pid)
            obj.load()
            obj.program("ufunc_entry").attach_uprobe(str(Path(opts.binary).resolve()), func=opts.func,
                                                     pid=opts.pid or -1)
            ctx.mark_attached()
            yield Notice(f"Counting calls of {opts.binary}:{opts.func} (uprobe mode)... Hit Ctrl-C to end.")
            while ctx.wait(3600):
                pass
            hists = read_histograms(obj.map("arg_hist"), obj.struct("hist"), "arg0", clear=False)
            yield HistogramSet(hists)
            yield Summary(extra={"calls": obj.get_global("calls")})
