"""`bpfscope flamegraph`: folded stacks -> interactive SVG flame graph (like flamegraph.pl).

bpfscope flamegraph out.folded > out.svg
bpfscope profile -f | bpfscope flamegraph - --svg cpu.svg
bpfscope flamegraph --diff before.folded after.folded --svg diff.svg
"""

from __future__ import annotations

import argparse
import sys

from bpfscope.render.flamegraph import PALETTES, render_diff_svg, render_svg
from bpfscope.render.folded import FoldedParseError, parse_folded


class _InputError(Exception):
    pass


def _read(path: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except FileNotFoundError:
        raise _InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise _InputError(f"{path}: is a directory") from None
    except OSError as e:
        raise _InputError(f"{path}: {e.strerror or e}") from None
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    return data


def _load(paths: list[str]) -> dict[tuple[str, ...], int]:
    """Merged stacks of all inputs; an unparsable or empty input is an error."""
    merged: dict[tuple[str, ...], int] = {}
    for path in paths:
        name = "<stdin>" if path == "-" else path
        try:
            stacks = parse_folded(_read(path))
        except FoldedParseError as e:
            raise _InputError(f"{name}: {e} (not folded stacks?)") from None
        if not stacks:
            raise _InputError(f"{name}: no stacks (empty input)")
        for k, v in stacks.items():
            merged[k] = merged.get(k, 0) + v
    return merged


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfscope flamegraph",
        description="Render folded stacks ('frame;frame;... COUNT' lines, root first) as an "
        "interactive SVG flame graph: click to zoom, Ctrl-F to search.",
    )
    p.add_argument("folded", nargs="*", metavar="FOLDED", help="folded stack files ('-' = stdin); merged")
    p.add_argument("--svg", metavar="OUT", help="write the SVG here (default: stdout)")
    p.add_argument("--title", help="graph title (default: 'Flame Graph' / 'Differential Flame Graph')")
    p.add_argument("--subtitle", default="", help="second title line")
    p.add_argument("--width", type=int, default=1200, help="image width in pixels (default 1200)")
    p.add_argument(
        "--minwidth",
        type=float,
        default=0.1,
        help="omit frames narrower than this many pixels (default 0.1)",
    )
    p.add_argument("--inverted", action="store_true", help="icicle graph: root at the top")
    p.add_argument("--countname", default="samples", help="count unit in tooltips (default samples; e.g. us)")
    p.add_argument(
        "--colors",
        default="hot",
        choices=PALETTES,
        metavar="PALETTE",
        help=f"palette: {', '.join(PALETTES)} (default hot; cold for off-CPU)",
    )
    p.add_argument(
        "--diff",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="differential flame graph of AFTER: red = grew, blue = shrank since BEFORE",
    )
    p.add_argument("--normalize", action="store_true", help="with --diff: scale BEFORE to AFTER's total")
    p.add_argument("--negate", action="store_true", help="with --diff: swap red and blue")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else 2
    err = sys.stderr
    if args.diff and args.folded:
        print("bpfscope flamegraph: give either FOLDED files or --diff BEFORE AFTER, not both", file=err)
        return 2
    if not args.diff and not args.folded:
        print("bpfscope flamegraph: no input (give FOLDED files, '-' for stdin, or --diff)", file=err)
        return 2
    if args.diff and args.diff.count("-") > 1:
        print("bpfscope flamegraph: only one of BEFORE/AFTER can be stdin", file=err)
        return 2
    if args.svg == "-":
        args.svg = None
    try:
        if args.diff:
            before = _load([args.diff[0]])
            after = _load([args.diff[1]])
            svg = render_diff_svg(
                before,
                after,
                title=args.title or "Differential Flame Graph",
                subtitle=args.subtitle,
                width=args.width,
                minwidth=args.minwidth,
                inverted=args.inverted,
                countname=args.countname,
                normalize=args.normalize,
                negate=args.negate,
            )
        else:
            stacks = _load(args.folded)
            svg = render_svg(
                stacks,
                title=args.title or "Flame Graph",
                subtitle=args.subtitle,
                width=args.width,
                minwidth=args.minwidth,
                inverted=args.inverted,
                countname=args.countname,
                palette=args.colors,
            )
    except _InputError as e:
        print(f"bpfscope flamegraph: {e}", file=err)
        return 2
    except ValueError as e:  # bad option values (width, minwidth)
        print(f"bpfscope flamegraph: {e}", file=err)
        return 2
    try:
        if args.svg:
            with open(args.svg, "w", encoding="utf-8") as fh:
                fh.write(svg)
        else:
            sys.stdout.write(svg)
            sys.stdout.flush()
    except OSError as e:
        print(f"bpfscope flamegraph: cannot write {args.svg or 'stdout'}: {e.strerror or e}", file=err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
