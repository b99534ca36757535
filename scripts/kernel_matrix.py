#!/usr/bin/env python3
"""Run a command (by default the ``kernelfunc`` tests) under Debian's stock kernel in a VM.

The host kernel here has no kprobes and refuses fentry, so the kernel-function code paths are
tested by booting Debian 12's own kernel (6.1) under qemu (TCG) with virtme-ng, over the host's
root filesystem.  The kernel package is fetched with ``apt-get download`` (never installed),
unpacked with ``dpkg-deb -x`` into a cache and reused between runs.

    .venv/bin/python scripts/kernel_matrix.py                    # kernelfunc tests, newest 6.1
    .venv/bin/python scripts/kernel_matrix.py --cmd 'uname -r'   # any shell command
    .venv/bin/python scripts/kernel_matrix.py --list             # cached kernels

The default command is `python -m pytest -m kernelfunc -p no:cacheprovider -q FILES` with
BPFSCOPE_REQUIRE_BPF=1, where FILES are the test files that hold kernelfunc tests (collected on the
host, natively) and the hypothesis/schemathesis plugins are not loaded: under TCG over 9p every
import is slow, and collecting all of tests/ with every plugin costs minutes (--full-collect does it
anyway).  The guest sees the host's root read-only, with tmpfs overlays on /etc, /usr, /var, /tmp,
/home, the project tree and $HOME (guest writes never reach the host), plus one shared read-write
run directory for the command's output and exit status.

The script's exit status is the guest command's exit status, read back from a file the guest
writes into a shared read-write directory (virtme-ng's own exit-code channel needs udev in the
guest and is not relied on).  The script's own failures print one line and exit with
124 (boot or command timeout) or 125 (anything else: package not found, qemu missing...).

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
SERIES_DEFAULT = "6.1"
FLAVOUR = "amd64"  # the plain flavour has 9p/virtio-fs; -cloud-amd64 lacks 9p
EXIT_TIMEOUT = 124
EXIT_ERROR = 125

# host binary -> Debian package that provides it
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",  # the emulator
    "depmod": "kmod",  # modules.dep for the unpacked modules
    "modprobe": "kmod",  # module loading inside the guest (it runs the host's userland)
    "busybox": "busybox-static",  # virtme-ng's initramfs (9p/virtio are modules in Debian)
    "file": "file",  # virtme-ng reads the kernel version from the image with file(1)
}
# virtme-ng looks for any of these names
BUSYBOX_NAMES = ("busybox-static", "busybox.static", "busybox")


class MatrixError(Exception):
    """A one-line, user-facing error."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


def log(msg: str) -> None:
    print(f"kernel-matrix: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(cmd, check=False, **kw)
    except FileNotFoundError as e:
        raise MatrixError(f"{cmd[0]} not found") from e


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- host packages


def is_root() -> bool:
    return os.geteuid() == 0


_apt_updated = False


def apt_update() -> None:
    global _apt_updated
    if _apt_updated or not is_root():
        return
    log("apt-get update")
    r = run(["apt-get", "update"])
    _apt_updated = True
    if r.returncode != 0:
        raise MatrixError(f"apt-get update failed: {last_line(r.stderr or r.stdout)}")


def which_tool(name: str) -> str | None:
    if name == "busybox":
        return next((p for n in BUSYBOX_NAMES if (p := shutil.which(n))), None)
    return shutil.which(name)


def ensure_host_tools(install: bool) -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not which_tool(tool)})
    if not missing:
        return
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if not install or not is_root():
        qemu = " (qemu-system-x86_64 missing)" if "qemu-system-x86" in missing else ""
        raise MatrixError(f"missing host packages{qemu}: run `{' '.join(cmd)}`")
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = run(cmd, env=env)
    if r.returncode != 0 and "Unable to locate package" in (r.stderr + r.stdout):
        apt_update()
        r = run(cmd, env=env)
    if r.returncode != 0:
        raise MatrixError(f"apt-get install {' '.join(missing)} failed: {last_line(r.stderr or r.stdout)}")
    still = sorted(tool for tool in HOST_TOOLS if not which_tool(tool))
    if still:
        raise MatrixError(f"still missing after apt-get install: {', '.join(still)}")


def find_venv() -> Path:
    """The venv whose virtme-ng (vng) and python we use."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix)
    return PROJECT / ".venv"


def ensure_vng(venv: Path, install: bool) -> Path:
    vng = venv / "bin" / "vng"
    if vng.exists():
        return vng
    py = venv / "bin" / "python"
    if not py.exists():
        raise MatrixError(f"no virtualenv at {venv} (create it and `pip install -e .[dev]`)")
    if not install:
        raise MatrixError(f"virtme-ng is not installed in {venv}: run `{py} -m pip install virtme-ng`")
    log(f"installing virtme-ng into {venv}")
    r = run([str(py), "-m", "pip", "install", "-q", "virtme-ng>=1.30"])
    if r.returncode != 0 or not vng.exists():
        raise MatrixError(f"pip install virtme-ng failed: {last_line(r.stderr or r.stdout)}")
    return vng


# --------------------------------------------------------------------------- kernel packages

# accepted --kernel-version spellings: 6.1 (newest of a series), 6.1.0-56, 6.1.0-56-amd64,
# linux-image-6.1.0-56-amd64[-unsigned]
_ABI_RE = re.compile(r"^(?:linux-image-)?(\d+\.\d+\.\d+-\d+)(?:-" + FLAVOUR + r")?(?:-unsigned)?$")
_SERIES_RE = re.compile(r"^\d+\.\d+$")


def abi_key(abi: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", abi))


def apt_kernel_abis(series: str) -> list[str]:
    """ABIs ('6.1.0-56') of the kernel packages of `series` that apt knows, oldest first."""
    r = run(["apt-cache", "pkgnames", f"linux-image-{series}."])
    pat = re.compile(rf"^linux-image-({re.escape(series)}\.\d+-\d+)-{FLAVOUR}(?:-unsigned)?$")
    abis = {m.group(1) for line in r.stdout.split() if (m := pat.match(line))}
    return sorted(abis, key=abi_key)


def kernel_release(abi: str) -> str:
    return f"{abi}-{FLAVOUR}"


def cache_root() -> Path:
    env = os.environ.get("BPFSCOPE_KERNEL_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "bpfscope" / "kernels"


@dataclass
class CachedKernel:
    release: str
    root: Path
    meta: dict

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def vmlinux(self) -> Path:
        """Uncompressed ELF image: qemu boots it through its PVH entry, skipping the xz
        decompression that costs ~4-6 s under TCG."""
        return self.root / "boot" / f"vmlinux-{self.release}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def cached_kernels() -> list[CachedKernel]:
    root = cache_root()
    out = []
    if root.is_dir():
        for d in root.iterdir():
            meta_file = d / ".bpfscope-kernel.json"
            if d.is_dir() and meta_file.is_file():
                try:
                    meta = json.loads(meta_file.read_text())
                except (OSError, ValueError):
                    continue
                out.append(CachedKernel(d.name, d, meta))
    return sorted(out, key=lambda k: abi_key(k.release))


def resolve_abi(spec: str | None) -> str:
    """Turn --kernel-version into an ABI such as '6.1.0-56'."""
    spec = (spec or SERIES_DEFAULT).strip()
    m = _ABI_RE.match(spec)
    if m:
        return m.group(1)
    if spec == "latest":
        spec = SERIES_DEFAULT
    if not _SERIES_RE.match(spec):
        raise MatrixError(f"bad --kernel-version {spec!r} (use e.g. 6.1, 6.1.0-56 or 6.1.0-56-amd64)")
    abis = apt_kernel_abis(spec)
    if not abis:
        apt_update()
        abis = apt_kernel_abis(spec)
    if abis:
        return abis[-1]
    # apt knows nothing (no lists, no network): fall back on the newest cached kernel
    cached = [k for k in cached_kernels() if k.release.startswith(spec + ".")]
    if cached:
        release = cached[-1].release
        log(f"apt knows no linux-image-{spec}.*-{FLAVOUR} package; using cached {release}")
        return release[: -len("-" + FLAVOUR)]
    raise MatrixError(f"kernel package not found: apt knows no linux-image-{spec}.*-{FLAVOUR} package")


def apt_download(abi: str, dest: Path) -> Path:
    """apt-get download the kernel package (signed, else -unsigned) into dest."""
    names = [f"linux-image-{abi}-{FLAVOUR}", f"linux-image-{abi}-{FLAVOUR}-unsigned"]
    errors = []
    for attempt in range(2):
        for name in names:
            # APT::Sandbox::User=root: the _apt user cannot write into our cache dir
            r = run(["apt-get", "download", "-o", "APT::Sandbox::User=root", name], cwd=dest)
            debs = sorted(dest.glob(f"{name}_*.deb"))
            if r.returncode == 0 and debs:
                return debs[-1]
            errors.append(f"{name}: {last_line(r.stderr or r.stdout)}")
        if attempt == 0 and is_root():
            apt_update()  # stale lists point at files the mirror no longer has
    known = ", ".join(apt_kernel_abis(".".join(abi.split(".")[:2]))) or "none"
    raise MatrixError(
        f"kernel package not found: linux-image-{abi}-{FLAVOUR} ({errors[-1]}); apt knows: {known}"
    )


def has_pvh_note(elf: bytes) -> bool:
    """True if a 64-bit little-endian ELF has the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for n in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + n * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        off, stop = p_offset, p_offset + p_filesz
        while off + 12 <= stop:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, off)
            name = elf[off + 12 : off + 12 + namesz].rstrip(b"\x00")
            if name == b"Xen" and ntype == 18:
                return True
            off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract_vmlinux(k: CachedKernel) -> None:
    """Decompress boot/vmlinuz (a bzImage with an xz or gzip payload) into boot/vmlinux, kept only
    if qemu can boot it directly (PVH entry note)."""
    if k.vmlinux.is_file():
        return
    data = k.vmlinuz.read_bytes()
    decoders = {
        b"\xfd7zXZ\x00": lambda b: lzma.LZMADecompressor().decompress(b),
        b"\x1f\x8b\x08": lambda b: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b),
    }
    for magic, decode in decoders.items():
        i = data.find(magic)
        while i >= 0:
            try:
                elf = decode(data[i:])
            except (lzma.LZMAError, zlib.error):
                elf = b""
            if has_pvh_note(elf):
                tmp = k.vmlinux.with_name(k.vmlinux.name + ".tmp")
                tmp.write_bytes(elf)
                tmp.rename(k.vmlinux)
                return
            i = data.find(magic, i + 1)


def fetch_kernel(abi: str) -> CachedKernel:
    release = kernel_release(abi)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once fetch once
        for k in cached_kernels():
            if k.release == release and k.vmlinuz.is_file():
                extract_vmlinux(k)
                return k
        t0 = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".fetch-{release}-", dir=root))
        try:
            log(f"fetching linux-image-{release} (apt-get download)")
            deb = apt_download(abi, work)
            pkg_version = run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
            tree = work / "tree"
            r = run(["dpkg-deb", "-x", str(deb), str(tree)])
            if r.returncode != 0:
                raise MatrixError(f"dpkg-deb -x {deb.name} failed: {last_line(r.stderr)}")
            k = CachedKernel(release, tree, {})
            if not k.vmlinuz.is_file() or not k.moddir.is_dir():
                raise MatrixError(f"{deb.name} has no boot/vmlinuz-{release} or lib/modules/{release}")
            # the .deb ships no modules.dep (its postinst runs depmod): make it once, here
            r = run(["depmod", "-a", "-b", str(tree), release])
            if r.returncode != 0 or not (k.moddir / "modules.dep").is_file():
                raise MatrixError(f"depmod failed for {release}: {last_line(r.stderr)}")
            extract_vmlinux(k)
            meta = {
                "release": release,
                "package": deb.name.split("_")[0],
                "version": pkg_version,
                "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tree / ".bpfscope-kernel.json").write_text(json.dumps(meta, indent=1) + "\n")
            final = root / release
            if final.exists():
                shutil.rmtree(final)
            tree.rename(final)
            log(f"cached {release} ({pkg_version}) in {final} [{time.monotonic() - t0:.1f}s]")
            return CachedKernel(release, final, meta)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def dir_size(path: Path) -> int:
    total = 0
    for dp, _dn, fns in os.walk(path):
        for fn in fns:
            try:
                total += os.lstat(os.path.join(dp, fn)).st_size
            except OSError:
                pass
    return total


def list_kernels() -> int:
    kernels = cached_kernels()
    print(f"cache: {cache_root()}")
    if not kernels:
        print("  (no cached kernels)")
    for k in kernels:
        size = dir_size(k.root) / 2**20
        print(
            f"  {k.release:<22} {k.meta.get('package', '?'):<32} {k.meta.get('version', '?'):<12} "
            f"{size:6.0f} MiB  fetched {k.meta.get('fetched', '?')}"
        )
    abis = apt_kernel_abis(SERIES_DEFAULT)
    if abis:
        print(f"newest {SERIES_DEFAULT} kernel apt knows: {kernel_release(abis[-1])}")
    return 0


# --------------------------------------------------------------------------- the VM run

# Virtme-ng already overlays these on the guest side (writes go to guest tmpfs).
VIRTME_OVERLAID = ("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp")

RUNNER = """\
#!/bin/sh
# written by scripts/kernel_matrix.py; runs inside the guest
R={rundir}
{{ cat /proc/uptime; uname -r; }} > "$R/started.tmp" && mv "$R/started.tmp" "$R/started"
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
[ -e /sys/kernel/btf/vmlinux ] || echo "kernel-matrix: warning: no /sys/kernel/btf/vmlinux in the guest" >&2
{exports}
cd {project} || exit 125
/bin/sh "$R/cmd.sh" </dev/null >"$R/output.log" 2>&1
rc=$?
echo "$rc" > "$R/status.tmp" && mv "$R/status.tmp" "$R/status"
sync
exit "$rc"
"""


@dataclass
class Result:
    release: str
    status: int
    boot_s: float = 0.0  # vng start -> command start (host clock)
    guest_uptime_s: float = 0.0  # guest uptime when the command started
    cmd_s: float = 0.0  # command start -> VM gone
    total_s: float = 0.0  # including fetch
    fetch_s: float = 0.0
    error: str = ""
    output: bytearray = field(default_factory=bytearray)  # what the command printed


def under(path: str, dirs: tuple[str, ...]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in dirs)


def guest_env(venv: Path, release: str, extra: list[str]) -> dict[str, str]:
    env = {
        "PATH": f"{venv}/bin:"
        + os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "BPFSCOPE_REQUIRE_BPF": "1",
        "BPFSCOPE_IN_VM": "1",
        "BPFSCOPE_VM_KERNEL": release,
        "VIRTUAL_ENV": str(venv),
    }
    for k, v in os.environ.items():
        if k.startswith("BPFSCOPE_") and k != "BPFSCOPE_KERNEL_CACHE":
            env.setdefault(k, v)
    if "CI" in os.environ:
        env["CI"] = os.environ["CI"]
    for item in extra:
        k, sep, v = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise MatrixError(f"bad --env {item!r} (want NAME=VALUE)")
        env[k] = v
    return env


def kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def boot_and_run(kernel: CachedKernel, args, venv: Path, vng: Path) -> Result:
    res = Result(kernel.release, EXIT_ERROR)
    runs = cache_root() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix=f"{kernel.release}-", dir=runs))
    try:
        env = guest_env(venv, kernel.release, args.env)
        exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
        (rundir / "cmd.sh").write_text(args.cmd + "\n")
        (rundir / "run.sh").write_text(
            RUNNER.format(rundir=shlex.quote(str(rundir)), project=shlex.quote(str(PROJECT)), exports=exports)
        )
        image = kernel.vmlinux if kernel.vmlinux.is_file() and not args.bzimage else kernel.vmlinuz
        vng_cmd = [
            str(vng),
            "--run",
            str(image),
            "--force-9p",  # bookworm has no Rust virtiofsd; qemu's C one fails after a 4 s wait
            "--memory",
            args.memory,
            "--cpus",
            str(args.cpus),
            "--rwdir",
            str(rundir),  # status + output, shared with the host
            "--name",
            "bpfscope-kmatrix",
        ]
        if args.accel == "tcg":
            vng_cmd.append("--disable-kvm")
        # Guest-writable (tmpfs overlay, host untouched) project tree and HOME: the root is read-only.
        for d in dict.fromkeys([str(PROJECT), env["HOME"]]):
            if os.path.isdir(d) and not under(d, VIRTME_OVERLAID) and d != "/":
                vng_cmd += ["--overlay-rwdir", d]
        if args.verbose:
            vng_cmd.append("--verbose")
        vng_cmd += ["--exec", f"/bin/sh {shlex.quote(str(rundir / 'run.sh'))}"]

        host_env = dict(os.environ)
        host_env["PATH"] = f"{venv}/bin:" + host_env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        vng_log = rundir / "vng.log"
        output = rundir / "output.log"
        started_f, status_f = rundir / "started", rundir / "status"
        if args.verbose:
            log("$ " + shlex.join(vng_cmd))
        log(f"booting {kernel.release} ({args.accel}, {args.cpus} cpus, {args.memory}); command: {args.cmd}")

        t0 = time.monotonic()
        with open(vng_log, "wb") as vlog:
            sink = None if args.verbose else vlog
            proc = subprocess.Popen(
                vng_cmd,
                cwd=PROJECT,
                env=host_env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )
            t_cmd = None
            pos = 0
            out = sys.stdout.buffer

            def drain() -> None:
                nonlocal pos
                try:
                    with open(output, "rb") as f:
                        f.seek(pos)
                        chunk = f.read()
                except FileNotFoundError:
                    return
                if chunk:
                    pos += len(chunk)
                    res.output += chunk
                    out.write(chunk)
                    out.flush()

            try:
                while True:
                    done = proc.poll() is not None
                    if t_cmd is None and started_f.exists():
                        t_cmd = time.monotonic()
                        res.boot_s = t_cmd - t0
                        info = started_f.read_text().split()
                        res.guest_uptime_s = float(info[0]) if info else 0.0
                        guest_rel = info[2] if len(info) > 2 else "?"
                        log(
                            f"guest up: uname -r = {guest_rel}; boot {res.boot_s:.1f}s "
                            f"(guest uptime {res.guest_uptime_s:.1f}s)"
                        )
                        if guest_rel != kernel.release:
                            kill_group(proc)
                            raise MatrixError(f"guest runs kernel {guest_rel}, expected {kernel.release}")
                    drain()
                    if done:
                        break
                    now = time.monotonic()
                    if t_cmd is None and now - t0 > args.boot_timeout:
                        last = tail(vng_log)  # before the kill adds qemu's "terminating on signal"
                        kill_group(proc)
                        raise MatrixError(
                            f"boot timeout: {kernel.release} did not start the command within "
                            f"{args.boot_timeout:.0f}s (console: {last})",
                            EXIT_TIMEOUT,
                        )
                    if t_cmd is not None and now - t_cmd > args.timeout:
                        kill_group(proc)
                        drain()
                        raise MatrixError(
                            f"command timeout: still running after {args.timeout:.0f}s in {kernel.release}",
                            EXIT_TIMEOUT,
                        )
                    time.sleep(0.2)
            except BaseException:
                kill_group(proc)
                raise
        t_end = time.monotonic()
        res.cmd_s = t_end - t_cmd if t_cmd else 0.0
        if t_cmd is None:
            raise MatrixError(
                f"VM exited (vng status {proc.returncode}) before the command started: {tail(vng_log)}"
            )
        try:
            res.status = int(status_f.read_text().strip())
        except (OSError, ValueError):
            raise MatrixError(
                f"the guest reported no exit status (crash? vng status {proc.returncode}): {tail(vng_log)}"
            ) from None
        return res
    finally:
        if args.keep_run_dir:
            log(f"run dir kept: {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)


def tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log; rerun with --verbose)"


# --------------------------------------------------------------------------- main


# Under TCG over 9p every Python import costs ~10-100x its native time. These two pytest plugins
# (autoloaded from the dev extras) import hypothesis and schemathesis at startup: minutes in the VM,
# and no kernelfunc test uses them.
HEAVY_PLUGINS = ("hypothesispytest", "schemathesis")


def pytest_base(venv: Path) -> list[str]:
    return [f"{venv}/bin/python", "-m", "pytest", "-m", "kernelfunc", "-p", "no:cacheprovider"]


def host_collect(venv: Path, extra: list[str]) -> list[str] | None:
    """Files holding the kernelfunc tests, collected on the host (seconds natively, minutes in the VM)."""
    t0 = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in ("BPFSCOPE_IN_VM", "BPFSCOPE_VM_KERNEL")}
    try:
        r = subprocess.run(
            [*pytest_base(venv), "--co", "-q", *extra, "tests/"],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    files = list(
        dict.fromkeys(
            line.split("::")[0]
            for line in r.stdout.splitlines()
            if "::" in line
            and line.split("::")[0].endswith(".py")
            and (PROJECT / line.split("::")[0]).is_file()
        )
    )
    if r.returncode != 0 or not files:
        return None
    log(f"kernelfunc tests in {len(files)} files (host collection {time.monotonic() - t0:.1f}s)")
    return files


# Why the default command gets a second VM: under TCG, attaching fentry/kprobes patches kernel
# text while the other vCPU runs it, and one run in three or four wedged the guest (a vCPU
# spinning at 100%, every test stopped, or one process stuck for minutes), at a different test
# each time, never on the same test twice and never on real hardware. A second boot runs the
# failed tests (the whole command after a timeout); a test that fails twice fails the run, and
# the first failure stays in the log.
RETRY_WHY = "TCG text-patching stalls"
_FAILED = re.compile(rb"^(?:FAILED|ERROR) (\S+::\S+)", re.M)


def failed_tests(output: bytes) -> list[str]:
    """Node ids pytest listed as FAILED / ERROR in its short summary."""
    return list(dict.fromkeys(m.decode(errors="replace") for m in _FAILED.findall(output)))


def retry_cmd(venv: Path, args: argparse.Namespace, res: Result | None) -> str:
    """The command for a retry: the failed tests when pytest named them, else everything."""
    ids = failed_tests(bytes(res.output)) if res is not None else []
    if not ids:
        return args.default_cmd
    blocked = [a for name in HEAVY_PLUGINS for a in ("-p", f"no:{name}")]
    return shlex.join([*pytest_base(venv), *blocked, "-q", *ids])


def default_cmd(venv: Path, args: argparse.Namespace) -> str:
    extra = shlex.split(args.pytest_args)
    if args.full_collect:
        return shlex.join([*pytest_base(venv), "tests/", "-q", *extra])
    files = host_collect(venv, extra) or ["tests/"]
    blocked = [a for name in HEAVY_PLUGINS for a in ("-p", f"no:{name}")]
    return shlex.join([*pytest_base(venv), *blocked, "-q", *extra, *files])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Boot Debian's stock kernel under qemu (virtme-ng) over the host root fs and run a command "
        "(default: the kernelfunc tests). Exit status: the guest command's; 124 timeout; 125 error."
    )
    p.add_argument(
        "--kernel-version",
        action="append",
        metavar="V",
        help=f"kernel to boot: {SERIES_DEFAULT} (newest of a series, default), 6.1.0-56, "
        f"6.1.0-56-amd64; repeat for several kernels",
    )
    p.add_argument(
        "--cmd",
        help="shell command run in the guest, in the project root (default: the kernelfunc tests: "
        "`python -m pytest -m kernelfunc -p no:cacheprovider -q FILES`, FILES being the test files "
        "that hold kernelfunc tests, collected on the host, and the hypothesis/schemathesis plugins off)",
    )
    p.add_argument(
        "--pytest-args", default="", metavar="ARGS", help="extra pytest arguments for the default command"
    )
    p.add_argument(
        "--full-collect",
        action="store_true",
        help="default command as `python -m pytest -m kernelfunc -p no:cacheprovider tests/ -q`: "
        "collects every test module in the guest, with every plugin (minutes slower under TCG)",
    )
    p.add_argument("--timeout", type=float, default=900,
                   help="seconds the command may run (default 900; the kernelfunc tests take 2-5 min)")
    p.add_argument("--retries", type=int, default=1,
                   help="with the default command: after a failure or timeout, boot a fresh VM and run the "
                   "failed tests again, at most this many times (default 1; see RETRY_WHY)")
    p.add_argument(
        "--boot-timeout",
        type=float,
        default=300,
        help="seconds from VM start until the command starts (default 300)",
    )
    p.add_argument("--memory", default="2G", help="guest memory (default 2G)")
    p.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
    p.add_argument(
        "--accel",
        choices=("tcg", "kvm"),
        default="tcg",
        help="tcg (default: KVM does not work on these machines) or kvm",
    )
    p.add_argument(
        "--bzimage",
        action="store_true",
        help="boot the compressed vmlinuz (bzImage entry) instead of the cached ELF vmlinux (PVH entry)",
    )
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra guest environment")
    p.add_argument("--list", action="store_true", help="list cached kernels and exit")
    p.add_argument("--keep-going", action="store_true", help="with several kernels, go on after a failure")
    p.add_argument("--no-install", action="store_true", help="never apt-get/pip install missing tools")
    p.add_argument(
        "--keep-run-dir", action="store_true", help="keep the shared run dir (output.log, vng.log)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show the vng command and the guest console")
    return p.parse_args(argv)


def run_with_retries(kernel: CachedKernel, args: argparse.Namespace, venv: Path, vng: Path, retries: int) -> Result:
    """boot_and_run, and on a failure or a command timeout up to `retries` fresh boots that run
    again what failed (see RETRY_WHY). The command is put back afterwards."""
    cmd = args.cmd
    try:
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                res = boot_and_run(kernel, args, venv, vng)
            except MatrixError as e:
                if last or e.code != EXIT_TIMEOUT or "command timeout" not in str(e):
                    raise
                log(f"attempt {attempt + 1}: {e}; booting a fresh VM for everything ({RETRY_WHY})")
                args.cmd = args.default_cmd
                continue
            if res.status == 0 or last:
                if attempt:
                    log(f"attempt {attempt + 1} (retry after {RETRY_WHY}): exit {res.status}")
                return res
            args.cmd = retry_cmd(venv, args, res)
            log(f"attempt {attempt + 1}: exit {res.status}; booting a fresh VM to run again: {args.cmd}")
        raise AssertionError("unreachable")
    finally:
        args.cmd = cmd


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        return list_kernels()
    venv = find_venv()
    ensure_host_tools(install=not args.no_install)
    vng = ensure_vng(venv, install=not args.no_install)
    retries = 0
    args.default_cmd = None
    if args.cmd is None:
        args.cmd = args.default_cmd = default_cmd(venv, args)
        retries = max(args.retries, 0)

    results: list[Result] = []
    specs = args.kernel_version or [SERIES_DEFAULT]
    for spec in specs:
        t0 = time.monotonic()
        release = "?"
        try:
            abi = resolve_abi(spec)
            release = kernel_release(abi)
            kernel = fetch_kernel(abi)
            fetch_s = time.monotonic() - t0
            res = run_with_retries(kernel, args, venv, vng, retries)
            res.fetch_s = fetch_s
        except MatrixError as e:
            if len(specs) == 1:
                raise
            log(f"error: {e}")
            res = Result(release, e.code, error=str(e))
        res.total_s = time.monotonic() - t0
        results.append(res)
        if not res.error:
            log(
                f"{res.release}: exit {res.status}; boot {res.boot_s:.1f}s, command {res.cmd_s:.1f}s, "
                f"total {res.total_s:.1f}s (fetch {res.fetch_s:.1f}s)"
            )
        if res.status != 0 and not args.keep_going:
            break
    if len(specs) > 1:
        for r in results:
            log(f"  {r.release:<20} {'ok' if r.status == 0 else f'FAILED ({r.status})'}")
    failed = [r.status for r in results if r.status != 0]
    return failed[0] if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MatrixError as e:
        log(f"error: {e}")
        sys.exit(e.code)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
