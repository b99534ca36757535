"""shellwatch: alert when an interactive shell starts (a terminal session, on the host or in a container).

BPF (sched_process_exec) keeps the execs of a shell binary whose task has a controlling tty,
and (sys_exit_setsid) the new sessions whose parent is sshd or login; it collects session
leadership, argv, the parent chain with each ancestor's tty, cgroup and namespaces. The rule
below, configurable in a small TOML file (--config), decides:

  alert when  the shell leads its session, or is a login shell (argv[0] "-bash", -l, --login),
              or its parent is a launcher (sshd, login, su, sudo, runc, containerd-shim, conmon, crun)
  unless      its parent is a shell on the same tty (a script or sub-shell of an interactive
              shell is not a new session)

A shell with no controlling tty (`sh -c ...` from a daemon or a pipeline) never alerts. One alert
per process: a shell that re-execs itself (`exec bash`) is not reported twice.
Alerts go to stdout (text, or JSON lines with --json), and optionally to a log file (--log),
an HTTP webhook (--webhook) and Prometheus counters (METRICS, see _sinks.py).

Config file (all keys optional; lists replace the defaults):

    shells = ["ash", "bash", "csh", "ksh", "sh", "tcsh", "zsh", "dash", "fish"]
    launchers = ["sshd", "sshd-session", "login", "su", "sudo", "runc", "runc:*",
                 "containerd-shim*", "conmon", "crun"]          # globs on the parent's comm
    session_parents = ["sshd", "sshd-session", "login"]        # setsid() under these: new session
    session_leader = true        # a shell leading its session starts one
    login_shell = true           # a login shell starts one
    new_sessions = true          # report setsid() under session_parents
    host_cgroups = []            # cgroup path globs never tagged as containers
"""

from __future__ import annotations

import ctypes
import fnmatch
import os
import pwd
import re
import socket
import time
import tomllib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..options import DURATION, Option, Options
from ..registry import Hook, HookPlan, RunContext, Tool, register
from ..results import Column, Notice, Result, Summary
from ..toolkit import cstr, monotonic_to_wall, object_path, open_object, stream_events
from ._sinks import METRICS, CounterSink, LogFileSink, WebhookSink, check_webhook_url

__all__ = ["METRICS", "Config", "evaluate", "Shellwatch", "load_config"]

KIND_EXEC, KIND_SETSID = 1, 2
COMM_LEN = 16
_NAME = re.compile(r"[A-Za-z0-9_.:+@\[\]-]{1,15}")
_GLOB = re.compile(r"[A-Za-z0-9_.:+@\[\]*?-]{1,64}")


# ------------------------------------------------------------------------------------ the rule

@dataclass(frozen=True)
class Config:
    shells: tuple[str, ...] = ("ash", "bash", "csh", "ksh", "sh", "tcsh", "zsh", "dash", "fish")
    launchers: tuple[str, ...] = ("sshd", "sshd-session", "login", "su", "sudo", "runc", "runc:*",
                                  "containerd-shim*", "conmon", "crun")
    session_parents: tuple[str, ...] = ("sshd", "sshd-session", "login")
    session_leader: bool = True
    login_shell: bool = True
    new_sessions: bool = True
    host_cgroups: tuple[str, ...] = field(default_factory=tuple)


_LISTS = {"shells": _NAME, "launchers": _GLOB, "session_parents": _NAME, "host_cgroups": None}
_BOOLS = ("session_leader", "login_shell", "new_sessions")


def load_config(path: str | None) -> Config:
    """Read and check a TOML config; unknown keys and bad values are one clear error."""
    if not path:
        return Config()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"config: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config: {path} is not valid TOML: {e}") from None
    unknown = sorted(set(raw) - set(_LISTS) - set(_BOOLS))
    if unknown:
        raise UsageError(f"config: unknown key(s) in {path}: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, pattern in _LISTS.items():
        if key not in raw:
            continue
        items = raw[key]
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise UsageError(f"config: {key} must be a list of strings")
        if len(items) > 256:
            raise UsageError(f"config: {key} has more than 256 entries")
        for item in items:
            if pattern is not None and not pattern.fullmatch(item):
                what = "a process name (comm, at most 15 characters)" if pattern is _NAME else "a name or glob"
                raise UsageError(f"config: {key}: {item!r} is not {what}")
            if pattern is None and (len(item) > 512 or "\0" in item or not item.startswith("/")):
                raise UsageError(f"config: host_cgroups: {item!r} is not a cgroup path glob (/...)")
        values[key] = tuple(items)
    for key in _BOOLS:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise UsageError(f"config: {key} must be true or false")
            values[key] = raw[key]
    return Config(**values)


def is_login_shell(argv: list[str]) -> bool:
    """argv[0] starting with '-' (login, sshd), or -l / --login among the leading options."""
    if argv and argv[0].startswith("-"):
        return True
    for arg in argv[1:]:
        if arg == "--login":
            return True
        if arg == "--" or not arg.startswith("-") or arg == "-":
            return False
        if arg.startswith("--"):
            continue
        if "l" in arg[1:]:
            return True
        if "c" in arg[1:]:
            return False  # the command string follows
    return False


def _match(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def evaluate(ev: dict[str, Any], cfg: Config) -> list[str] | None:
    """The reasons an event is an alert under cfg, or None. ev is the decoded record (see
    Shellwatch._decode): kind, comm, tty, session_leader, argv, parents[{comm, same_tty}...]."""
    parents = ev.get("parents") or []
    parent = parents[0] if parents else None
    if ev["kind"] == "session":
        if cfg.new_sessions and parent and parent["comm"] in cfg.session_parents:
            return [f"new session under {parent['comm']}"]
        return None
    if ev["comm"] not in cfg.shells or not ev.get("tty"):
        return None
    if parent and parent["comm"] in cfg.shells and parent.get("same_tty"):
        return None  # runs inside an interactive shell already on this terminal
    reasons = []
    if cfg.session_leader and ev.get("session_leader"):
        reasons.append("session leader")
    if cfg.login_shell and is_login_shell(ev.get("argv") or []):
        reasons.append("login shell")
    if parent and _match(parent["comm"], cfg.launchers):
        reasons.append(f"started by {parent['comm']}")
    return reasons or None


# ------------------------------------------------------------------------------------ containers

class ContainerInfo:
    """Is a task in a container: its cgroup differs from the host init's (bpfscope.k8s.cgroups'
    rule: container scopes and pod cgroups yes, system.slice/user.slice no), or its mount/pid
    namespace is not init's. Container id from the cgroup path."""

    def __init__(self, host_cgroups: tuple[str, ...] = ()):
        self.host_cgroups = host_cgroups
        # init's namespaces; where /proc/1/ns is out of reach (a sandbox), ours stand in for them
        self.init_ns = {ns: _ns_inode(1, ns) or _ns_inode("self", ns) for ns in ("mnt", "pid")}
        self._resolver: Any = None
        try:
            from ..k8s import cgroups as cg

            self._cg: Any = cg
            try:
                self.init_path = cg.path_of_pid(1)
            except cg.CgroupError:
                self.init_path = "/"
            try:
                self._resolver = cg.CgroupResolver()
            except cg.CgroupError:
                self._resolver = None
        except ImportError:  # pragma: no cover - module from another branch missing
            self._cg = None
            self.init_path = _proc_cgroup_v2(1) or "/"

    def cgroup_path(self, cgroup_id: int, pid: int) -> str | None:
        if self._resolver is not None:
            try:
                path = self._resolver.path_of(cgroup_id)
            except Exception:  # noqa: BLE001 - a cgroup tree walk error must not stop alerts
                path = None
            if path:
                return path
        return _proc_cgroup_v2(pid)

    def tag(self, cgroup_id: int, pid: int, mnt_ns: int, pid_ns: int) -> dict[str, Any]:
        path = self.cgroup_path(cgroup_id, pid)
        cid = pod = runtime = None
        in_cgroup = False
        if path is not None and not _match_path(path, self.host_cgroups):
            if self._cg is not None:
                info = self._cg.parse_cgroup_path(path)
                cid, pod, runtime = info.container_id, info.pod_uid, info.runtime
                in_cgroup = self._cg.is_container_cgroup(path, self.init_path)
            else:
                cid = _fallback_container_id(path)
                in_cgroup = path not in ("/", self.init_path) and not self.init_path.startswith(path.rstrip("/") + "/")
        ns = [n for n, v in (("mnt", mnt_ns), ("pid", pid_ns)) if self.init_ns.get(n) and v and v != self.init_ns[n]]
        return {
            "container": bool(in_cgroup or ns or cid),
            "container_id": cid,
            "pod_uid": pod,
            "runtime": runtime,
            "cgroup": path,
            "namespaces_differ": ns,
        }


def _match_path(path: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, g) for g in globs)


def _ns_inode(pid: int | str, ns: str) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return 0


def _proc_cgroup_v2(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _fallback_container_id(path: str) -> str | None:
    m = re.search(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/|$)", path)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------ the tool

def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


def _tty_name(raw: str) -> str:
    m = re.fullmatch(r"pts(\d+)", raw)
    return f"pts/{m.group(1)}" if m else raw


@register
class Shellwatch(Tool):
    name = "shellwatch"
    help = "alert when an interactive shell starts (login, ssh, su/sudo, container exec), host or container"
    description = __doc__.split("\n\n", 1)[1] if __doc__ else ""
    output = "events"
    streaming = True
    hooks = HookPlan((Hook("tracepoint", ("tracepoint",), "sched:sched_process_exec, syscalls:sys_exit_setsid"),))
    options = [
        Option("config", str, None, "TOML file with the rule (shells, launchers...)", ("--config",),
               pattern=r"[A-Za-z0-9_./+@-]{1,255}", metavar="FILE", cli_only=True),
        Option("log", str, None, "also append alerts as JSON lines to FILE", ("--log",),
               pattern=r"[A-Za-z0-9_./+@-]{1,255}", metavar="FILE", cli_only=True),
        Option("webhook", str, None, "also POST each alert as JSON to URL", ("--webhook",),
               pattern=r"https?://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]{1,2000}", max_len=2048, metavar="URL",
               cli_only=True),
        Option("webhook_timeout", float, 2.0, "seconds per webhook attempt", ("--webhook-timeout",),
               min=0.05, max=60, metavar="SECONDS"),
        Option("webhook_retries", int, 3, "webhook retries after a failed attempt", ("--webhook-retries",),
               min=0, max=10, metavar="N"),
        Option("webhook_backoff", float, 0.5, "seconds before the first retry (doubles each time)",
               ("--webhook-backoff",), min=0.01, max=60, metavar="SECONDS"),
        Option("webhook_queue", int, 1000, "alerts waiting for the webhook at most; more are dropped (counted)",
               ("--webhook-queue",), min=1, max=100000, metavar="N"),
        DURATION,
    ]
    examples = [
        "bpfscope shellwatch                       # alerts as a table",
        "bpfscope shellwatch --json                # one JSON object per alert",
        "bpfscope shellwatch --log /var/log/shells.jsonl --webhook http://alerts:9000/hook",
        "bpfscope shellwatch --config shellwatch.toml",
    ]
    columns = [
        Column("TIME", "timestamp", 8, fmt=lambda v, r: time.strftime("%H:%M:%S", time.localtime(v))),
        Column("PID", "pid", 7),
        Column("USER", "user", 10),
        Column("TTY", "tty", 8, fmt=lambda v, r: v or "-"),
        Column("ALERT", "alert", 7),
        Column("CONTAINER", "container", 12,
               fmt=lambda v, r: (r["container_id"] or "")[:12] or ("yes" if v else "-")),
        Column("COMMAND", "argv", 20, fmt=lambda v, r: " ".join(v) or r["comm"]),
        Column("PARENTS", "parent_chain"),
    ]

    def run(self, opts: Options, ctx: RunContext) -> Iterator[Result]:
        cfg = load_config(opts.config)
        if opts.webhook:
            check_webhook_url(opts.webhook)
        hook = self.mode(opts, ctx.features)
        sinks: list[Any] = [CounterSink(METRICS)]
        if opts.log:
            sinks.append(LogFileSink(opts.log, METRICS))
        if opts.webhook:
            sinks.append(WebhookSink(opts.webhook, timeout=opts.webhook_timeout, retries=opts.webhook_retries,
                                     backoff=opts.webhook_backoff, queue_size=opts.webhook_queue, metrics=METRICS))
        try:
            yield from self._trace(opts, ctx, cfg, hook, sinks)
        finally:
            for sink in sinks:
                sink.close()

    def _trace(self, opts: Options, ctx: RunContext, cfg: Config, hook: Hook, sinks: list[Any]) -> Iterator[Result]:
        containers = ContainerInfo(cfg.host_cgroups)
        host = socket.gethostname()
        seen: OrderedDict[tuple[int, int], None] = OrderedDict()
        counts = {"alerts": 0, "duplicates": 0}
        with open_object(object_path("shellwatch")) as obj:
            obj.only_programs({"tp_exec", "tp_setsid"} if cfg.new_sessions else {"tp_exec"})
            obj.load()
            key_t = obj.struct("comm_key")
            for map_name, names in (("shells", cfg.shells), ("session_parents", cfg.session_parents)):
                m = obj.map(map_name)
                for name in names:
                    key = key_t()
                    key.comm = name.encode()[: COMM_LEN - 1]
                    m.update(bytes(key), 1)
            obj.program("tp_exec").attach_tracepoint("sched", "sched_process_exec")
            if cfg.new_sessions:
                obj.program("tp_setsid").attach_tracepoint("syscalls", "sys_exit_setsid")
            ctx.mode = hook.mode
            ctx.mark_attached()
            yield Notice("Watching for interactive shells and login sessions (tracepoint mode: "
                         "sched_process_exec, sys_exit_setsid)... Hit Ctrl-C to end.")
            event_t = obj.struct("event")
            size = ctypes.sizeof(event_t)
            args_off, args_size = event_t.args.offset, event_t.args.size

            def decode(raw: bytes) -> dict[str, Any] | None:
                e = event_t.from_buffer_copy(raw[:size].ljust(size, b"\0"))
                args = raw[args_off : args_off + min(e.args_len, args_size)]
                rec = _decode(e, args)
                reasons = evaluate(rec, cfg)
                if not reasons:
                    return None
                key = (rec["pid"], e.start_ns)
                if rec["kind"] == "shell":
                    if key in seen:
                        counts["duplicates"] += 1
                        return None
                    seen[key] = None
                    if len(seen) > 65536:
                        seen.popitem(last=False)
                alert = _alert(rec, reasons, e, containers, host)
                counts["alerts"] += 1
                for sink in sinks:
                    sink.emit(alert)
                return alert

            summary = Summary()
            for item in stream_events(obj, ctx, decode):
                if isinstance(item, Summary):
                    summary = item
                    continue
                yield item
        for sink in sinks:  # flush the webhook queue before the final counts
            sink.close()
        if summary.lost_events:
            METRICS.inc("bpfscope_shellwatch_lost_events_total", value=summary.lost_events)
        extra: dict[str, Any] = {"alerts": counts["alerts"], "duplicates_suppressed": counts["duplicates"]}
        for sink in sinks:
            extra.update(sink.stats())
        yield Summary(lost_events=summary.lost_events, extra=extra)


def _decode(e: Any, args: bytes) -> dict[str, Any]:
    """Raw BPF event (and its NUL-separated argv bytes) -> the fields evaluate() looks at."""
    argv = [a.decode("utf-8", "backslashreplace") for a in args.split(b"\0")]
    if argv and argv[-1] == "":
        argv.pop()
    parents = []
    for a in e.ancestors[: min(e.n_ancestors, len(e.ancestors))]:
        parents.append({
            "pid": a.pid,
            "comm": cstr(a.comm),
            "uid": a.uid,
            "has_tty": bool(a.has_tty),
            "same_tty": bool(a.same_tty),
            "session_leader": bool(a.session_leader),
        })
    tty_raw = cstr(e.tty_name)
    return {
        "kind": "shell" if e.kind == KIND_EXEC else "session",
        "pid": e.pid,
        "comm": cstr(e.comm),
        "argv": argv,
        "tty": _tty_name(tty_raw) if e.tty_dev else None,
        "session_leader": bool(e.session_leader),
        "parents": parents,
    }


def _alert(rec: dict[str, Any], reasons: list[str], e: Any, containers: ContainerInfo, host: str) -> dict[str, Any]:
    wall = monotonic_to_wall(e.ts_ns)
    tag = containers.tag(e.cgroup_id, e.pid, e.mnt_ns, e.pid_ns)
    loginuid = None if e.loginuid == 0xFFFFFFFF else e.loginuid
    parents = rec["parents"]
    alert = {
        "alert": rec["kind"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1e6):06d}"
        + time.strftime("%z", time.localtime(wall)),
        "timestamp": round(wall, 6),
        "host": host,
        "pid": e.pid,
        "ppid": e.ppid,
        "sid": e.sid,
        "pgid": e.pgid,
        "ns_pid": e.ns_pid,
        "uid": e.uid,
        "user": _user(e.uid),
        "gid": e.gid,
        "loginuid": loginuid,
        "login_user": _user(loginuid) if loginuid is not None else None,
        "comm": rec["comm"],
        "filename": cstr(e.filename) or None,
        "argv": rec["argv"],
        "tty": rec["tty"],
        "tty_dev": f"{e.tty_dev >> 20}:{e.tty_dev & 0xFFFFF}" if e.tty_dev else None,
        "session_leader": rec["session_leader"],
        "login_shell": is_login_shell(rec["argv"]) if rec["kind"] == "shell" else False,
        "reasons": reasons,
        **tag,
        "cgroup_id": e.cgroup_id,
        "parents": [{"pid": p["pid"], "comm": p["comm"], "uid": p["uid"], "same_tty": p["same_tty"]} for p in parents],
        "parent_chain": " < ".join(f"{p['comm']}({p['pid']})" for p in parents),
    }
    return alert

