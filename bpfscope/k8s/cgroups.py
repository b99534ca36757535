"""cgroup v2: find the mount, cgroup id <-> path, and what a cgroup path says about pods and containers.

Cgroup paths in this module are written the way /proc/PID/cgroup writes them: relative to the
cgroup2 mount, with a leading slash ("/" is the root cgroup, "/system.slice/sshd.service" a child).

The cgroup id that bpf_skb_cgroup_id() and bpf_get_current_cgroup_id() return is the kernfs node id
of the cgroup directory; on 64-bit kernels that is the directory's inode number, so a stat() (or
the d_ino of a readdir) gives it without BPF.
"""

from __future__ import annotations

import os
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from ..errors import BpfscopeError

MOUNTINFO = "/proc/self/mountinfo"
PREFERRED_MOUNT = "/sys/fs/cgroup"


class CgroupError(BpfscopeError):
    """No cgroup v2 mount, unknown cgroup, unreadable /proc/PID/cgroup..."""


# --------------------------------------------------------------------------------------------------
# mount


def _unescape_mountinfo(field: str) -> str:
    # the kernel escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cgroup2_mounts(mountinfo: str = MOUNTINFO) -> list[tuple[str, str]]:
    """(mount point, root of the mount inside the hierarchy) of every cgroup2 mount, in order."""
    out = []
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CgroupError(f"cannot read {mountinfo}: {e.strerror}") from None
    for line in lines:
        # id parent major:minor root mountpoint options [optional...] - fstype source superoptions
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or not rfields or rfields[0] != "cgroup2":
            continue
        out.append((_unescape_mountinfo(fields[4]), _unescape_mountinfo(fields[3])))
    return out


def _find_cgroup2(mountinfo: str = MOUNTINFO) -> tuple[str, str]:
    mounts = _cgroup2_mounts(mountinfo)
    if not mounts:
        raise CgroupError(
            "no cgroup v2 file system is mounted (see /proc/self/mountinfo); "
            "mount one with: mount -t cgroup2 none /sys/fs/cgroup"
        )
    for mount in mounts:
        if mount[0] == PREFERRED_MOUNT:
            return mount
    return mounts[0]


def cgroup2_mount(mountinfo: str = MOUNTINFO) -> str:
    """Mount point of the cgroup v2 hierarchy: /sys/fs/cgroup if it is cgroup2, else the first one."""
    return _find_cgroup2(mountinfo)[0]


# --------------------------------------------------------------------------------------------------
# paths and ids


def _normalize(cgpath: str) -> str:
    """'/a/b', 'a/b/', '/a//b' -> '/a/b'; refuses to climb above the root."""
    norm = posixpath.normpath("/" + cgpath.strip())
    if norm.startswith("//"):  # normpath keeps a leading '//'
        norm = "/" + norm.lstrip("/")
    return norm


def resolve_cgroup_arg(arg: str, mount: str | None = None) -> str:
    """A user's --cgroup value -> cgroup path ('/...').

    Accepts an absolute file system path under the cgroup2 mount (/sys/fs/cgroup/system.slice),
    a path relative to the mount (system.slice, or /system.slice as /proc/PID/cgroup writes it).
    The cgroup must exist.
    """
    mount = mount or cgroup2_mount()
    raw = arg.strip()
    if not raw:
        raise CgroupError("empty cgroup path")
    if ".." in raw.split("/"):
        raise CgroupError(f"cgroup path {arg!r} must not contain '..'")
    mnt = mount.rstrip("/")
    if mnt and (raw == mnt or raw.startswith(mnt + "/")):
        cgpath = _normalize(raw[len(mnt):])
    else:
        cgpath = _normalize(raw)
    fs = fs_path(cgpath, mount)
    if not os.path.isdir(fs):
        raise CgroupError(f"no such cgroup: {arg!r} (looked for {fs}; cgroup v2 is mounted at {mount})")
    return cgpath


def fs_path(cgpath: str, mount: str | None = None) -> str:
    """cgroup path ('/a/b') -> directory under the mount."""
    mount = mount or cgroup2_mount()
    rel = _normalize(cgpath).lstrip("/")
    return os.path.join(mount, rel) if rel else mount


def cgroup_id(path: str, mount: str | None = None) -> int:
    """The kernel's cgroup id (what bpf_skb_cgroup_id() returns) of a cgroup.

    path: a directory under the cgroup2 mount, or a cgroup path relative to it (see resolve_cgroup_arg).
    """
    mount = mount or cgroup2_mount()
    fs = fs_path(resolve_cgroup_arg(path, mount), mount)
    try:
        st = os.stat(fs)
    except OSError as e:
        raise CgroupError(f"cannot stat cgroup {path!r}: {e.strerror}") from None
    return st.st_ino


def _read_proc_cgroup(pid: int | str) -> list[tuple[str, str, str]]:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except FileNotFoundError:
        raise CgroupError(f"no process {pid}") from None
    except OSError as e:
        raise CgroupError(f"cannot read /proc/{pid}/cgroup: {e.strerror}") from None
    out = []
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        out.append((hid, controllers, path))
    return out


def path_of_pid(pid: int | str) -> str:
    """cgroup v2 path of a process ('0::/...' line of /proc/PID/cgroup)."""
    for hid, controllers, path in _read_proc_cgroup(pid):
        if hid == "0" and controllers == "":
            return path
    raise CgroupError(f"process {pid} has no cgroup v2 entry in /proc/{pid}/cgroup (cgroup v1-only host?)")


def container_id_of_pid(pid: int | str) -> str | None:
    """64-hex container id of a process, from its cgroup v2 path (falling back to v1 hierarchies)."""
    entries = _read_proc_cgroup(pid)
    entries.sort(key=lambda e: e[0] != "0")  # v2 line first
    for _hid, _controllers, path in entries:
        cid = parse_cgroup_path(path).container_id
        if cid:
            return cid
    return None


# --------------------------------------------------------------------------------------------------
# what a path says


Kind = Literal["pod", "container", "system", "user", "other"]


@dataclass(frozen=True)
class CgroupInfo:
    pod_uid: str | None = None  # dashes, lower case (static pods: 32-hex config hash)
    container_id: str | None = None  # 64 hex
    qos: str | None = None  # "Guaranteed" | "Burstable" | "BestEffort" (pods only)
    runtime: str | None = None  # scope prefix: cri-containerd, crio, crio-conmon, docker, libpod, ...
    kind: Kind = "other"


_UID = r"(?P<uid>[0-9a-fA-F]{8}(?:[-_][0-9a-fA-F]{4}){3}[-_][0-9a-fA-F]{12}|[0-9a-fA-F]{32})"
_CID = r"(?P<cid>[0-9a-f]{64})"
# systemd driver: kubepods-burstable-pod<uid>.slice, kubepods-pod<uid>.slice (Guaranteed);
# kind and custom cgroup roots prefix it (kubelet-kubepods-besteffort-pod<uid>.slice)
_POD_SLICE = re.compile(r"^(?:[\w.-]+-)?kubepods(?:-(?P<qos>burstable|besteffort))?-pod" + _UID + r"\.slice$")
# cgroupfs driver: kubepods/burstable/pod<uid>, kubepods/pod<uid>
_POD_DIR = re.compile(r"^pod" + _UID + r"$")
# <runtime>-<id>.scope (systemd) or crio-<id> (cri-o with cgroupfs); runtime prefixes may contain dashes
_SCOPE = re.compile(r"^(?P<rt>[a-z][a-z0-9_]*(?:-[a-z][a-z0-9_]*)*)-" + _CID + r"(?:\.scope)?$")
_BARE = re.compile(r"^" + _CID + r"$")
_QOS = {None: "Guaranteed", "burstable": "Burstable", "besteffort": "BestEffort"}
_PROC_LINE = re.compile(r"^\d+:[^:/]*:")


def _container_component(comp: str, parent: str | None, in_pod: bool) -> tuple[str, str | None] | None:
    """(container id, runtime) if comp names a container."""
    m = _SCOPE.match(comp)
    if m:
        return m.group("cid"), m.group("rt")
    m = _BARE.match(comp)
    if m and (in_pod or parent == "docker"):  # cgroupfs driver: kubepods/.../pod<uid>/<id>, docker/<id>
        return m.group("cid"), ("docker" if parent == "docker" else None)
    return None


def parse_cgroup_path(path: str) -> CgroupInfo:
    """Pod uid, container id, QoS class and runtime named by a cgroup path; never raises.

    Understands the kubelet's systemd and cgroupfs layouts (under any cgroup root prefix, and
    nested in a kind/docker node), container scopes outside Kubernetes (docker-, libpod-, crio-...),
    system.slice and user.slice. Also takes full file system paths and /proc/PID/cgroup lines.
    """
    if not isinstance(path, str):
        return CgroupInfo()
    try:
        return _parse(path)
    except Exception:  # junk must never break a metrics loop
        return CgroupInfo()


def _parse(path: str) -> CgroupInfo:
    path = _PROC_LINE.sub("", path.strip(), count=1)
    comps = [c for c in path.split("/") if c and c != "."]
    pod_uid = qos = None
    pod_at = -1
    for i, comp in enumerate(comps):
        m = _POD_SLICE.match(comp)
        if m:
            qos = _QOS[m.group("qos")]
        else:
            m = _POD_DIR.match(comp)
            if m:
                parent = comps[i - 1] if i else None
                if parent not in ("burstable", "besteffort") and not (parent or "").endswith("kubepods"):
                    m = None
                else:
                    qos = _QOS[parent if parent in ("burstable", "besteffort") else None]
        if m:
            pod_uid = m.group("uid").replace("_", "-").lower()
            pod_at = i
    container_id = runtime = None
    if pod_at >= 0:
        # the first container-looking component below the pod
        for i in range(pod_at + 1, len(comps)):
            hit = _container_component(comps[i], comps[i - 1], True)
            if hit:
                container_id, runtime = hit
                break
    else:
        # no pod: the innermost container scope (docker-<id>.scope, libpod-<id>.scope, docker/<id>, ...)
        for i in range(len(comps) - 1, -1, -1):
            hit = _container_component(comps[i], comps[i - 1] if i else None, False)
            if hit:
                container_id, runtime = hit
                break
    if container_id:
        kind: Kind = "container"
    elif pod_uid:
        kind = "pod"
    else:
        kind = "other"
        for comp in comps:
            if comp in ("system.slice", "init.scope"):
                kind = "system"
                break
            if comp == "user.slice":
                kind = "user"
                break
    return CgroupInfo(pod_uid=pod_uid, container_id=container_id, qos=qos, runtime=runtime, kind=kind)


def is_container_cgroup(path: str, init_path: str | None = None) -> bool:
    """Whether a cgroup holds a container (or a pod).

    True when the path looks like a container scope or pod cgroup; False for system.slice,
    user.slice (unless a container scope is inside them), for init's own cgroup and its ancestors.
    Any other path counts as a container when it differs from PID 1's cgroup (init_path,
    default read from /proc/1/cgroup: run with the host PID namespace for that to be the host's init).
    """
    info = parse_cgroup_path(path)
    if info.kind in ("container", "pod"):
        return True
    if info.kind in ("system", "user"):
        return False
    if not isinstance(path, str):
        return False
    if init_path is None:
        try:
            init_path = path_of_pid(1)
        except CgroupError:
            init_path = "/"
    cg, init = _normalize(_PROC_LINE.sub("", path.strip(), count=1)), _normalize(init_path)
    if cg == "/" or cg == init or init.startswith(cg + "/"):
        return False
    return True


# --------------------------------------------------------------------------------------------------
# id <-> path


class CgroupResolver:
    """cgroup id <-> cgroup path for the whole v2 tree.

    Walks the tree once and caches the result. An unknown id triggers a new walk, but at most one
    every min_refresh_interval seconds, so a burst of ids of cgroups that came and went does not
    rewalk the tree for each of them. Thread-safe.
    """

    def __init__(
        self,
        mount: str | None = None,
        *,
        min_refresh_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if mount is None:
            self.mount, self._mount_root = _find_cgroup2()
        else:
            self.mount, self._mount_root = mount, "/"
        self.min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[int, str] = {}
        self._by_path: dict[str, int] = {}
        self._last_walk: float | None = None
        self.walks = 0  # number of tree walks done (for tests and stats)

    # -- walking

    def _walk(self) -> tuple[dict[int, str], dict[str, int]]:
        by_id: dict[int, str] = {}
        try:
            by_id[os.stat(self.mount).st_ino] = "/"
        except OSError as e:
            raise CgroupError(f"cannot stat cgroup2 mount {self.mount}: {e.strerror}") from None
        stack = [(self.mount, "")]
        while stack:
            fs, rel = stack.pop()
            try:
                it = os.scandir(fs)
            except OSError:  # removed while walking, or not readable
                continue
            with it:
                for entry in it:
                    try:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    child = rel + "/" + entry.name
                    # kernfs readdir reports the node id as d_ino: no stat needed
                    by_id[entry.inode()] = child
                    stack.append((entry.path, child))
        return by_id, {p: i for i, p in by_id.items()}

    def refresh(self, force: bool = True) -> bool:
        """Rewalk the tree. With force=False, only if the last walk is older than min_refresh_interval."""
        with self._lock:
            now = self._clock()
            if not force and self._last_walk is not None and now - self._last_walk < self.min_refresh_interval:
                return False
            self._by_id, self._by_path = self._walk()
            self._last_walk = now
            self.walks += 1
            return True

    def _ensure(self) -> None:
        if self._last_walk is None:
            self.refresh()

    # -- lookups

    def path_of(self, cgid: int) -> str | None:
        """cgroup path ('/...') of a cgroup id, or None if the tree has no such cgroup.

        Ids are never reused, so an id found by a walk keeps naming its path (also after the cgroup
        is removed: late counters still get a name) until a later walk no longer sees it.
        """
        self._ensure()
        path = self._by_id.get(cgid)
        if path is None and self.refresh(force=False):
            path = self._by_id.get(cgid)
        return path

    def id_of(self, cgpath: str) -> int | None:
        """cgroup id of a cgroup path ('/a/b', 'a/b' or a directory under the mount), or None."""
        if cgpath.startswith(self.mount.rstrip("/") + "/") or cgpath == self.mount:
            cgpath = cgpath[len(self.mount.rstrip("/")):]
        cgpath = _normalize(cgpath)
        try:
            cgid = os.stat(fs_path(cgpath, self.mount)).st_ino  # authoritative: paths get reused
        except OSError:
            return None
        with self._lock:
            old = self._by_path.get(cgpath)
            if old != cgid:
                self._by_path[cgpath] = cgid
                self._by_id[cgid] = cgpath
        return cgid

    def path_of_pid(self, pid: int | str) -> str:
        """cgroup path of a process, relative to this resolver's mount."""
        path = path_of_pid(pid)
        root = self._mount_root.rstrip("/")
        if root and (path == root or path.startswith(root + "/")):
            path = path[len(root):] or "/"
        return path

    def fs_path(self, cgpath: str) -> str:
        return fs_path(cgpath, self.mount)

    def items(self) -> Iterator[tuple[int, str]]:
        """(id, path) of every cgroup seen by the last walk (walking once if never walked)."""
        self._ensure()
        return iter(list(self._by_id.items()))

    def __len__(self) -> int:
        self._ensure()
        return len(self._by_id)
