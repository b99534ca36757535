"""Shared by profile, offcputime and stackcount (private: not a tool).

The BPF side (_stacks.bpf.h) counts events per `struct stack_key` (process, thread, user
stack id, kernel stack id, comm) in the `counts` map, with the stacks themselves in the
`stacks` stack-trace map. This module:

- declares the options the three tools share (-U, -K, --stack-storage-size, a positional
  duration) and configures the object before load;
- while the run goes on, captures the /proc/PID/maps of every process the moment the BPF side
  first counts it (ring buffer `new_pids`, once per process and exec image), and for a
  process in another mount namespace (a container) opens its ELF files too, which only its
  /proc/PID/root reaches: a process that exits mid-run still gets named user frames. The
  capturing takes at most CAPTURE_BUDGET of a CPU (a fork storm beyond it is counted in
  stats["captures_skipped"]; those processes get named frames only if still alive at the end);
- after the run (probes detached first, so symbolization costs the profile nothing) reads
  the counts and stacks, symbolizes them with bpfscope.symbols.Symbolizer and assembles a
  StackCounts: root first (comm frame, user frames outermost-first, kernel frames, leaf
  last), stacks whose frames have equal names merged, failed stack reads shown as BCC shows
  them ("[Missed User Stack]"), and the run's counters in StackCounts.stats and a Summary
  (unresolved_ratio: share of the frames looked up that stayed [unknown] / file+offset, the
  Symbolizer's counter; unresolved_ratio_weighted: the same weighted by counts, i.e. the
  share of the profile's frames a reader sees unnamed).

Stack-map collisions: the stack map is a hash table without chaining, so two stacks that hash
to one bucket cannot both be kept (BCC shows the second as a missed stack; with k distinct
stacks in n buckets about k*k/2n of them collide). Tools that count at the event (profile,
stackcount) pass recover_collisions: the BPF side then sends such a sample's stack whole
through the `collided` ring buffer and it is counted here as if the map had held it.
offcputime takes its stacks long before it counts, so its collisions stay counted as missed.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..bpf.object import BpfObject
from ..bpf.ringbuf import RingBuffer
from ..errors import UsageError
from ..options import Option, Options
from ..registry import RunContext
from ..results import Frame, Notice, Result, StackCounts, Summary
from ..toolkit import cstr

EFAULT, EEXIST = 14, 17
SYNTHETIC_BASE = 1 << 32  # ids of collided stacks received whole (stack map ids are below 2**31)
RECOVER_RING = 1 << 22  # bytes of the `collided` ring buffer: ~2000 stacks between two polls
RECOVER_MAX = 50_000  # collided samples sent whole per run; beyond, they count as missed stacks
POLL_MS = 250  # longest wait between two drains of the ring buffers
CAPTURE_BUDGET = 0.02  # share of one CPU that capturing new processes' maps may take (fork storms)
RESOLVED_KINDS = frozenset(("kernel", "user", "jit"))
MISSED_USER = "[Missed User Stack]"
MISSED_KERNEL = "[Missed Kernel Stack]"

USER_STACKS_ONLY = Option("user_stacks_only", bool, False, "show stacks from user space only (no kernel space stacks)",
                          ("-U", "--user-stacks-only"))
KERNEL_STACKS_ONLY = Option("kernel_stacks_only", bool, False,
                            "show stacks from kernel space only (no user space stacks)", ("-K", "--kernel-stacks-only"))
STACK_STORAGE_SIZE = Option("stack_storage_size", int, 16384,
                            "the number of unique stack traces that can be stored and displayed",
                            ("--stack-storage-size",), min=64, max=1 << 18, metavar="SIZE")
HASH_STORAGE_SIZE = Option("hash_storage_size", int, 40960, "the number of hash keys (stack x process) that can be stored",
                           ("--hash-storage-size",), min=64, max=1 << 20, metavar="SIZE")
DURATION_POS = Option("duration_pos", float, None, "duration of trace, in seconds (same as -d)", nargs="?",
                      min=0.01, max=86400, metavar="duration", cli_only=True)

# Kernel frames of the tracing machinery itself, seen at the leaf end of stacks taken from
# tracepoint / raw_tp / tp_btf programs: dropped so the stack ends where the event happened.
_TRACING_PREFIXES = (
    "bpf_prog_", "__bpf_prog_run", "bpf_trace_run", "__bpf_trace_", "__traceiter_", "bpf_trampoline_",
    "perf_trace_", "perf_tp_event", "trace_call_bpf", "bpf_get_stackid", "bpf_get_stack", "perf_callchain",
    "get_perf_callchain", "__perf_event_overflow", "perf_swevent", "trace_event_raw_event_", "kprobe_",
    "aggr_pre_handler", "uprobe_dispatcher", "handler_chain", "__uprobe_perf_func", "uprobe_perf_func",
)


# ---------------------------------------------------------------------------------- options
def check_stack_options(opts: Options) -> None:
    if opts.get("user_stacks_only") and opts.get("kernel_stacks_only"):
        raise UsageError("-U (user stacks only) and -K (kernel stacks only) exclude each other")


def duration_of(opts: Options, ctx: RunContext) -> float | None:
    """The run's duration from -d or the positional (BCC's `tool [duration]`); sets ctx's deadline."""
    pos, flag = opts.get("duration_pos"), opts.get("duration")
    if pos is not None and flag is not None and pos != flag:
        raise UsageError(f"two durations given ({pos:g} s positional, -d {flag:g}): give one")
    dur = flag if flag is not None else pos
    if dur is not None and ctx.deadline is None:
        ctx.deadline = ctx.started + dur
    return dur


def check_pids(pids: list[int] | None, what: str = "process") -> list[int]:
    """-p / -t values: each must exist now (a clear error instead of an empty profile)."""
    out = []
    for pid in pids or []:
        if not os.path.exists(f"/proc/{pid}"):
            raise UsageError(f"no {what} with ID {pid}")
        out.append(pid)
    return out


def fill_id_filter(obj: BpfObject, map_name: str, ids: list[int]) -> None:
    m = obj.map(map_name)
    for i in ids:
        m.update(i, 1)


def stack_context(opts: Options) -> str:
    if opts.get("user_stacks_only"):
        return "user"
    if opts.get("kernel_stacks_only"):
        return "kernel"
    return "user + kernel"


# ------------------------------------------------------------------------------ collection
@dataclass(slots=True)
class RawEntry:
    pid: int
    tid: int
    comm: str
    user_id: int
    kernel_id: int
    value: int


@dataclass
class Collected:
    """Everything read from the kernel after a run (plain data: the BPF object may be closed)."""

    entries: list[RawEntry]
    stacks: dict[int, list[int]]  # stack id -> addresses, leaf first
    counters: dict[str, int] = field(default_factory=dict)
    started_ns: int = 0
    duration_ns: int = 0


class StackCollector:
    """One run's stack collection on a BpfObject built with _stacks.bpf.h.

        coll = StackCollector(obj, opts)
        coll.configure()            # before load: -U/-K, map sizes
        obj.load(); ...attach...
        coll.start()                # after attach: new-process notes, collided stacks
        coll.wait(ctx)              # until -d / Ctrl-C
        data = coll.finish()        # detach, read maps (inside the `with open_object`)
        coll.close()
        sc = coll.stackcounts(data, countname=..., palette=...)  # symbolize: object closed
        yield from coll.results(sc, ctx)                         # + warnings, Summary
    """

    def __init__(self, obj: BpfObject, opts: Options, recover_collisions: bool = False,
                 trim_tracing: bool = False):
        """recover_collisions: for programs that count at the event (count_sample): stacks
        that collide in the stack map come whole through a ring buffer instead of being lost.
        trim_tracing: stacks are taken inside tracepoint / raw_tp / tp_btf / fentry programs:
        drop the leaf-side kernel frames of the tracing machinery."""
        from ..symbols import Symbolizer

        self.obj = obj
        self.opts = opts
        self.user = not opts.get("kernel_stacks_only")
        self.kernel = not opts.get("user_stacks_only")
        self.recover = recover_collisions
        self.trim_tracing = trim_tracing
        self.sym = Symbolizer(max_pids=1 << 16)
        self._rb: RingBuffer | None = None
        self._crb: RingBuffer | None = None
        # collided samples: (raw stack_key, user id, kernel id) -> count; stacks as raw bytes
        self._collided: dict[tuple[bytes, int, int], int] = {}
        self._synthetic: dict[bytes, int] = {}  # collided stack (raw) -> id above the map's ids
        self._rec: tuple[int, ...] = ()  # sizes and offsets of struct collided_stack (from BTF)
        self.captured = 0
        self.capture_skipped = 0
        self._capture_s = 0.0  # CPU seconds spent capturing
        self._p0 = time.perf_counter()
        try:
            self._mnt_ns = os.stat("/proc/self/ns/mnt").st_ino
        except OSError:
            self._mnt_ns = 0
        self._t0 = time.time_ns()
        self._m0 = time.monotonic_ns()

    # ---- before load -----------------------------------------------------
    def configure(self) -> None:
        obj, opts = self.obj, self.opts
        check_stack_options(opts)
        obj.set_global("user_stacks_only", bool(opts.get("user_stacks_only")))
        obj.set_global("kernel_stacks_only", bool(opts.get("kernel_stacks_only")))
        obj.set_global("note_new_pids", self.user)
        obj.map("stacks").resize(int(opts.get("stack_storage_size", 16384)))
        obj.map("counts").resize(int(opts.get("hash_storage_size", 40960)))
        obj.set_global("recover_collisions", self.recover)
        obj.set_global("recover_max", RECOVER_MAX)
        obj.map("collided").resize(RECOVER_RING if self.recover else 4096)

    # ---- during the run --------------------------------------------------
    def start(self) -> None:
        """After attach: start receiving new-process notes; resets the run's start time."""
        self._t0 = time.time_ns()
        self._m0 = time.monotonic_ns()
        self._p0 = time.perf_counter()
        if self.user:
            self._rb = RingBuffer(self.obj, "new_pids")
        if self.recover:
            self._crb = RingBuffer(self.obj, "collided")
            rec_t, key_t = self.obj.struct("collided_stack"), self.obj.struct("stack_key")
            self._rec = (ctypes.sizeof(key_t), key_t.user_stack_id.offset, key_t.kernel_stack_id.offset,
                         rec_t.user_len.offset, rec_t.kernel_len.offset, rec_t.user.offset, rec_t.kernel.offset)

    def wait(self, ctx: RunContext) -> None:
        """Until the run ends: capture the maps of each process as the BPF side first sees it,
        and take in collided stacks."""
        while ctx.running():
            # a note wakes the poll at once; otherwise a few wakeups a second are enough
            # (a signal interrupts the wait, so Ctrl-C is not delayed by it)
            if self._rb is None:
                ctx.wait(ctx.poll_timeout_ms(POLL_MS) / 1000)
            else:
                for raw in self._rb.poll(ctx.poll_timeout_ms(POLL_MS)):
                    self.capture(int.from_bytes(raw[:4], "little"))
            self._drain_collided()

    def _drain_collided(self) -> None:
        """Take in the collided samples (kept raw: decoded once per distinct key / stack)."""
        if self._crb is None:
            return
        ksize, uid_off, kid_off, ulen_off, klen_off, uoff, koff = self._rec
        collided, synthetic = self._collided, self._synthetic
        unpack = struct.unpack_from
        for raw in self._crb.consume():
            (ulen,), (klen,) = unpack("<i", raw, ulen_off), unpack("<i", raw, klen_off)
            key = raw[:ksize]
            (uid,), (kid,) = unpack("<i", key, uid_off), unpack("<i", key, kid_off)
            if ulen > 0:
                st = raw[uoff : uoff + ulen]
                uid = synthetic.setdefault(st, SYNTHETIC_BASE + len(synthetic))
            if klen > 0:
                st = raw[koff : koff + klen]
                kid = synthetic.setdefault(st, SYNTHETIC_BASE + len(synthetic))
            k = (key, uid, kid)
            collided[k] = collided.get(k, 0) + 1

    def capture(self, pid: int) -> None:
        """Read a process's maps now, while it is alive. A process in another mount namespace
        (a container) also gets its ELF files opened now: after it exits, /proc/PID/root no
        longer leads to them and the host may not have them under that path."""
        from ..symbols.procmaps import read_maps, same_file

        sym = self.sym
        sym.forget(pid)  # a new exec image: what was read for the old one no longer applies
        # the budget counts CPU time (thread_time), not wall time a loaded machine stretches
        if self._capture_s > CAPTURE_BUDGET * (time.perf_counter() - self._p0) + 0.2:
            self.capture_skipped += 1  # a fork storm: stay within the budget, frames may be [unknown]
            return
        t0 = time.thread_time()
        try:
            sym.user(pid, [])
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino != self._mnt_ns:
                for m in read_maps(pid):
                    if m.file_backed and (m.deleted or not same_file(m.path, m)):
                        try:
                            sym.elf_cache.get(pid, m)
                        except Exception:  # noqa: BLE001 - best effort: never end a run over one file
                            continue
            self.captured += 1
        except (ProcessLookupError, OSError):
            pass
        finally:
            self._capture_s += time.thread_time() - t0

    # ---- after the run ---------------------------------------------------
    def finish(self) -> Collected:
        """Detach, take the last notes, read counts, stacks and counters."""
        obj = self.obj
        if self.kernel and self.trim_tracing:
            # kallsyms now, while our programs are loaded: their frames get names (and are
            # trimmed); read after close they would be [unknown].
            _ = self.sym.kernel_symbols
        duration_ns = time.monotonic_ns() - self._m0
        detach(obj)
        if self._rb is not None:
            for raw in self._rb.consume():
                self.capture(int.from_bytes(raw[:4], "little"))
            self._rb.close()
            self._rb = None
        self._drain_collided()
        key_t = obj.struct("stack_key")
        ksize = ctypes.sizeof(key_t)
        entries: list[RawEntry] = []
        for kraw, vraw in obj.map("counts").items_raw():
            k = key_t.from_buffer_copy(kraw[:ksize])
            value = int.from_bytes(vraw[:8], "little")
            if value:
                entries.append(RawEntry(k.pid, k.tid, cstr(bytes(k.comm)), k.user_stack_id, k.kernel_stack_id, value))
        for (kraw, uid, kid), value in self._collided.items():
            k = key_t.from_buffer_copy(kraw[:ksize])
            entries.append(RawEntry(k.pid, k.tid, cstr(bytes(k.comm)), uid, kid, value))
        wanted = set()
        for e in entries:
            if self.user and e.user_id >= 0:
                wanted.add(e.user_id)
            if self.kernel and e.kernel_id >= 0:
                wanted.add(e.kernel_id)
        smap = obj.map("stacks")
        stacks: dict[int, list[int]] = {sid: array("Q", raw).tolist() for raw, sid in self._synthetic.items()}
        for sid in wanted - set(stacks):
            raw = smap.lookup(sid)
            if raw is None:
                continue
            addrs = array("Q", raw[: len(raw) // 8 * 8])
            try:
                n = addrs.index(0)  # the kernel zero-fills past the stack's last frame
            except ValueError:
                n = len(addrs)
            stacks[sid] = addrs[:n].tolist()
        counters = {
            name: obj.get_global(name)
            for name in ("stack_collisions", "stacks_recovered", "stack_errors", "lost_events", "pid_notes_lost")
        }
        return Collected(entries, stacks, counters, started_ns=self._t0, duration_ns=duration_ns)

    def stackcounts(
        self,
        data: Collected,
        *,
        countname: str = "samples",
        palette: str = "hot",
        per_pid: bool = True,
        per_thread: bool = False,
        divisor: int = 1,
        sample_period: int = 0,
    ) -> StackCounts:
        """Symbolize and assemble. per_pid: the comm frame carries the pid (tid with
        per_thread) so processes stay apart; else equal comms merge. divisor: counts are
        divided by it after merging (ns -> us)."""
        t0 = time.perf_counter()
        sym = self.sym
        interned: dict[tuple, Frame] = {}

        def intern(f: Frame) -> Frame:
            k = (f.name, f.kind, f.module)
            got = interned.get(k)
            if got is None:
                got = interned[k] = f
            return got

        kcache: dict[int, tuple[Frame, ...]] = {}
        ucache: dict[tuple[int, int], tuple[Frame, ...]] = {}
        comms: dict[tuple[str, int], Frame] = {}
        missed_user = Frame(MISSED_USER, kind="unknown")
        missed_kernel = Frame(MISSED_KERNEL, kind="unknown")
        counts: dict[tuple[Frame, ...], int] = {}
        missed = {"missed_user_stacks": 0, "missed_kernel_stacks": 0}
        frames_weighted = unresolved_weighted = 0  # frames x counts: the profile's [unknown] share

        for e in data.entries:
            who = (e.tid or e.pid) if per_thread else e.pid
            ck = (e.comm, who if per_pid else 0)
            comm = comms.get(ck)
            if comm is None:
                comm = comms[ck] = Frame(e.comm, kind="comm", address=ck[1])
            parts: list[Frame] = [comm]
            if self.user:
                if e.user_id >= 0:
                    key = (e.pid, e.user_id)
                    uf = ucache.get(key)
                    if uf is None:
                        addrs = data.stacks.get(e.user_id, [])
                        uf = ucache[key] = tuple(reversed([intern(f) for f in sym.user(e.pid, _call_sites(addrs))]))
                    parts.extend(uf)
                elif e.user_id != -EFAULT:
                    parts.append(missed_user)
                    missed["missed_user_stacks"] += e.value
            if self.kernel:
                if e.kernel_id >= 0:
                    kf = kcache.get(e.kernel_id)
                    if kf is None:
                        addrs = data.stacks.get(e.kernel_id, [])
                        frames = sym.kernel(_call_sites(addrs))
                        if self.trim_tracing:
                            frames = _trim_tracing(frames)
                        kf = kcache[e.kernel_id] = tuple(reversed([intern(f) for f in frames]))
                    parts.extend(kf)
                elif e.kernel_id != -EFAULT:
                    parts.append(missed_kernel)
                    missed["missed_kernel_stacks"] += e.value
            stack = tuple(parts)
            counts[stack] = counts.get(stack, 0) + e.value
            frames_weighted += (len(parts) - 1) * e.value
            unresolved_weighted += sum(1 for f in parts[1:] if f.kind not in RESOLVED_KINDS) * e.value
        if divisor > 1:
            counts = {k: v // divisor for k, v in counts.items() if v // divisor}
        stats: dict[str, Any] = {
            "stacks": len(counts),
            "total": sum(counts.values()),
            **data.counters,
            **missed,
            "processes_captured": self.captured,
            "captures_skipped": self.capture_skipped,
            "frames_resolved": sym.resolved,
            "frames_unresolved": sym.unresolved,
            "unresolved_ratio": round(sym.unresolved_ratio(), 4),
            "unresolved_ratio_weighted": round(unresolved_weighted / frames_weighted, 4) if frames_weighted else 0.0,
            "symbolize_seconds": round(time.perf_counter() - t0, 4),
            "time_nanos": data.started_ns,
            "duration_nanos": data.duration_ns,
        }
        return StackCounts(counts=counts, countname=countname, palette=palette, stats=stats,
                           sample_period=sample_period)

    def results(self, sc: StackCounts, ctx: RunContext) -> Iterator[Result]:
        """The StackCounts, a warning when stacks were lost, and the Summary."""
        st = sc.stats
        yield sc
        missed = st.get("missed_user_stacks", 0) + st.get("missed_kernel_stacks", 0)
        if missed:
            lost_to = st.get("stack_collisions", 0) - st.get("stacks_recovered", 0)
            yield Notice(f"WARNING: {missed} stack traces could not be stored ({max(0, lost_to)} hash collisions, "
                         f"{st.get('stack_errors', 0)} map full or busy) and show as [Missed ... Stack]: "
                         "consider increasing --stack-storage-size.", level="warning")
        lost = int(st.get("lost_events", 0))
        if lost:
            yield Notice(f"WARNING: {lost} events were not counted (count map full): consider increasing "
                         "--hash-storage-size.", level="warning")
        ctx.lost_events = lost
        yield Summary(lost_events=lost, extra={
            "stack_collisions": st.get("stack_collisions", 0),
            "stacks_recovered": st.get("stacks_recovered", 0),
            "stack_errors": st.get("stack_errors", 0),
            "unresolved_ratio": st.get("unresolved_ratio", 0.0),
            "unresolved_ratio_weighted": st.get("unresolved_ratio_weighted", 0.0),
        })

    def close(self) -> None:
        for rb in (self._rb, self._crb):
            if rb is not None:
                rb.close()
        self._rb = self._crb = None


def detach(obj: BpfObject) -> None:
    """Destroy every link now (concurrently); the object stays loaded so its maps can be read."""
    obj.detach()


def _call_sites(addrs: list[int]) -> list[int]:
    """Leaf first. Every entry but the leaf is a return address: the call is just before
    it (a call as a function's last instruction would otherwise name the next function)."""
    return addrs[:1] + [a - 1 for a in addrs[1:]]


def _trim_tracing(frames: list[Frame]) -> list[Frame]:
    """Drop leaf-side frames of the tracing machinery (BPF program, trampoline, tracepoint glue)."""
    i = 0
    while i < len(frames) and (frames[i].name.startswith(_TRACING_PREFIXES) or
                               (frames[i].kind == "unknown" and frames[i].module == "[bpf]")):
        i += 1
    return frames[i:] if i < len(frames) else frames
