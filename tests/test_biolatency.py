"""biolatency on the real kernel: O_DIRECT writes we issue ourselves, on the disk under the
test's temporary directory and on a loop device of our own (nobody else does I/O there, so
every mode must count exactly the writes we made)."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ToolProcess, run_cli

pytestmark = pytest.mark.bpf
BS = 4096


def _losetup(image: Path, size_mb: int) -> str:
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    return subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def loopdev(tmp_path_factory) -> Iterator[str]:
    """A loop device only this module writes to."""
    dev = _losetup(tmp_path_factory.mktemp("bio") / "raw.img", 64)
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _disk_of(path: Path) -> str | None:
    """Whole-disk name of the block device holding path, or None (tmpfs, overlay, 9p...)."""
    st = os.stat(path)
    link = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not link.exists():
        return None
    real = link.resolve()
    return real.parent.name if (real / "partition").exists() else real.name


@contextlib.contextmanager
def block_dir(kind: str, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory on a real block-device file system, and that disk's name. `tmp`: the test's
    tmp dir when a block device backs it; otherwise (and for `loop-ext4`) a fresh ext4 on a
    loop device, unmounted and detached afterwards."""
    disk = _disk_of(tmp_path) if kind == "tmp" else None
    if disk:
        yield tmp_path, disk
        return
    dev = _losetup(tmp_path / "fs.img", 64)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            yield mnt, os.path.basename(dev)
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def direct_writes(path: str | Path, n: int, fsync: bool) -> None:
    """n sequential 4 KiB O_DIRECT writes (each waits for its I/O), then maybe fsync."""
    flags = os.O_WRONLY | os.O_DIRECT | (0 if str(path).startswith("/dev/") else os.O_CREAT)
    fd = os.open(path, flags, 0o600)
    buf = mmap.mmap(-1, BS)  # page-aligned, as O_DIRECT wants
    buf.write(b"b" * BS)
    try:
        for i in range(n):
            assert os.pwrite(fd, buf, i * BS) == BS
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


def histograms(tool: ToolProcess) -> list[dict]:
    return [h for rec in tool.json_lines() if rec.get("type") == "histograms" for h in rec["histograms"]]


def text_histograms(stdout: str) -> dict[str | None, int]:
    """key -> total count, parsed from BCC-style text."""
    out: dict[str | None, int] = {}
    key = None
    for line in stdout.splitlines():
        m = re.match(r"^(\w+) = (\S+)$", line)
        if m:
            key = m.group(2)
            continue
        m = re.match(r"^\s+(\d+) -> (\d+)\s+: (\d+)\s+\|", line)
        if m:
            out[key] = out.get(key, 0) + int(m.group(3))
    return out


def _check_buckets(h: dict) -> None:
    assert h["count"] == sum(b["count"] for b in h["buckets"])
    for a, b in zip(h["buckets"], h["buckets"][1:], strict=False):
        assert b["low"] == a["high"] + 1 == max(2 * a["low"], 2)


@pytest.mark.parametrize("kind", ["tmp", "loop-ext4"])
def test_direct_writes_and_fsync_on_a_block_filesystem(kind, tmp_path):
    n = 64
    with block_dir(kind, tmp_path) as (d, disk):
        tool = ToolProcess("biolatency", "-D", "--json").ready()
        direct_writes(d / "data", n, fsync=True)
        time.sleep(0.1)
        tool.stop()
    hs = {h["key"]: h for h in histograms(tool)}
    assert disk in hs, f"no histogram for {disk}: {list(hs)}"
    h = hs[disk]
    assert h["key_label"] == "disk" and h["unit"] == "usecs"
    assert h["count"] >= n  # each O_DIRECT write is at least one request; fsync adds journal + flush
    assert h["sum"] > 0
    _check_buckets(h)
    assert tool.json_lines()[-1] == {"type": "summary", "lost_events": 0}


def test_every_mode_counts_exactly_our_writes(loopdev):
    name = os.path.basename(loopdev)
    sched = Path(f"/sys/block/{name}/queue/scheduler")
    old = re.search(r"\[(\S+)\]", sched.read_text()).group(1)
    with contextlib.suppress(OSError):  # kernels without mq-deadline: -Q then starts at issue
        sched.write_text("mq-deadline")  # requests go through block_rq_insert as well
    try:
        runs = {
            "tp_btf": ToolProcess("biolatency", "--json", "-d", name),
            "raw_tp": ToolProcess("biolatency", "--json", "-d", name, "--mode", "raw_tp"),
            "tracepoint": ToolProcess("biolatency", "--json", "-d", loopdev, "--mode", "tracepoint"),
            "queued": ToolProcess("biolatency", "--json", "-Q", "-d", name),
            "queued-tp": ToolProcess("biolatency", "--json", "-Q", "-d", name, "--mode", "tracepoint"),
            "ms": ToolProcess("biolatency", "--json", "-m", "-D", "-d", name),
            "text": ToolProcess("biolatency", "-D", "-d", name),
        }
        for t in runs.values():
            t.ready()
        n = 100
        direct_writes(loopdev, n, fsync=False)
        time.sleep(0.1)
        for t in runs.values():
            t.stop()
    finally:
        with contextlib.suppress(OSError):
            sched.write_text(old)
    for mode, t in runs.items():
        if mode == "text":
            continue
        hs = histograms(t)
        assert len(hs) == 1, (mode, hs)
        assert hs[0]["count"] == n, (mode, hs[0])
        _check_buckets(hs[0])
    assert histograms(runs["ms"])[0]["unit"] == "msecs" and histograms(runs["ms"])[0]["key"] == name
    assert "key" not in histograms(runs["tp_btf"])[0]  # one histogram without -D
    assert "(tp_btf mode)" in runs["tp_btf"].stderr and "(tracepoint mode" in runs["queued-tp"].stderr
    assert text_histograms(runs["text"].stdout) == {name: n}  # text agrees with JSON
    assert "     usecs               : count     distribution" in runs["text"].stdout
    # -Q includes the time queued: never less than issue -> complete in total
    assert histograms(runs["queued"])[0]["sum"] >= histograms(runs["tp_btf"])[0]["sum"] * 0.9


def test_interval_count_and_timestamps(loopdev):
    name = os.path.basename(loopdev)
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        while not stop.is_set():
            direct_writes(loopdev, 4, fsync=False)
            writes[0] += 4
            time.sleep(0.01)

    js = ToolProcess("biolatency", "--json", "-d", name, "0.4", "3")
    txt = ToolProcess("biolatency", "-T", "-d", name, "0.4", "3")
    js.ready()
    txt.ready()
    th = threading.Thread(target=writer)
    th.start()
    try:
        assert js.wait(20) == 0 and txt.wait(20) == 0  # exits by itself after 3 intervals
    finally:
        stop.set()
        th.join()
    sets = [r for r in js.json_lines() if r.get("type") == "histograms"]
    assert len(sets) == 3
    for s in sets:
        assert 0.3 < s["interval"] < 1.5
        assert s["histograms"] and s["histograms"][0]["count"] > 0  # the writer never paused that long
    assert sum(s["histograms"][0]["count"] for s in sets) <= writes[0]
    stamps = [line for line in txt.stdout.splitlines() if re.fullmatch(r"\d\d:\d\d:\d\d", line)]
    assert len(stamps) == 3


def test_doctor_lists_each_tools_mode():
    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    tools = json.loads(r.stdout)["tools"]
    assert tools["biolatency"][0]["mode"].startswith("tp_btf")
    assert tools["runqlat"][0]["mode"].startswith("tp_btf")
    assert tools["opensnoop"][0]["mode"].startswith("tracepoint")
    assert tools["tcplife"][0]["mode"].startswith("tracepoint")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["biolatency", "-d", "nosuchdisk0"], "no block device"),
        (["biolatency", "-d", "../../etc"], "not a valid value"),
        (["biolatency", "--mode", "kprobe"], "not one of"),
        (["biolatency", "0"], "minimum"),
        (["biolatency", "1", "0"], "minimum"),
        (["biolatency", "x"], "expected a number"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle):
    r = run_cli(*args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
