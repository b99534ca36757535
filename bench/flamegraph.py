"""Flame graph rendering speed: bpfscope's render_svg against flamegraph.pl, same input.

    .venv/bin/python bench/flamegraph.py [--stacks 100000] [--samples 1000000] [--keep DIR] [--minwidth0]

Generates a deterministic folded profile (a call tree of realistic shape: shared
prefixes, depths 5..60, skewed counts), times parse_folded and render_svg, and, when
`perl` and flamegraph.pl are available (FLAMEGRAPH_PL=/path/to/flamegraph.pl, or
flamegraph.pl on PATH), times flamegraph.pl on the same file and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bpfscope.render.flamegraph import render_svg  # noqa: E402
from bpfscope.render.folded import parse_folded  # noqa: E402

TARGET_SECONDS = 2.0


def generate(n_stacks: int, n_samples: int, seed: int = 1) -> dict[tuple[str, ...], int]:
    """n_stacks unique stacks whose counts sum to exactly n_samples (n_samples >= n_stacks)."""
    rng = random.Random(seed)
    comms = [f"worker-{i}" for i in range(24)] + ["postgres", "nginx", "java", "python3", "kworker/0:1"]
    user = [f"app::module{i % 37}::function_{i}_{'x' * (i % 13)}" for i in range(4000)]
    kernel = [f"{p}_{i}_[k]" for i, p in enumerate(["do_sys", "vfs_read", "tcp_sendmsg", "ext4_file"] * 300)]
    # Each frame's children are drawn from a small per-frame fan-out so prefixes repeat.
    fanout: dict[str, list[str]] = {}

    def child(frame: str, pool: list[str]) -> str:
        kids = fanout.get(frame)
        if kids is None:
            kids = fanout[frame] = [rng.choice(pool) for _ in range(rng.randint(2, 9))]
        return kids[min(int(rng.expovariate(0.8)), len(kids) - 1)]

    stacks: set[tuple[str, ...]] = set()
    while len(stacks) < n_stacks:
        frame = rng.choice(comms)
        stack = [frame]
        for _ in range(rng.randint(4, 40)):
            frame = child(frame, user)
            stack.append(frame)
        if rng.random() < 0.5:
            frame = "entry_SYSCALL_64_[k]"
            stack.append(frame)
            for _ in range(rng.randint(1, 20)):
                frame = child(frame, kernel)
                stack.append(frame)
        stacks.add(tuple(stack))
    ordered = sorted(stacks)
    rng.shuffle(ordered)
    # Skewed counts: every stack >= 1, the rest spread with a Pareto weight.
    weights = [rng.paretovariate(1.1) for _ in ordered]
    spare = n_samples - len(ordered)
    wsum = sum(weights)
    counts = [1 + int(spare * w / wsum) for w in weights]
    counts[0] += n_samples - sum(counts)
    return dict(zip(ordered, counts, strict=True))


def best_of(fn, repeat: int) -> tuple[float, object]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def find_flamegraph_pl() -> str | None:
    env = os.environ.get("FLAMEGRAPH_PL")
    if env and Path(env).is_file():
        return env
    return shutil.which("flamegraph.pl")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="write the folded input and SVG there")
    ap.add_argument("--minwidth0", action="store_true", help="also time minwidth=0 (every frame drawn; slow)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    stacks = generate(args.stacks, args.samples)
    gen_s = time.perf_counter() - t0
    text = "".join(f"{';'.join(k)} {v}\n" for k, v in stacks.items())
    frames = sum(len(k) for k in stacks)
    print(
        f"input: {len(stacks):,} unique stacks, {sum(stacks.values()):,} samples, "
        f"{frames / len(stacks):.1f} frames/stack avg, {len(text) / 1e6:.1f} MB folded "
        f"(generated in {gen_s:.2f} s)"
    )

    parse_s, parsed = best_of(lambda: parse_folded(text), args.repeat)
    render_s, svg = best_of(lambda: render_svg(parsed, title="bench"), args.repeat)
    n_frames = svg.count("<g data-s=")
    print(f"bpfscope parse_folded: {parse_s:.3f} s")
    print(
        f"bpfscope render_svg:   {render_s:.3f} s  ({n_frames:,} frames drawn, minwidth 0.1 px, "
        f"{len(svg) / 1e6:.2f} MB SVG)"
    )
    total = parse_s + render_s
    verdict = "OK" if render_s <= TARGET_SECONDS else "OVER TARGET"
    print(f"bpfscope parse+render: {total:.3f} s  (target render <= {TARGET_SECONDS:.1f} s: {verdict})")
    if args.minwidth0:
        render0_s, svg0 = best_of(lambda: render_svg(parsed, title="bench", minwidth=0), 1)
        print(
            f"bpfscope render_svg minwidth=0: {render0_s:.3f} s  ({svg0.count('<g data-s='):,} frames, "
            f"{len(svg0) / 1e6:.1f} MB SVG)"
        )
        del svg0

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.keep) if args.keep else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        folded = out_dir / "bench.folded"
        folded.write_text(text)
        if args.keep:
            (out_dir / "bench.svg").write_text(svg)
        perl = shutil.which("perl")
        fg = find_flamegraph_pl()
        if not perl or not fg:
            missing = (
                "perl not found" if not perl else "set FLAMEGRAPH_PL=/path/to/flamegraph.pl or put it on PATH"
            )
            print(f"flamegraph.pl: not available ({missing}); no comparison")
            return 0

        def run_pl():
            with open(os.devnull, "wb") as devnull:
                subprocess.run([perl, fg, "--title", "bench", str(folded)], stdout=devnull, check=True)

        pl_s, _ = best_of(run_pl, 1)
        print(f"flamegraph.pl ({fg}): {pl_s:.3f} s")
        print(f"ratio flamegraph.pl / bpfscope (parse+render): {pl_s / total:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
