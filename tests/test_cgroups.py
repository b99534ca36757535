"""cgroup v2 mount, ids, resolver and cgroup path parsing (bpfscope.k8s.cgroups).

The real tests create cgroups under this machine's cgroup2 mount, move a child process in,
and compare what the kernel reports (via /proc/PID/cgroup, stat, name_to_handle_at and a BPF
program calling bpf_get_current_cgroup_id) with what the module computes.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
import time
import uuid

import pytest

from bpfscope.k8s.cgroups import (
    CgroupError,
    CgroupInfo,
    CgroupResolver,
    cgroup2_mount,
    cgroup_id,
    container_id_of_pid,
    fs_path,
    is_container_cgroup,
    parse_cgroup_path,
    path_of_pid,
    resolve_cgroup_arg,
)

UID = "0f8c3c1e-8c2a-4a53-9b1e-7c6d5e4f3a21"
UID_ = UID.replace("-", "_")
CID = "4c1a9e2b7d3f5a6c8e0b1d2f3a4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"
CID2 = "a" * 64
STATIC = "6c2f7b9e3d1a4c5b8e0f2a3b4c5d6e7f"  # static pods: 32-hex config hash


def need(cond: bool, why: str) -> None:
    if not cond:
        pytest.skip(why)  # conftest: a failure under BPFSCOPE_REQUIRE_BPF=1


# --------------------------------------------------------------------------------------------------
# parse_cgroup_path: every layout


def info(uid=None, cid=None, qos=None, rt=None, kind="other"):
    return CgroupInfo(pod_uid=uid, container_id=cid, qos=qos, runtime=rt, kind=kind)


LAYOUTS = [
    # systemd driver
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
     info(UID, CID, "Burstable", "cri-containerd", "container")),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
     info(UID, CID, "BestEffort", "crio", "container")),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{CID}.scope",
     info(UID, CID, "BestEffort", "crio-conmon", "container")),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
     info(UID, CID, "Guaranteed", "cri-containerd", "container")),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope",
     info(UID, CID, "Guaranteed", "docker", "container")),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
     info(UID, None, "Burstable", None, "pod")),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice", info(UID, None, "Guaranteed", None, "pod")),
    # a process inside the container made its own sub-cgroup
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init",
     info(UID, CID, "Guaranteed", "cri-containerd", "container")),
    # kind node: custom cgroup root, nested in the node container's scope
    (f"/system.slice/docker-{CID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
     info(UID, CID, "BestEffort", "cri-containerd", "container")),
    # cgroupfs driver
    (f"/kubepods/burstable/pod{UID}/{CID}", info(UID, CID, "Burstable", None, "container")),
    (f"/kubepods/besteffort/pod{UID}/{CID}", info(UID, CID, "BestEffort", None, "container")),
    (f"/kubepods/pod{UID}/{CID}", info(UID, CID, "Guaranteed", None, "container")),
    (f"/kubepods/burstable/pod{UID}", info(UID, None, "Burstable", None, "pod")),
    (f"/kubepods/pod{UID}", info(UID, None, "Guaranteed", None, "pod")),
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", info(UID, CID, "Burstable", "crio", "container")),
    (f"/kubepods/pod{STATIC}/{CID}", info(STATIC, CID, "Guaranteed", None, "container")),
    # container scopes outside Kubernetes
    (f"/system.slice/docker-{CID}.scope", info(None, CID, None, "docker", "container")),
    (f"/machine.slice/libpod-{CID}.scope", info(None, CID, None, "libpod", "container")),
    (f"/machine.slice/libpod-{CID}.scope/container", info(None, CID, None, "libpod", "container")),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
     info(None, CID, None, "libpod", "container")),
    (f"/system.slice/crio-{CID}.scope", info(None, CID, None, "crio", "container")),
    (f"/system.slice/crio-conmon-{CID}.scope", info(None, CID, None, "crio-conmon", "container")),
    (f"/system.slice/cri-containerd-{CID}.scope", info(None, CID, None, "cri-containerd", "container")),
    (f"/docker/{CID}", info(None, CID, None, "docker", "container")),
    (f"docker-{CID}.scope", info(None, CID, None, "docker", "container")),
    # host
    ("/system.slice/foo.service", info(kind="system")),
    ("/system.slice/containerd.service", info(kind="system")),
    ("/init.scope", info(kind="system")),
    ("/user.slice/user-1000.slice/session-3.scope", info(kind="user")),
    ("/user.slice", info(kind="user")),
    ("/", info()),
    ("/kubepods.slice", info()),
    ("/kubepods.slice/kubepods-burstable.slice", info()),
    # other spellings of the same thing
    (f"kubepods/pod{UID}/{CID}", info(UID, CID, "Guaranteed", None, "container")),
    (f"/sys/fs/cgroup/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/",
     info(UID, CID, "Guaranteed", "cri-containerd", "container")),
    (f"0::/kubepods/besteffort/pod{UID}/{CID}", info(UID, CID, "BestEffort", None, "container")),
    (f"/kubepods.slice/kubepods-pod{UID_.upper()}.slice", info(UID, None, "Guaranteed", None, "pod")),
]

JUNK = [
    "", "   ", "////", ".", "..", "../../etc/passwd", "\x00\xff\n", "a" * 10000, "/".join(["x"] * 2000),
    "kubepods", "kubepods/pod", "kubepods/podnot-a-uid/" + CID, f"/somewhere/pod{UID}/{CID[:-1]}",
    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podZZZ.slice",
    "docker-abc.scope", "docker-" + "g" * 64 + ".scope", f"docker-{CID}a.scope", f"-{CID}.scope",
    "/machine.slice/machine-qemu.scope", "💥/🐳", "0::", ":::", None, 123, b"/kubepods", ["kubepods"],
]


@pytest.mark.parametrize(("path", "expected"), LAYOUTS, ids=[p[:90] for p, _ in LAYOUTS])
def test_parse_layouts(path, expected):
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize("path", JUNK, ids=[repr(p)[:40] for p in JUNK])
def test_parse_junk_is_other(path):
    got = parse_cgroup_path(path)
    assert got.kind == "other"
    assert got.container_id is None


def test_pod_uid_normalised_and_container_id_64hex():
    for path, expected in LAYOUTS:
        got = parse_cgroup_path(path)
        if got.pod_uid:
            assert "_" not in got.pod_uid and got.pod_uid == got.pod_uid.lower()
        if got.container_id:
            assert len(got.container_id) == 64 and int(got.container_id, 16) >= 0
        assert got == expected


def test_is_container_cgroup():
    init = "/init.scope"
    assert is_container_cgroup(f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope", init)
    assert is_container_cgroup(f"/kubepods/burstable/pod{UID}", init)
    assert is_container_cgroup(f"/system.slice/docker-{CID}.scope", init)
    assert is_container_cgroup(f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope", init)
    assert is_container_cgroup("/machine.slice/machine-nspawn.scope", init)  # differs from init's cgroup
    assert not is_container_cgroup("/system.slice/sshd.service", init)
    assert not is_container_cgroup("/user.slice/user-0.slice/session-1.scope", init)
    assert not is_container_cgroup("/init.scope", init)
    assert not is_container_cgroup("/", init)
    assert not is_container_cgroup("/a", "/a/b")  # an ancestor of init's cgroup
    assert not is_container_cgroup(None, init)
    # PID 1 of this machine is never in a container cgroup of its own
    assert not is_container_cgroup(path_of_pid(1))


# --------------------------------------------------------------------------------------------------
# mount


def write_mountinfo(tmp_path, lines):
    p = tmp_path / "mountinfo"
    p.write_text("".join(line + "\n" for line in lines))
    return str(p)


HYBRID = [
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
    "31 23 0:28 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755",
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu",
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:11 - cgroup2 cgroup2 rw",
]


def test_cgroup2_mount_from_mountinfo(tmp_path):
    assert cgroup2_mount(write_mountinfo(tmp_path, HYBRID)) == "/sys/fs/cgroup/unified"
    pure = ["22 1 8:1 / / rw - ext4 /dev/sda1 rw",
            "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate"]
    assert cgroup2_mount(write_mountinfo(tmp_path, pure)) == "/sys/fs/cgroup"
    # /sys/fs/cgroup is preferred even when another cgroup2 mount comes first
    two = ["40 22 0:26 / /run/x\\040y rw - cgroup2 none rw", pure[1]]
    assert cgroup2_mount(write_mountinfo(tmp_path, two)) == "/sys/fs/cgroup"
    assert cgroup2_mount(write_mountinfo(tmp_path, two[:1])) == "/run/x y"  # \040 unescaped
    with pytest.raises(CgroupError, match="no cgroup v2"):
        cgroup2_mount(write_mountinfo(tmp_path, HYBRID[:3]))
    with pytest.raises(CgroupError, match="cannot read"):
        cgroup2_mount(str(tmp_path / "missing"))


def test_cgroup2_mount_here():
    mount = cgroup2_mount()
    with open("/proc/self/mounts") as f:
        v2 = [line.split()[1] for line in f if line.split()[2] == "cgroup2"]
    need(bool(v2), "no cgroup2 mount on this machine")
    assert mount in v2
    assert mount == ("/sys/fs/cgroup" if "/sys/fs/cgroup" in v2 else v2[0])
    if "/sys/fs/cgroup/unified" in v2:  # this machine: hybrid hierarchy
        assert mount == "/sys/fs/cgroup/unified"
    assert os.path.exists(os.path.join(mount, "cgroup.controllers"))  # a v2 root
    assert cgroup_id(mount) == 1  # the root cgroup's id


# --------------------------------------------------------------------------------------------------
# ids as the kernel sees them


def handle_cgroup_id(path: str) -> int:
    """cgroup id from the kernfs file handle (what libbpf's and systemd's get_cgroup_id use)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("<Ii", buf, 0, 128, 0)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(-100, path.encode(), buf, ctypes.byref(mount_id), 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), path)
    nbytes, htype = struct.unpack_from("<Ii", buf, 0)
    assert (nbytes, htype) == (8, 0xFE)  # FILEID_KERNFS
    return struct.unpack_from("<Q", buf, 8)[0]


def bpf_current_cgroup_id() -> int:
    """bpf_get_current_cgroup_id() of the calling process, from a BPF_PROG_TYPE_SYSCALL program."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    sys_bpf = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
    insns = b"".join([
        struct.pack("<BBhi", 0xBF, (1 << 4) | 6, 0, 0),  # r6 = r1 (ctx)
        struct.pack("<BBhi", 0x85, 0, 0, 80),  # call bpf_get_current_cgroup_id
        struct.pack("<BBhi", 0x7B, 6, 0, 0),  # *(u64 *)(r6 + 0) = r0
        struct.pack("<BBhi", 0xB7, 0, 0, 0),  # r0 = 0
        struct.pack("<BBhi", 0x95, 0, 0, 0),  # exit
    ])
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = ctypes.create_string_buffer(128)
    # prog_type=BPF_PROG_TYPE_SYSCALL, insn_cnt, insns, license, log_level, log_size, log_buf,
    # kern_version, prog_flags=BPF_F_SLEEPABLE
    struct.pack_into("<IIQQIIQII", attr, 0, 31, len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(lic), 1, len(log), ctypes.addressof(log), 0, 1 << 4)
    fd = libc.syscall(sys_bpf, 5, attr, len(attr))  # BPF_PROG_LOAD
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_LOAD: {os.strerror(err)}: {log.value.decode(errors='replace')}")
    try:
        ctx = ctypes.create_string_buffer(8)
        run = ctypes.create_string_buffer(128)
        # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration,
        # ctx_size_in, ctx_size_out, ctx_in, ctx_out
        struct.pack_into("<IIIIQQIIIIQQ", run, 0, fd, 0, 0, 0, 0, 0, 0, 0, 8, 0, ctypes.addressof(ctx), 0)
        if libc.syscall(sys_bpf, 10, run, len(run)) != 0:  # BPF_PROG_TEST_RUN
            err = ctypes.get_errno()
            raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
        return struct.unpack("<Q", ctx.raw)[0]  # the program wrote the id into its context
    finally:
        os.close(fd)


def kernel_view() -> dict:
    """What the kernel says about the calling process's cgroup (also run in child processes)."""
    mount = cgroup2_mount()
    line = [x for x in open("/proc/self/cgroup").read().splitlines() if x.startswith("0::")][0]
    path = line[3:]
    fs = os.path.join(mount, path.lstrip("/"))
    out = {"path": path, "stat": os.stat(fs).st_ino, "handle": handle_cgroup_id(fs)}
    try:
        out["bpf"] = bpf_current_cgroup_id()
    except OSError as e:
        out["bpf_error"] = str(e)
    return out


def check_bpf(view: dict) -> None:
    need("bpf" in view, f"BPF check unavailable: {view.get('bpf_error')}")
    assert view["bpf"] == view["stat"]


def test_cgroup_id_is_inode_self():
    need(os.geteuid() == 0, "needs root (name_to_handle_at on cgroupfs, BPF)")
    view = kernel_view()
    assert path_of_pid(os.getpid()) == path_of_pid("self") == view["path"]
    assert cgroup_id(view["path"]) == view["stat"] == view["handle"]
    check_bpf(view)


# --------------------------------------------------------------------------------------------------
# real cgroups on this machine


class CgroupTree:
    """Creates cgroups under the v2 mount, moves children in, removes everything afterwards."""

    def __init__(self):
        self.mount = cgroup2_mount()
        self.top = f"/bpfscope-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen] = []

    def make(self, rel: str) -> str:
        cgpath = self.top + "/" + rel.strip("/")
        os.makedirs(fs_path(cgpath, self.mount))
        return cgpath

    def spawn_in(self, cgpath: str) -> subprocess.Popen:
        """A python child that, once moved into cgpath, reports kernel_view() and waits for stdin EOF."""
        here = os.path.dirname(os.path.abspath(__file__))
        code = (
            f"import sys, json; sys.path.insert(0, {here!r}); import test_cgroups as t; "
            "sys.stdin.readline(); print(json.dumps(t.kernel_view()), flush=True); sys.stdin.read()"
        )
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        with open(os.path.join(fs_path(cgpath, self.mount), "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        p.stdin.write("go\n")
        p.stdin.flush()
        p.view = json.loads(p.stdout.readline())
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        top = fs_path(self.top, self.mount)
        if not os.path.isdir(top):
            return
        dirs = [d for d, _, _ in os.walk(top)]
        for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True):  # deepest first
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while an exiting task leaves the cgroup
                    time.sleep(0.02)
        assert not os.path.exists(top), f"could not remove {top}"


@pytest.fixture
def tree():
    need(os.geteuid() == 0, "needs root to create cgroups")
    mount = cgroup2_mount()
    need(os.access(os.path.join(mount, "cgroup.procs"), os.W_OK), f"{mount} is not writable")
    t = CgroupTree()
    try:
        yield t
    finally:
        t.cleanup()


def test_real_cgroups_systemd_burstable_and_cgroupfs_guaranteed(tree):
    burstable = tree.make(
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope")
    guaranteed = tree.make(f"kubepods/pod{UID}/{CID2}")
    resolver = CgroupResolver()
    assert resolver.mount == tree.mount
    for cgpath, uid, cid, qos in ((burstable, UID, CID, "Burstable"), (guaranteed, UID, CID2, "Guaranteed")):
        p = tree.spawn_in(cgpath)
        view = p.view
        # the kernel agrees with itself: /proc/PID/cgroup, stat, file handle, BPF helper
        assert view["path"] == cgpath == path_of_pid(p.pid) == resolver.path_of_pid(p.pid)
        assert view["stat"] == view["handle"]
        check_bpf(view)
        cgid = view["stat"]
        # ... and the module agrees with the kernel
        assert cgroup_id(cgpath) == cgid
        assert cgroup_id(fs_path(cgpath)) == cgid
        assert resolver.path_of(cgid) == cgpath
        assert resolver.id_of(cgpath) == cgid
        assert resolver.id_of(fs_path(cgpath)) == cgid
        assert resolver.id_of(cgpath.lstrip("/")) == cgid
        info = parse_cgroup_path(path_of_pid(p.pid))
        assert (info.pod_uid, info.container_id, info.qos, info.kind) == (uid, cid, qos, "container")
        assert container_id_of_pid(p.pid) == cid
        assert is_container_cgroup(path_of_pid(p.pid))
        # every ancestor is in the resolver too, and parses as a pod (or nothing) above the container
        parent = cgpath.rsplit("/", 1)[0]
        assert resolver.path_of(cgroup_id(parent)) == parent
        assert parse_cgroup_path(parent).kind == "pod"
        assert parse_cgroup_path(parent).pod_uid == uid
    assert resolver.walks == 1  # both were there when the resolver walked


def test_resolver_refreshes_on_miss_real(tree):
    tree.make("a")
    resolver = CgroupResolver(min_refresh_interval=0)
    assert resolver.walks == 0
    a_id = cgroup_id(tree.top + "/a")
    assert resolver.path_of(a_id) == tree.top + "/a"
    new = tree.make("a/b.scope")
    new_id = cgroup_id(new)
    assert resolver.path_of(new_id) == new  # a miss rewalks
    assert resolver.walks == 2
    os.rmdir(fs_path(new))
    assert resolver.id_of(new) is None
    assert resolver.path_of(new_id) == new  # cached: a removed cgroup's late counters keep its name
    resolver.refresh()
    assert resolver.path_of(new_id) is None
    assert resolver.walks == 4  # the miss walked once more


def test_resolve_cgroup_arg(tree):
    cg = tree.make("x.slice/y.scope")
    mount = tree.mount
    assert resolve_cgroup_arg(cg) == cg
    assert resolve_cgroup_arg(cg.lstrip("/")) == cg
    assert resolve_cgroup_arg(mount + cg) == cg
    assert resolve_cgroup_arg(mount + cg + "/") == cg
    assert resolve_cgroup_arg(mount) == "/"
    assert resolve_cgroup_arg("/") == "/"
    with pytest.raises(CgroupError, match="no such cgroup"):
        resolve_cgroup_arg(cg + "/nope")
    with pytest.raises(CgroupError, match="no such cgroup"):
        resolve_cgroup_arg("/etc")
    with pytest.raises(CgroupError, match=r"'\.\.'"):
        resolve_cgroup_arg(mount + "/../memory")
    with pytest.raises(CgroupError, match="empty"):
        resolve_cgroup_arg("  ")
    with pytest.raises(CgroupError):
        cgroup_id(cg + "/nope")


def test_path_of_pid_errors():
    with pytest.raises(CgroupError, match="no process"):
        path_of_pid(2**22 + 12345)


# --------------------------------------------------------------------------------------------------
# resolver caching, on a plain directory tree (ids are inode numbers there too)


def test_resolver_rate_limits_rewalks(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    now = [100.0]
    r = CgroupResolver(str(tmp_path), min_refresh_interval=5.0, clock=lambda: now[0])
    b_id = os.stat(tmp_path / "a" / "b").st_ino
    assert r.path_of(b_id) == "/a/b"
    assert r.walks == 1
    assert r.id_of("/a/b") == b_id and r.id_of("a/b") == b_id and r.id_of(str(tmp_path / "a" / "b")) == b_id
    assert r.path_of(os.stat(tmp_path).st_ino) == "/"
    # a storm of unknown ids: one rewalk at most per interval
    for bogus in range(10**9, 10**9 + 1000):
        assert r.path_of(bogus) is None
    assert r.walks == 1  # last walk is < 5 s old
    (tmp_path / "c").mkdir()
    c_id = os.stat(tmp_path / "c").st_ino
    assert r.path_of(c_id) is None  # still rate limited
    now[0] += 5.0
    assert r.path_of(c_id) == "/c"
    assert r.walks == 2
    for bogus in range(10**9, 10**9 + 1000):
        r.path_of(bogus)
    assert r.walks == 2
    now[0] += 5.0
    r.path_of(10**9)
    assert r.walks == 3
    assert dict(r.items())[c_id] == "/c" and len(r) == 4
    assert r.refresh() and r.walks == 4  # explicit refresh is not rate limited
