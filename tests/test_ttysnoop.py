"""ttysnoop on the real kernel: an interactive bash on a pty the test opened, typed into through
the master; bytes the test writes itself to that pts (and to a second one, which must not show)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from bpfscope.bpf.object import program_names
from bpfscope.errors import UsageError
from bpfscope.tools.ttysnoop import CLEAR, kernel_dev, resolve_terminal, tty_write_signature
from tests.helpers import ToolProcess, programs_left, run_cli
from tests.pty_helpers import PtyPair, PtyShell, prog_ids_of

BASH = ("/bin/bash", "--norc", "--noprofile", "-i")
READY = 120  # seconds to attach: generous for the kernel matrix VM (qemu TCG is ~20x slower)
TP_PROGS = {n[:15] for p in ("tp_write", "tp_writev", "tp_pwrite64") for n in (p, p + "_cast")}


def data_events(tool: ToolProcess) -> list[dict]:
    return [r for r in tool.json_lines() if "data" in r]


def summary_of(tool: ToolProcess) -> dict:
    return next(r for r in tool.json_lines() if r.get("type") == "summary")


def _shell_session(*mode: str) -> tuple[ToolProcess, PtyShell, str, str]:
    """bash -i on a pty; ttysnoop --json on its pts; a command typed whose output is a marker
    that the typed text does not contain; a marker written to a second pts."""
    marker = uuid.uuid4().hex[:12]
    with PtyShell(BASH) as sh, PtyPair() as other:
        sh.wait_prompt()
        tool = ToolProcess("ttysnoop", "--json", "-C", *mode, sh.path).ready(READY)
        sh.run(f"printf '%s-%s\\n' out {marker}", expect=f"out-{marker}")
        other.write(f"other-{marker}\n".encode())
        other.out.wait_for(f"other-{marker}".encode())
        time.sleep(0.3)
        tool.stop()
    return tool, sh, marker, other.path


@pytest.mark.bpf
def test_shell_output_on_its_pts_and_nothing_from_another():
    tool, sh, marker, other_path = _shell_session()
    events = data_events(tool)
    assert "tracepoint mode" in tool.stderr
    from_shell = [e for e in events if e["pid"] == sh.pid]
    text = "".join(e["data"] for e in from_shell)
    assert f"out-{marker}\n" in text  # what the shell printed, as it wrote it (no \r added)
    assert f"printf '%s-%s\\n' out {marker}" in text  # readline's echo of what was typed
    assert PtyShell.PROMPT in text
    assert all(e["comm"] == "bash" and e["syscall"] in ("write", "writev") for e in from_shell)
    assert all(e["count"] == len(e["data"].encode()) for e in from_shell)
    assert not [e for e in events if f"other-{marker}" in e["data"]]  # the second pts is not watched
    assert summary_of(tool)["lost_events"] == 0


@pytest.mark.bpf
def test_text_mode_replays_the_bytes_and_clears_first():
    with PtyPair() as pty:
        plain = ToolProcess("ttysnoop", "-s", "7", pty.path).ready(READY)
        noclear = ToolProcess("ttysnoop", "-C", str(int(pty.path.rsplit("/", 1)[1]))).ready(READY)
        chunks = ["\x1b[1mbold\x1b[0m ", "日本語 é ", "tab\tand\r\nnewline\n"]  # UTF-8 split across -s 7 events
        for c in chunks:
            pty.write(c.encode())
        pty.out.wait_for(b"newline")
        time.sleep(0.3)
        plain.stop()
        noclear.stop()
    assert plain.stdout == CLEAR + "".join(chunks)
    assert noclear.stdout == "".join(chunks)


@pytest.mark.bpf
def test_large_writes_are_split_and_a_cut_is_never_silent():
    fits, cut = os.urandom(400).hex().encode(), os.urandom(500).hex().encode()  # 800 and 1000 bytes
    with PtyPair() as pty:
        tool = ToolProcess("ttysnoop", "--json", "-s", "100", "-c", "8", pty.path).ready(READY)
        assert os.write(pty.slave, fits) == len(fits)
        assert os.write(pty.slave, cut) == len(cut)
        pty.out.wait_for(cut[-20:])
        time.sleep(0.3)
        tool.stop()
    events = [e for e in data_events(tool) if e["pid"] == os.getpid()]
    first = [e for e in events if e["write_bytes"] == 800]
    assert [e["part"] for e in first] == list(range(8))
    assert "".join(e["data"] for e in first).encode() == fits and not any(e["truncated"] for e in first)
    second = [e for e in events if e["write_bytes"] == 1000]
    assert [e["count"] for e in second] == [100] * 8
    assert "".join(e["data"] for e in second).encode() == cut[:800]
    assert [e["truncated"] for e in second] == [False] * 7 + [True] and second[-1]["not_shown"] == 200
    s = summary_of(tool)
    assert s["writes_cut"] == 1 and s["bytes_not_shown"] == 200
    assert "200 bytes not shown" in tool.stderr


@pytest.mark.bpf
def test_writev_is_joined_and_pwrite_which_fails_on_a_tty_is_not_reported():
    marker = uuid.uuid4().hex[:10].encode()
    with PtyPair() as pty:
        tool = ToolProcess("ttysnoop", "--json", "-s", "4", pty.path).ready(READY)
        parts = [b"v1-" + marker, b"", b"-v3-", b"", b"x" * 9]
        assert os.writev(pty.slave, parts) == sum(map(len, parts))
        with pytest.raises(OSError):  # ESPIPE: a tty has no positions, nothing is written
            os.pwrite(pty.slave, b"pw-" + marker, 0)
        pty.write(b"end-" + marker)
        pty.out.wait_for(b"end-" + marker)
        time.sleep(0.3)
        tool.stop()
    events = [e for e in data_events(tool) if e["pid"] == os.getpid()]
    vec = [e for e in events if e["syscall"] == "writev"]
    assert "".join(e["data"] for e in vec).encode() == b"".join(parts)
    assert all(e["count"] <= 4 for e in vec) and {e["write_bytes"] for e in vec} == {sum(map(len, parts))}
    assert not [e for e in events if "pw-" in e["data"]]
    assert [e["syscall"] for e in events if e["data"].startswith("end-")] == ["write"]


_CHILD = """
import os, sys
pts, other, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.write(pts, f"small-table-{marker}".encode())         # fd table never grown: the BTF fast path
os.write(os.open("/dev/null", os.O_WRONLY), f"null-{marker}".encode())
os.write(other, f"other-{marker}".encode())
os.dup2(pts, 200)                                      # grows the fd table: the probe-read path
os.write(200, f"grown-table-{marker}".encode())
os.write(pts, f"low-fd-grown-table-{marker}".encode())
"""


@pytest.mark.bpf
def test_writes_of_other_processes_and_to_dev_null_are_not_reported():
    marker = uuid.uuid4().hex[:10]
    with PtyPair() as pty, PtyPair() as other:
        tool = ToolProcess("ttysnoop", "--json", pty.path).ready(READY)
        subprocess.run([sys.executable, "-S", "-c", _CHILD, str(pty.slave), str(other.slave), marker],
                       check=True, pass_fds=(pty.slave, other.slave))
        pty.out.wait_for(f"low-fd-grown-table-{marker}".encode())
        time.sleep(0.3)
        tool.stop()
    assert pty.slave < 64  # so the first write takes the fast path
    got = [(e["fd"], e["data"]) for e in data_events(tool) if marker in e["data"]]
    assert got == [(pty.slave, f"small-table-{marker}"), (200, f"grown-table-{marker}"),
                   (pty.slave, f"low-fd-grown-table-{marker}")]


@pytest.mark.bpf
@pytest.mark.parametrize("variant", ["", "_cast"])
def test_both_filter_variants_on_small_and_grown_fd_tables(variant):
    """The plain programs (fd_array switch while the fd table is the embedded one, probe reads
    after it grew: kernels 5.11-6.1) and the bpf_rdonly_cast ones (6.2+, this kernel), loaded
    as the tool loads them, fed by the same child."""
    from bpfscope.bpf.ringbuf import RingBuffer
    from bpfscope.toolkit import object_path, open_object
    from bpfscope.tools.ttysnoop import TRACEPOINT_PROGRAMS

    marker = uuid.uuid4().hex[:10]
    with PtyPair() as pty, PtyPair() as other, open_object(object_path("ttysnoop")) as obj:
        term = resolve_terminal(pty.path)
        obj.set_global("target_rdev", term.rdev)
        obj.set_global("target_sb_dev", term.sb_dev)
        obj.only_programs({p + variant for p in TRACEPOINT_PROGRAMS})
        obj.load()
        for prog, tp in TRACEPOINT_PROGRAMS.items():
            obj.program(prog + variant).attach_tracepoint("syscalls", tp)
        rb = RingBuffer(obj, "events")
        subprocess.run([sys.executable, "-S", "-c", _CHILD, str(pty.slave), str(other.slave), marker],
                       check=True, pass_fds=(pty.slave, other.slave))
        raws = rb.poll(100) + rb.consume()
        rb.close()
        event_t = obj.struct("event")
        off = event_t.data.offset
    got = []
    for raw in raws:
        e = event_t.from_buffer_copy(raw[: ctypes.sizeof(event_t)].ljust(ctypes.sizeof(event_t), b"\0"))
        data = raw[off : off + e.count].decode()
        if marker in data:
            got.append((e.fd, data))
    assert got == [(pty.slave, f"small-table-{marker}"), (200, f"grown-table-{marker}"),
                   (pty.slave, f"low-fd-grown-table-{marker}")]


def test_device_forms_and_refusals():
    with PtyPair() as pty:
        n = pty.path.rsplit("/", 1)[1]
        want = resolve_terminal(pty.path)
        assert resolve_terminal(n) == want == resolve_terminal(f"pts/{n}")
        st = os.stat(pty.path)
        assert want.rdev == (os.major(st.st_rdev) << 20) | os.minor(st.st_rdev) == kernel_dev(st.st_rdev)
        assert want.sb_dev == kernel_dev(st.st_dev)  # this devpts instance only
    for bad, needle in [("/dev/null", "not a terminal"), ("/dev/tty", "own terminal"), ("/dev/ptmx", "master"),
                        ("/dev/pts/9999999", "no such terminal"), ("/dev/../etc/passwd", "not a terminal"),
                        ("/dev/pts", "not a character device"), ("a b", "not a terminal")]:
        with pytest.raises(UsageError, match=needle):
            resolve_terminal(bad)


@pytest.mark.parametrize("args,needle", [
    (["/dev/null"], "not a terminal"),
    (["-s", "0", "PTS"], "minimum"),
    (["-c", "1000", "PTS"], "maximum"),
    (["--mode", "kprobe", "PTS"], "no hook fits this kernel: kprobe needs kprobe"),
    (["--mode", "fentry", "PTS"], "no hook fits this kernel: fentry needs fentry"),
    ([], "the following arguments are required: DEVICE"),
])
@pytest.mark.bpf
def test_bad_input_is_one_clear_line(args, needle):
    with PtyPair() as pty:
        r = run_cli("ttysnoop", *[pty.path if a == "PTS" else a for a in args])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert needle in last
    if last.startswith("bpfscope: error:"):  # ours: one line (argparse adds its usage lines)
        assert r.stderr.count("\n") == 1


def test_tty_write_signature_from_kernel_btf():
    """This kernel (6.18) has tty_write(struct kiocb *, struct iov_iter *): the kernel modes
    choose their argument layout from BTF."""
    assert tty_write_signature() == "iter"


@pytest.mark.bpf
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_and_releases_programs(sig):
    with PtyPair() as pty:
        tool = ToolProcess("ttysnoop", pty.path).ready(READY)
        during = prog_ids_of(tool.proc.pid)
        assert len(during) == 3 and set(program_names(during).values()) <= TP_PROGS
        took = tool.stop(sig)
    assert tool.proc.returncode == 0 and "Traceback" not in tool.stderr
    assert took < 2.0
    assert not programs_left(during)


# ------------------------------------------------------------------------------ kernel modes (6.1 VM)

@pytest.mark.kernelfunc
@pytest.mark.parametrize("mode", ["fentry", "kprobe"])
def test_kernel_mode_sees_the_shell_and_dev_tty(mode):
    tool, sh, marker, _ = _shell_session("--mode", mode)
    assert f"{mode} mode" in tool.stderr
    events = data_events(tool)
    text = "".join(e["data"] for e in events if e["pid"] == sh.pid)
    assert f"out-{marker}\n" in text
    assert all(e["syscall"] == "tty_write" for e in events)
    assert not [e for e in events if f"other-{marker}" in e["data"]]


@pytest.mark.kernelfunc
@pytest.mark.parametrize("mode", ["fentry", "kprobe"])
def test_kernel_mode_catches_writes_through_dev_tty(mode):
    marker = uuid.uuid4().hex[:10]
    with PtyShell(BASH) as sh:
        sh.wait_prompt()
        tool = ToolProcess("ttysnoop", "--json", "--mode", mode, sh.path).ready(READY)
        sh.run(f"echo via-dev-tty-{marker} > /dev/tty", expect=f"via-dev-tty-{marker}")
        time.sleep(0.3)
        tool.stop()
    assert any(f"via-dev-tty-{marker}" in e["data"] for e in data_events(tool))


_OTHER_DEVPTS = r"""
import fcntl, os, struct, subprocess, sys, tempfile
want, marker = int(sys.argv[1]), sys.argv[2].encode()
d = tempfile.mkdtemp()
subprocess.run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts", d], check=True)
masters = []
while True:  # a new instance counts from 0: open masters until its pts number matches the host's
    m = os.open(d + "/ptmx", os.O_RDWR | os.O_NOCTTY)
    masters.append(m)
    n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"\0" * 4))[0]  # TIOCGPTN
    if n == want:
        break
fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))  # TIOCSPTLCK
s = os.open(f"{d}/{n}", os.O_RDWR | os.O_NOCTTY)
st = os.fstat(s)
print(os.major(st.st_rdev), os.minor(st.st_rdev), flush=True)
os.write(s, marker)
print(os.read(m, 100).decode(), flush=True)
"""


@pytest.mark.bpf
def test_same_pts_number_in_another_devpts_instance_is_not_reported():
    """A container's /dev/pts/N has the host's pts N device number; the devpts instance tells them apart."""
    marker = uuid.uuid4().hex[:10]
    with PtyPair() as pty:
        n = int(pty.path.rsplit("/", 1)[1])
        host_major = os.major(os.stat(pty.path).st_rdev)
        tool = ToolProcess("ttysnoop", "--json", pty.path).ready(READY)
        r = subprocess.run(["unshare", "-m", sys.executable, "-c", _OTHER_DEVPTS, str(n), f"ctr-{marker}"],
                           capture_output=True, text=True, timeout=30)
        pty.write(f"host-{marker}".encode())
        pty.out.wait_for(f"host-{marker}".encode())
        time.sleep(0.3)
        tool.stop()
    assert r.returncode == 0, r.stderr
    major, minor, echoed = r.stdout.split()
    assert (int(major), int(minor)) == (host_major, n)  # the same device number...
    assert echoed == f"ctr-{marker}"
    got = [e["data"] for e in data_events(tool) if marker in e["data"]]
    assert got == [f"host-{marker}"]  # ...but only the host's pts is reported
