"""Helpers shared by opensnoop, biolatency, runqlat and tcplife (private: not a tool).

- BCC's positional `[interval] [count]` for histogram tools, and the loop that honours them
  on top of bpfscope.histograms.interval_loop (Ctrl-C / -d still print the last interval);
- tracepoint existence checks (a tool loads only the programs whose tracepoint exists);
- block device names <-> kernel dev_t (MKDEV(major, minor) = major << 20 | minor).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from ..bpf import mounts
from ..errors import UsageError
from ..histograms import interval_loop
from ..options import Option, Options
from ..registry import RunContext
from ..results import Histogram, HistogramSet

INTERVAL_POS = Option("interval", float, None, "output interval, in seconds (default: once, at the end)",
                      nargs="?", min=0.1, max=86400, metavar="interval")
INTERVAL_FLAG = Option("interval_flag", float, None, "same as the interval argument (then a lone number is the count)",
                       ("-i", "--interval"), min=0.1, max=86400, metavar="INTERVAL", cli_only=True)
COUNT_POS = Option("count", int, None, "number of outputs (needs an interval)", nargs="?", min=1, max=10**9,
                   metavar="count")
JSON_J = Option("json", bool, False, "JSON output: one object per interval (bucket bounds, counts, sum)",
                ("-j", "--json"), cli_only=True)


def mode_option(modes: tuple[str, ...]) -> Option:
    return Option("mode", str, None, "force a hook mode instead of the best this kernel supports",
                  ("--mode",), choices=modes, metavar="{" + ",".join(modes) + "}")


def interval_count(opts: Options) -> tuple[float | None, int | None]:
    """BCC's positional `[interval] [count]`, or `-i INTERVAL [count]` (then a lone
    positional number is the count)."""
    pos, flag, count = opts.get("interval"), opts.get("interval_flag"), opts.get("count")
    if flag is None:
        interval = pos
    elif pos is None:
        interval = flag
    elif count is None and float(pos).is_integer() and pos >= 1:
        interval, count = flag, int(pos)
    else:
        raise UsageError(f"two intervals given ({pos:g} and -i {flag:g}): use one")
    if count and not interval:
        raise UsageError("count needs an interval (e.g. `1 10`: ten one-second outputs)")
    return interval, count


def intervals(
    ctx: RunContext, interval: float | None, count: int | None, read: Callable[[], list[Histogram]]
) -> Iterator[HistogramSet]:
    """interval_loop, stopping after `count` outputs (BCC's `interval count`)."""
    done = 0
    for hs in interval_loop(ctx, interval, read):
        yield hs
        done += 1
        if count and done >= count:
            return


def tracepoint_exists(category: str, name: str) -> bool:
    return os.path.isdir(os.path.join(mounts.tracefs(), "events", category, name))


# ------------------------------------------------------------------ block devices
def kdev(major: int, minor: int) -> int:
    """The kernel's dev_t encoding (what tracepoints and gendisk give)."""
    return (major << 20) | minor


def kdev_split(dev: int) -> tuple[int, int]:
    return dev >> 20, dev & 0xFFFFF


def disk_name(dev: int) -> str:
    """Name of a block device from its kernel dev_t ("vda"), or "MAJ:MIN" when gone."""
    major, minor = kdev_split(dev)
    link = f"/sys/dev/block/{major}:{minor}"
    if not os.path.exists(link):
        return f"{major}:{minor}"
    return os.path.basename(os.path.realpath(link))


def disk_dev(name: str) -> int:
    """Kernel dev_t of a whole disk named like `vda` or `/dev/vda`; partitions are refused."""
    base = os.path.basename(name.rstrip("/"))
    sysdir = f"/sys/class/block/{base}"
    if base in ("", ".", "..") or not os.path.isfile(f"{sysdir}/dev"):
        raise UsageError(f"no block device {name!r} (see /sys/class/block)")
    if os.path.exists(f"{sysdir}/partition"):
        parent = os.path.basename(os.path.dirname(os.path.realpath(sysdir)))
        raise UsageError(f"{base} is a partition; block requests are traced per disk: use {parent}")
    with open(f"{sysdir}/dev") as f:
        major, minor = (int(x) for x in f.read().strip().split(":"))
    return kdev(major, minor)
