"""Every BPF program of every tool passes this kernel's verifier, with the default configuration
and with every boolean option switched on (the const volatile flags decide which code the
verifier sees). On the host this covers the hook types the kernel allows; in the kernel-matrix VM
(Debian 6.1, kprobes and fentry) the same check runs as a kernelfunc test over all of them, so a
program that loads on 6.18 but not on an older verifier fails there, not on a user's node.

A program whose attach target this kernel lacks (a tp_btf tracepoint renamed between versions)
is not a failure: the tools fall back to another hook. A verifier rejection is.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from bpfscope.bpf import libbpf
from bpfscope.bpf.libbpf import BpfError
from bpfscope.bpf.object import BpfObject

TOOLS = Path(__file__).resolve().parent.parent / "bpfscope" / "tools"
OBJECTS = sorted(TOOLS.glob("*.bpf.o"))
IN_VM = os.environ.get("BPFSCOPE_IN_VM") == "1"
# a kernel function every kernel has, for fentry/fexit programs whose target is set at run time
FENTRY_TARGET = "vfs_read"
# load errors that mean "this kernel has no such attach target": the hook plans fall back
MISSING_TARGET = {errno.ESRCH, errno.ENOENT}
KERNEL_FUNCTION_SECTIONS = ("fentry", "fexit", "kprobe", "kretprobe")
# programs that call a kfunc older kernels lack; their tool loads them only where kernel BTF
# has it (ttysnoop: the *_cast variants, bpf_rdonly_cast since 6.2), else the plain variants
NEEDS_KFUNC = {("ttysnoop.bpf.o", "_cast"): "bpf_rdonly_cast"}


def _load(path: Path, skip: set[str], all_flags: bool, kernel_funcs: bool) -> None:
    """Load every program of the object at once but those in skip (and the kernel-function
    ones unless kernel_funcs): one kernel BTF parse per load, which the VM makes slow."""
    with BpfObject(path) as obj:
        for prog in obj.programs():
            wanted = (prog.name not in skip and (kernel_funcs or not _kernel_func(prog.section))
                      and _kfuncs_present(path, prog.name))
            prog.autoload = wanted
            if wanted and prog.section in ("fentry", "fexit"):
                prog.set_attach_target(FENTRY_TARGET)
        if all_flags:
            for name, (_off, size, _type) in obj.btf.datasec_vars(".rodata").items():
                if size == 1:
                    obj.set_global(name, 1)
        if any(p.autoload for p in obj.programs()):
            obj.load()


def _kfuncs_present(path: Path, prog: str) -> bool:
    from bpfscope.tools.ttysnoop import kernel_has_func

    return all(kernel_has_func(kfunc) for (obj, suffix), kfunc in NEEDS_KFUNC.items()
               if path.name == obj and prog.endswith(suffix))


def _kernel_func(section: str) -> bool:
    return section.split("/")[0] in KERNEL_FUNCTION_SECTIONS


def _check(path: Path, kernel_funcs: bool) -> list[str]:
    """Load the object's programs in both configurations; the failures, described. A program
    whose attach target this kernel lacks (libbpf names it in its log) is left out and the
    rest loaded again."""
    failures = []
    for all_flags in (False, True):
        skip: set[str] = set()
        while True:
            try:
                _load(path, skip, all_flags, kernel_funcs)
                break
            except BpfError as e:
                named = set(re.findall(r"prog '(\w+)'", "\n".join(libbpf.recent_log))) - skip
                if e.errno in MISSING_TARGET and named:
                    skip |= named  # no such hook on this kernel: the tool's plan falls back
                    continue
                cfg = "all flags on" if all_flags else "defaults"
                failures.append(f"{path.name} ({cfg}): {e}")
                break
    return failures


@pytest.mark.bpf
@pytest.mark.parametrize("path", OBJECTS, ids=[p.name.removesuffix(".bpf.o") for p in OBJECTS])
def test_programs_pass_the_verifier_here(path):
    """Kernel-function programs are left to the VM test: this kernel refuses them (no kprobes,
    fentry EPERM), and the tools say so instead of loading them."""
    assert OBJECTS, "no BPF objects built: run `make bpf`"
    from bpfscope.bpf.features import Features

    f = Features()
    failures = _check(path, kernel_funcs=f.has("kprobe") and f.has("fentry"))
    assert not failures, "\n\n".join(failures)


@pytest.mark.kernelfunc
@pytest.mark.skipif(not IN_VM, reason="runs in the kernel-matrix VM: scripts/kernel_matrix.py")
def test_every_program_passes_the_verifier_of_the_vm_kernel():
    failures = [f for path in OBJECTS for f in _check(path, kernel_funcs=True)]
    assert not failures, "\n\n".join(failures)
