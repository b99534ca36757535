"""opensnoop on the real kernel: open unique paths ourselves, compare what it saw with what we did."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import threading
import time
import uuid

import pytest

from tests.helpers import ToolProcess, run_cli

pytestmark = pytest.mark.bpf

libc = ctypes.CDLL(None, use_errno=True)
SYS_OPEN, SYS_CREAT, SYS_OPENAT2 = 2, 85, 437  # x86-64


class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _sys(nr: int, *args) -> int:
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return ret


def _settle() -> None:
    time.sleep(0.3)  # let the ring buffer poll (100 ms) hand over the last events


def test_reports_each_open_syscall_with_pid_fd_flags(tmp_path):
    tag = uuid.uuid4().hex[:10]
    paths = {s: tmp_path / f"{s}-{tag}" for s in ("open", "openat", "openat2", "creat")}
    tool = ToolProcess("opensnoop", "--json", "-p", str(os.getpid())).ready()
    done = {}
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    fd = os.open(paths["openat"], flags, 0o640)  # glibc open() is openat(AT_FDCWD, ...)
    done["openat"] = (fd, flags)
    fd = _sys(SYS_OPEN, str(paths["open"]).encode(), ctypes.c_int(os.O_RDWR | os.O_CREAT), ctypes.c_int(0o600))
    done["open"] = (fd, os.O_RDWR | os.O_CREAT)
    fd = _sys(SYS_CREAT, str(paths["creat"]).encode(), ctypes.c_int(0o644))
    done["creat"] = (fd, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    how = OpenHow(flags=os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, mode=0, resolve=0)
    fd = _sys(SYS_OPENAT2, ctypes.c_int(-100), str(paths["openat"]).encode(), ctypes.byref(how),
              ctypes.c_size_t(ctypes.sizeof(how)))
    done["openat2"] = (fd, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    for fd, _ in done.values():
        os.close(fd)
    _settle()
    tool.stop()
    recs = tool.json_lines()
    assert recs[-1] == {"type": "summary", "lost_events": 0}
    for syscall, (fd, fl) in done.items():
        path = str(paths["openat"] if syscall == "openat2" else paths[syscall])
        got = [r for r in recs if r.get("path") == path and r.get("syscall") == syscall]
        assert len(got) == 1, (syscall, got)
        r = got[0]
        assert r["pid"] == os.getpid() and r["tid"] == threading.get_native_id()
        assert r["fd"] == fd and r["err"] == 0 and r["ret"] == fd
        assert r["flags"] & ~0o100000 == fl, (syscall, oct(r["flags"]), oct(fl))  # O_LARGEFILE may be added
        assert r["uid"] == os.getuid()
        assert r["comm"] == open("/proc/self/comm").read().strip()
    assert "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC" in next(r["flags_text"] for r in recs if r.get("syscall") == "openat"
                                                         and r.get("path") == str(paths["openat"]))
    assert all(r["pid"] == os.getpid() for r in recs if "pid" in r)  # -p filtered in the kernel


def test_failed_open_enoent_only_with_x(tmp_path):
    tag = uuid.uuid4().hex[:10]
    missing = str(tmp_path / f"missing-{tag}")
    present = tmp_path / f"present-{tag}"
    present.write_text("x")
    with_x = ToolProcess("opensnoop", "--json", "-x", "-p", str(os.getpid())).ready()
    plain = ToolProcess("opensnoop", "--json", "-p", str(os.getpid())).ready()
    with pytest.raises(FileNotFoundError):
        os.open(missing, os.O_RDONLY)
    fd = os.open(present, os.O_RDONLY)
    os.close(fd)
    _settle()
    with_x.stop()
    plain.stop()
    failed = [r for r in with_x.json_lines() if r.get("path") == missing]
    assert len(failed) == 1
    assert failed[0]["err"] == errno.ENOENT and failed[0]["fd"] == -1 and failed[0]["ret"] == -errno.ENOENT
    assert not [r for r in with_x.json_lines() if r.get("path") == str(present)]  # -x: failures only
    assert all(r["ret"] < 0 for r in with_x.json_lines() if "ret" in r)
    seen = {r["path"]: r for r in plain.json_lines() if "path" in r}
    assert seen[missing]["err"] == errno.ENOENT
    assert seen[str(present)]["fd"] == fd


def test_text_output_has_bcc_columns_and_flags(tmp_path):
    tag = uuid.uuid4().hex[:10]
    path = tmp_path / f"text-{tag}"
    tool = ToolProcess("opensnoop", "-e", "-T", "-U", "-p", str(os.getpid())).ready()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    with pytest.raises(FileNotFoundError):
        os.open(str(path) + "-missing", os.O_RDONLY)
    _settle()
    tool.stop()
    lines = tool.stdout.splitlines()
    assert lines[0].split() == ["TIME(s)", "UID", "PID", "COMM", "FD", "ERR", "FLAGS", "PATH"]
    ok = next(line for line in lines if line.endswith(str(path)))
    t, uid, pid, comm, fd_s, err, flags, p = ok.split()
    assert 0 <= float(t) < 60
    assert (int(uid), int(pid), int(fd_s), int(err)) == (os.getuid(), os.getpid(), fd, 0)
    # Python adds O_CLOEXEC (PEP 446); the kernel may add O_LARGEFILE
    assert int(flags, 8) & ~0o100000 == os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    assert len(flags) == 8
    bad = next(line for line in lines if line.endswith(str(path) + "-missing")).split()
    assert bad[4:6] == ["-1", str(errno.ENOENT)]


def test_name_tid_and_flag_filters(tmp_path):
    tag = uuid.uuid4().hex[:10]
    by_cat = str(tmp_path / f"cat-{tag}")
    by_me = str(tmp_path / f"me-{tag}")
    (tmp_path / f"cat-{tag}").write_text("x")
    (tmp_path / f"me-{tag}").write_text("x")
    go = threading.Event()
    tid_box: list[int] = []

    def worker() -> None:
        tid_box.append(threading.get_native_id())
        go.wait(10)
        os.close(os.open(by_me, os.O_RDONLY))

    th = threading.Thread(target=worker)
    th.start()
    while not tid_box:
        time.sleep(0.01)
    by_name = ToolProcess("opensnoop", "--json", "-n", "cat").ready()
    by_tid = ToolProcess("opensnoop", "--json", "-t", str(tid_box[0])).ready()
    writers = ToolProcess("opensnoop", "--json", "-f", "O_WRONLY", "-f", "O_RDWR", "-p", str(os.getpid())).ready()
    subprocess.run(["cat", by_cat], stdout=subprocess.DEVNULL, check=True)
    os.close(os.open(by_me, os.O_RDONLY))  # main thread: not the traced tid
    go.set()
    th.join()
    wpath = str(tmp_path / f"w-{tag}")
    os.close(os.open(wpath, os.O_WRONLY | os.O_CREAT, 0o600))
    _settle()
    for t in (by_name, by_tid, writers):
        t.stop()
    names = by_name.json_lines()[:-1]
    assert names and all("cat" in r["comm"] for r in names)
    assert [r["path"] for r in names if tag in r["path"]] == [by_cat]
    tids = by_tid.json_lines()[:-1]
    assert [r["path"] for r in tids if tag in r["path"]] == [by_me]
    assert all(r["tid"] == tid_box[0] for r in tids)
    w = writers.json_lines()[:-1]
    assert [r["path"] for r in w if tag in r["path"]] == [wpath]
    assert all(r["flags"] & 3 in (1, 2) for r in w)


def test_json_and_text_agree(tmp_path):
    tag = uuid.uuid4().hex[:10]
    child = subprocess.Popen(
        ["python3", "-c",
         "import os,sys\nsys.stdin.readline()\n"
         f"for i in range(40):\n    p='{tmp_path}/agree-{tag}-%d' % i\n"
         "    os.close(os.open(p, os.O_WRONLY|os.O_CREAT, 0o600))\n"
         f"    try: os.open('{tmp_path}/gone-{tag}-%d' % i, os.O_RDONLY)\n"
         "    except FileNotFoundError: pass\n"],
        stdin=subprocess.PIPE, text=True,
    )
    text = ToolProcess("opensnoop", "-p", str(child.pid)).ready()
    js = ToolProcess("opensnoop", "--json", "-p", str(child.pid)).ready()
    child.communicate("\n", timeout=30)
    _settle()
    text.stop()
    js.stop()
    jrows = [(r["pid"], r["fd"], r["err"], r["path"]) for r in js.json_lines() if tag in r.get("path", "")]
    trows = []
    for line in text.stdout.splitlines()[1:]:
        pid, _comm, fd, err, path = line.split(None, 4)
        if tag in path:
            trows.append((int(pid), int(fd), int(err), path))
    assert len(jrows) == 80
    assert trows == jrows
    assert sum(1 for r in jrows if r[2] == errno.ENOENT) == 40


@pytest.mark.parametrize(
    "args,needle",
    [
        (["opensnoop", "-n", "a-name-longer-than-15"], "name"),
        (["opensnoop", "-f", "O_BOGUS"], "flag_filter"),
        (["opensnoop", "-p", "0"], "minimum"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle):
    r = run_cli(*args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
