"""Cgroup filters and pod labels for every tool: --cgroup, --namespace, --pod, --selector, --kubernetes.

How a tool uses this (no frontend changes: the flags come from the Option list):

    from ..k8s.filters import CGROUP_FILTER_OPTIONS, KUBERNETES, resolve_cgroup_filter

    class MyTool(Tool):
        options = [..., *CGROUP_FILTER_OPTIONS, KUBERNETES]     # instead of options.CGROUP

        def run(self, opts, ctx):
            flt = resolve_cgroup_filter(opts)                   # None: no filter given
            with open_object(object_path("mytool")) as obj:
                if flt:
                    flt.before_load(obj)                        # const volatile globals
                obj.load()
                if flt:
                    flt.after_load(obj)                         # fills the cgroup_filter map
                ...

and on the BPF side `#include "cgroup_filter.bpf.h"`, then `if (!cgroup_allowed()) return 0;` in
task context (tracepoints, kprobes, uprobes...) or `cgroup_allowed_skb(skb)` in cgroup_skb / tc.
A filter selects cgroups and everything below them: a pod's cgroup covers all its containers,
also ones started later. Tools that count per cgroup in user space (cgnet) use
`flt.matches_path(path)` instead.

--namespace / --pod / --selector ask the Kubernetes API (PodIndex) which pods of this node match
(NODE_NAME names the node; in-cluster service account or $KUBECONFIG) and filter on their pod
cgroups. --kubernetes (or running inside a cluster: KUBERNETES_SERVICE_HOST set) adds pod
metadata to per-cgroup output; without it labels fall back to the cgroup path and container id.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BpfscopeError, UsageError
from ..options import CGROUP, Option, Options
from .cgroups import CgroupError, CgroupResolver, parse_cgroup_path, resolve_cgroup_arg

if TYPE_CHECKING:
    from ..bpf.object import BpfObject
    from .pods import PodIndex

NAMESPACE = Option("namespace", str, None, "only pods in this Kubernetes namespace (cgroup filter; needs API access)",
                   ("--namespace",), pattern=r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", metavar="NAMESPACE")
POD = Option("pod", str, None, "only this pod, by name (cgroup filter; needs API access)", ("--pod",),
             pattern=r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", metavar="POD")
SELECTOR = Option("selector", str, None, "only pods matching this label selector, e.g. 'app=web,tier!=db'",
                  ("--selector",), pattern=r"[A-Za-z0-9_.\-/=!,() ]{1,512}", max_len=512, metavar="SELECTOR")
KUBERNETES = Option("kubernetes", bool, False,
                    "label cgroups with namespace/pod/container from the Kubernetes API (automatic in a cluster)",
                    ("--kubernetes",))

# Replace options.CGROUP with these in a tool's option list.
CGROUP_FILTER_OPTIONS = [CGROUP, NAMESPACE, POD, SELECTOR]

MAX_LEVEL = 32  # cgroup_filter.bpf.h checks ancestor levels 0..31
MAX_TARGETS = 1024  # size of the cgroup_filter map


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def kubernetes_wanted(opts: Options | dict[str, Any] | None = None) -> bool:
    """--kubernetes given, a pod filter given, or running inside a cluster."""
    get = (opts.get if opts is not None else (lambda _k, _d=None: None))
    return bool(get("kubernetes") or get("namespace") or get("pod") or get("selector") or in_cluster())


def open_pod_index(api_client: Any = None, node_name: str | None = None, timeout: float = 10.0,
                   resolver: CgroupResolver | None = None) -> PodIndex:
    """A started PodIndex that has loaded the node's pods (or a one-line error)."""
    from .pods import K8sError, PodIndex

    index = PodIndex(node_name, api_client=api_client, resolver=resolver)
    index.start()
    if not index.wait_synced(timeout):
        index.stop()
        err = index.last_error
        raise K8sError(f"could not list the pods of node {index.node_name} within {timeout:g}s"
                       + (f": {str(err).splitlines()[0] if str(err) else type(err).__name__}" if err else ""))
    return index


# --------------------------------------------------------------------------------------------------
# filters


@dataclass(frozen=True)
class CgroupTarget:
    id: int
    path: str  # relative to the cgroup2 mount, '/a/b'
    level: int  # depth in the hierarchy (root = 0), what bpf_get_current_ancestor_cgroup_id() takes


@dataclass
class CgroupFilter:
    """The cgroups a run is restricted to (each with everything below it)."""

    targets: list[CgroupTarget]
    description: str = ""
    _paths: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self._paths = tuple(t.path.rstrip("/") for t in self.targets)

    @property
    def ids(self) -> set[int]:
        return {t.id for t in self.targets}

    @property
    def level_mask(self) -> int:
        return sum({1 << t.level for t in self.targets})

    def matches_path(self, path: str | None) -> bool:
        """Whether a cgroup path is one of the targets or below one."""
        if path is None:
            return False
        for p in self._paths:
            if not p or path == p or path.startswith(p + "/"):
                return True
        return False

    # ---- BPF side (cgroup_filter.bpf.h) ----------------------------------
    def before_load(self, obj: BpfObject) -> None:
        obj.set_global("filter_cgroup", True)
        obj.set_global("filter_cgroup_levels", self.level_mask)

    def after_load(self, obj: BpfObject) -> None:
        m = obj.map("cgroup_filter")
        for t in self.targets:
            m.update(t.id, 1)


def _level(cgpath: str, mount_root: str) -> int:
    parts = [p for p in (mount_root.rstrip("/") + "/" + cgpath.strip("/")).split("/") if p]
    return len(parts)


def check_filter_options(opts: Options | dict[str, Any]) -> None:
    """The filter options' own errors, before anything is asked of the API or the kernel."""
    get = opts.get
    if get("cgroup") and (get("namespace") or get("pod") or get("selector")):
        raise UsageError("--cgroup cannot be combined with --namespace/--pod/--selector")
    if get("selector"):
        from .pods import parse_selector

        parse_selector(get("selector"))  # SelectorError, a UsageError


def resolve_cgroup_filter(
    opts: Options | dict[str, Any],
    *,
    resolver: CgroupResolver | None = None,
    pod_index: PodIndex | None = None,
) -> CgroupFilter | None:
    """--cgroup / --namespace / --pod / --selector -> CgroupFilter (None when none was given).

    Errors are one line: unknown cgroup, bad selector, no API access, no matching pod.
    """
    check_filter_options(opts)
    get = opts.get
    cgroup, namespace, pod, selector = get("cgroup"), get("namespace"), get("pod"), get("selector")
    k8s = namespace or pod or selector
    if not cgroup and not k8s:
        return None
    resolver = resolver or CgroupResolver()
    mount_root = getattr(resolver, "_mount_root", "/") or "/"
    paths: list[str]
    if cgroup:
        try:
            paths = [resolve_cgroup_arg(cgroup, resolver.mount)]
        except CgroupError as e:
            raise UsageError(str(e)) from None
        what = f"cgroup {paths[0]}"
    else:
        own = pod_index is None
        index = pod_index or open_pod_index(resolver=resolver)
        try:
            paths = index.selector_to_cgroups(namespace, pod, selector)
        finally:
            if own:
                index.stop()
        what = ", ".join(f"{k}={v}" for k, v in (("namespace", namespace), ("pod", pod), ("selector", selector)) if v)
        if not paths:
            raise BpfscopeError(f"no running pod on node {index.node_name} matches {what}")
        what = f"pods matching {what} ({len(paths)} cgroup{'s' if len(paths) != 1 else ''})"
    targets = []
    for p in paths:
        cgid = resolver.id_of(p)
        if cgid is None:
            continue  # removed meanwhile
        targets.append(CgroupTarget(cgid, p, _level(p, mount_root)))
    if not targets:
        raise BpfscopeError(f"the cgroups of {what} are gone")
    if len(targets) > MAX_TARGETS:
        raise UsageError(f"{what}: {len(targets)} cgroups, more than the {MAX_TARGETS} a filter holds")
    if max(t.level for t in targets) >= MAX_LEVEL:
        raise UsageError(f"{what}: cgroups nested deeper than {MAX_LEVEL} levels")
    return CgroupFilter(targets, what)


# --------------------------------------------------------------------------------------------------
# labels


class CgroupLabeler:
    """cgroup id -> Prometheus / JSON labels {cgroup, namespace, pod, container}.

    Paths are remembered per id, so a removed cgroup keeps its name until forget(id). An id not
    seen before is opened by handle (open_by_handle_at with the cgroup id as kernfs file handle,
    then the fd's path): one syscall pair per new cgroup instead of a walk of the whole tree,
    which takes ~150 ms with 5,000 cgroups. The resolver's walk is the fallback where handles
    are refused. With a PodIndex, namespace/pod/container come from the API; without one
    namespace and pod are "" and container is the container id parsed from the path (both cgroup
    drivers, every QoS class).
    """

    def __init__(self, resolver: CgroupResolver | None = None, pods: PodIndex | None = None):
        self.resolver = resolver or CgroupResolver()
        self.pods = pods
        self._paths: dict[int, str] = {}
        self._info: dict[int, Any] = {}  # cgroup id -> CgroupInfo parsed from its path
        self._lock = threading.Lock()
        self._handles: _HandleOpener | None | bool = None  # False: not usable here

    def _by_handle(self, cgid: int) -> tuple[bool, str | None]:
        """(answered, path): answered=False when handles cannot be used here."""
        if self._handles is None:
            try:
                self._handles = _HandleOpener(self.resolver.mount)
            except OSError:
                self._handles = False
        if self._handles is False:
            return False, None
        assert isinstance(self._handles, _HandleOpener)
        return self._handles.path(cgid)

    def alive(self, cgid: int) -> bool | None:
        """Whether the cgroup still exists (None: cannot tell without walking the tree)."""
        answered, path = self._by_handle(cgid)
        if not answered:
            return None
        if path is not None and cgid not in self._paths:
            with self._lock:
                self._paths[cgid] = path
        return path is not None

    def remember(self, cgid: int, path: str) -> None:
        """A path learnt elsewhere (the rmdir tracepoint names the cgroup it removes)."""
        with self._lock:
            self._paths.setdefault(cgid, path)

    def path(self, cgid: int) -> str | None:
        p = self._paths.get(cgid)
        if p is None:
            answered, p = self._by_handle(cgid)
            if not answered:
                p = self.resolver.path_of(cgid)
            if p is not None:
                with self._lock:
                    self._paths[cgid] = p
        return p

    def name(self, cgid: int) -> str:
        p = self.path(cgid)
        return p if p is not None else f"unknown:{cgid}"

    def forget(self, cgid: int) -> None:
        with self._lock:
            self._paths.pop(cgid, None)
            self._info.pop(cgid, None)

    def pod_labels(self, path: str | None) -> dict[str, str]:
        from .pods import pod_labels

        info = parse_cgroup_path(path) if path else None
        return pod_labels(self.pods, info.pod_uid if info else None, info.container_id if info else None)

    def labels(self, cgid: int) -> dict[str, str]:
        from .pods import pod_labels

        path = self.path(cgid)
        info = self._info.get(cgid)
        if info is None:
            info = parse_cgroup_path(path) if path else parse_cgroup_path("")
            if path is not None:
                self._info[cgid] = info
        return {"cgroup": path if path is not None else f"unknown:{cgid}",
                **pod_labels(self.pods, info.pod_uid, info.container_id)}


class _HandleOpener:
    """cgroup id -> path through open_by_handle_at (kernfs file handles carry the 64-bit id)."""

    FILEID_KERNFS = 0xFE

    def __init__(self, mount: str):
        import ctypes

        self._ctypes = ctypes
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fn = self._libc.open_by_handle_at
        self._fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        self._fn.restype = ctypes.c_int
        self.mount = mount.rstrip("/") or "/"
        self._fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        root_ino = os.fstat(self._fd).st_ino
        ok, path = self.path(root_ino)  # probe: the kernel and our privileges allow it
        if not ok or path != "/":
            os.close(self._fd)
            raise OSError("open_by_handle_at not usable on the cgroup2 mount")

    def path(self, cgid: int) -> tuple[bool, str | None]:
        import errno
        import struct

        buf = self._ctypes.create_string_buffer(struct.pack("<IiQ", 8, self.FILEID_KERNFS, cgid))
        fd = self._fn(self._fd, buf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd < 0:
            err = self._ctypes.get_errno()
            if err in (errno.ESTALE, errno.ENOENT, errno.ENOTDIR):
                return True, None  # no such cgroup (any more)
            return False, None
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False, None
        finally:
            os.close(fd)
        if link == self.mount:
            return True, "/"
        if link.startswith(self.mount + "/") and not link.endswith(" (deleted)"):
            return True, link[len(self.mount):]
        return False, None
