"""offcputime: summarize off-CPU time by stack trace, as BCC's offcputime.

sched_switch (tp_btf, raw_tp fallback): when a thread goes off CPU its stacks and the time
are kept (task-local storage in tp_btf mode, a tid-keyed hash in raw_tp mode); when it comes
back, the time it was away is added to its (pid, tid, user stack, kernel stack, comm).
Counts are microseconds; flame graphs use the "cold" palette.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import UsageError
from ..options import DURATION, PIDS, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Notice, Result
from ..toolkit import object_path, open_object
from . import _stacks as S

PROGRAMS = {"tp_btf": "offcpu_btf", "raw_tp": "offcpu_raw"}


@register
class Offcputime(Tool):
    name = "offcputime"
    help = "summarize off-CPU time (blocked time) by stack trace (flame graphs in microseconds)"
    description = (
        "Time threads spend blocked (switched out by the scheduler) until they run again, by the\n"
        "user + kernel stacks they blocked in. Counts are microseconds."
    )
    output = "stacks"
    hooks = HookPlan(
        (
            Hook("tp_btf", ("tp_btf", "task_storage"), "tp_btf/sched_switch, start times in task storage"),
            Hook("raw_tp", ("raw_tp",), "raw_tp/sched_switch, start times in a tid hash"),
        ),
        hint="offcputime needs the sched_switch tracepoint as tp_btf or raw_tp",
    )
    options = [
        PIDS,
        Option("tid", int, None, "trace these threads only (repeat or comma-separate)", ("-t", "--tid"),
               multiple=True, min=1, max=2**22, metavar="TID"),
        Option("user_threads_only", bool, False, "user threads only (no kernel threads)", ("-u", "--user-threads-only")),
        Option("kernel_threads_only", bool, False, "kernel threads only (no user threads)",
               ("-k", "--kernel-threads-only")),
        S.USER_STACKS_ONLY,
        S.KERNEL_STACKS_ONLY,
        Option("min_block_time", int, 1, "the amount of time in microseconds over which we store traces",
               ("-m", "--min-block-time"), min=0, max=2**50, metavar="MIN_US"),
        Option("max_block_time", int, None, "the amount of time in microseconds under which we store traces "
               "(default: no limit)", ("-M", "--max-block-time"), min=1, max=2**50, metavar="MAX_US"),
        Option("state", int, None, "filter on this thread state bitmask (eg, 2 == TASK_UNINTERRUPTIBLE; "
               "0 == preempted while running), see include/linux/sched.h", ("--state",), min=0, max=2**31,
               metavar="STATE"),
        S.STACK_STORAGE_SIZE,
        S.HASH_STORAGE_SIZE,
        Option("mode", str, None, "force a hook mode instead of the best this kernel supports", ("--mode",),
               choices=tuple(PROGRAMS), metavar="{tp_btf,raw_tp}"),
        DURATION,
        S.DURATION_POS,
    ]
    examples = [
        "bpfscope offcputime 5                 # all threads, 5 seconds",
        "bpfscope offcputime -p 185 -d 10 --svg off.svg   # one process, off-CPU flame graph",
        "bpfscope offcputime -u -m 1000 -f 5   # user threads blocked >= 1 ms, folded",
        "bpfscope offcputime --state 2 5       # uninterruptible sleeps (D state) only",
    ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        S.check_stack_options(opts)
        if opts.user_threads_only and opts.kernel_threads_only:
            raise UsageError("-u (user threads only) and -k (kernel threads only) exclude each other")
        if opts.pid and opts.tid:
            raise UsageError("give -p (processes) or -t (threads), not both")
        min_us, max_us = opts.min_block_time, opts.max_block_time
        if max_us is not None and max_us < min_us:
            raise UsageError(f"-M {max_us} is below -m {min_us}")
        duration = S.duration_of(opts, ctx)
        pids = S.check_pids(opts.pid)
        tids = S.check_pids(opts.tid, "thread")
        hook = self.mode(opts, ctx.features)
        prog_name = PROGRAMS[hook.mode]

        with open_object(object_path("offcputime"), needs_tracefs=False) as obj:
            coll = S.StackCollector(obj, opts, trim_tracing=True)
            try:
                coll.configure()
                obj.only_programs({prog_name})
                if hook.mode != "tp_btf" and not ctx.features.has("task_storage"):
                    obj.map("start_store").set_autocreate(False)
                obj.set_global("filter_pids", bool(pids))
                obj.set_global("filter_tids", bool(tids))
                obj.set_global("user_threads_only", bool(opts.user_threads_only))
                obj.set_global("kernel_threads_only", bool(opts.kernel_threads_only))
                if opts.state is not None:
                    obj.set_global("filter_state", True)
                    obj.set_global("state", opts.state)
                obj.set_global("min_block_ns", min_us * 1000)
                if max_us is not None:
                    obj.set_global("max_block_ns", max_us * 1000)
                obj.load()
                S.fill_id_filter(obj, "pids", pids)
                S.fill_id_filter(obj, "tids", tids)
                prog = obj.program(prog_name)
                if hook.mode == "tp_btf":
                    prog.attach_trace()
                else:
                    prog.attach_raw_tracepoint("sched_switch")
                ctx.mode = hook.mode
                ctx.mark_attached()
                coll.start()
                yield Notice(self._banner(opts, pids, tids, hook.mode, duration))
                coll.wait(ctx)
                data = coll.finish()
            finally:
                coll.close()
        sc = coll.stackcounts(data, countname="us", palette="cold", per_thread=True, divisor=1000)
        yield from coll.results(sc, ctx)

    @staticmethod
    def _banner(opts: Options, pids: list[int], tids: list[int], mode: str, duration: float | None) -> str:
        if pids:
            who = "PID " + ",".join(map(str, pids))
        elif tids:
            who = "TID " + ",".join(map(str, tids))
        elif opts.user_threads_only:
            who = "user threads"
        elif opts.kernel_threads_only:
            who = "kernel threads"
        else:
            who = "all threads"
        end = f" for {duration:g} secs." if duration else "... Hit Ctrl-C to end."
        return f"Tracing off-CPU time (us) of {who} by {S.stack_context(opts)} stack ({mode} mode){end}"
