"""Smoke tests for the kernel-matrix VM (scripts/kernel_matrix.py).

They run only inside the VM, where the script sets BPFSCOPE_IN_VM=1 and BPFSCOPE_VM_KERNEL to the
release it booted; elsewhere they skip (the host kernel has no kprobes, which is why the VM exists).
Placeholder until the real tool tests, which use the same ``kernelfunc`` marker, land.
"""

import os
import platform
from pathlib import Path

import pytest

IN_VM = os.environ.get("BPFSCOPE_IN_VM") == "1"

pytestmark = [
    pytest.mark.kernelfunc,
    pytest.mark.skipif(not IN_VM, reason="runs in the kernel-matrix VM: scripts/kernel_matrix.py"),
]

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def tracefs() -> Path:
    for d in TRACEFS_DIRS:
        if (d / "kprobe_events").exists():
            return d
    pytest.fail("no kprobe_events in tracefs (" + ", ".join(map(str, TRACEFS_DIRS)) + ")")


def add_kprobe_event(tfs: Path, line: str, missing_ok: bool = False) -> None:
    # O_APPEND without O_TRUNC: truncating kprobe_events deletes every kprobe event. os.open, not
    # open(..., "a"): Python's append mode seeks to the end, which tracefs refuses (EINVAL).
    fd = os.open(tfs / "kprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        if not missing_ok:
            raise
    finally:
        os.close(fd)


def test_guest_runs_the_debian_6_1_kernel():
    release = platform.release()
    assert release == os.environ.get("BPFSCOPE_VM_KERNEL"), "the VM booted another kernel than asked"
    assert release.startswith("6.1"), release


def test_kernel_has_kprobes_and_btf():
    has_pmu = Path("/sys/bus/event_source/devices/kprobe").exists()
    has_events = any((d / "kprobe_events").exists() for d in TRACEFS_DIRS)
    assert has_pmu or has_events, "no kprobe PMU and no kprobe_events: kernel without kprobes"
    # fentry programs need the kernel's BTF
    assert Path("/sys/kernel/btf/vmlinux").is_file()


def test_kprobe_event_fires(tmp_path):
    """Register a kprobe through tracefs (no BPF), make it fire, and see it in the trace buffer."""
    tfs = tracefs()
    group, event = "bpfscope_smoke", "vfs_read"
    enable = tfs / "events" / group / event / "enable"
    add_kprobe_event(tfs, f"-:{group}/{event}", missing_ok=True)  # a leftover from an aborted run
    add_kprobe_event(tfs, f"p:{group}/{event} vfs_read")
    try:
        (tfs / "trace").write_text("")  # clear the buffer
        enable.write_text("1")
        try:
            probe_file = tmp_path / "read-me"
            probe_file.write_text("x")
            for _ in range(3):
                probe_file.read_text()
        finally:
            # stop before reading `trace`: reading it with a vfs_read probe on never ends
            enable.write_text("0")
        hits = [line for line in (tfs / "trace").read_text().splitlines() if f"{event}:" in line]
        assert hits, "the vfs_read kprobe never fired"
    finally:
        add_kprobe_event(tfs, f"-:{group}/{event}")
