"""Folded stacks ("brendangregg/FlameGraph" collapsed format): one line per stack.

    root;frame;...;leaf COUNT

Root first, frames joined by ';', the count after the last run of whitespace. With
`annotate`, kernel frames carry a `_[k]` suffix and JIT frames `_[j]`, as FlameGraph's
stackcollapse scripts write them; `stackcounts_from_folded` reads those suffixes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bpfscope.results import Frame, StackCounts

# Suffixes stackcollapse-perf.pl --all / --kernel --jit append (and flamegraph.pl strips).
KIND_SUFFIX = {"kernel": "_[k]", "jit": "_[j]"}
SUFFIX_KIND = {v: k for k, v in KIND_SUFFIX.items()}

# ';' separates frames and a newline separates stacks: neither may appear in a name.
_SANITIZE = str.maketrans({";": ":", "\n": " ", "\r": " "})


def frame_label(frame: Frame, annotate: bool = False) -> str:
    """The folded-format name of one frame (';' and newlines replaced)."""
    name = frame.name
    if ";" in name or "\n" in name or "\r" in name:
        name = name.translate(_SANITIZE)
    if annotate:
        suffix = KIND_SUFFIX.get(frame.kind)
        if suffix and not name.endswith(suffix):
            name += suffix
    return name


def folded_lines(sc: StackCounts, annotate: bool = False) -> dict[str, int]:
    """Stack line (without count) -> count, duplicates (same names) merged, zero counts dropped."""
    out: dict[str, int] = {}
    by_id: dict[int, str] = {}  # id(Frame) -> label; valid while sc.counts holds the frames
    get = by_id.get
    for stack, n in sc.counts.items():
        if n <= 0:
            continue
        names = [get(id(f)) for f in stack]
        if None in names:
            for i, label in enumerate(names):
                if label is None:
                    f = stack[i]
                    names[i] = by_id[id(f)] = frame_label(f, annotate)
        line = ";".join(names)
        out[line] = out.get(line, 0) + n
    return out


def format_folded(sc: StackCounts, annotate: bool = False) -> str:
    """One `root;...;leaf COUNT` line per stack, sorted, newline-terminated ("" if no stacks)."""
    lines = folded_lines(sc, annotate)
    return "".join(f"{k} {v}\n" for k, v in sorted(lines.items()))


class FoldedParseError(ValueError):
    """A line of folded input has no count at its end."""

    def __init__(self, lineno: int, line: str):
        shown = line if len(line) <= 60 else line[:57] + "..."
        super().__init__(f"line {lineno}: expected 'frame;frame;... COUNT', got {shown!r}")
        self.lineno = lineno


def _parse_count(text: str) -> int | None:
    if text.isdigit():
        return int(text)
    try:  # flamegraph.pl accepts fractional counts too
        value = float(text)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        return None
    return int(round(value))


def parse_folded(text: str | bytes | Iterable[str], strict: bool = True) -> dict[tuple[str, ...], int]:
    """Folded text -> {(root, ..., leaf): count}.

    Tolerant of blank lines, surrounding whitespace, CRLF, spaces inside frame names (the
    count is what follows the last whitespace) and duplicate stacks (summed). A non-blank
    line without a count raises FoldedParseError, unless strict=False (then it is skipped).
    Stacks with a zero count are kept out.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = text.splitlines() if isinstance(text, str) else text
    out: dict[tuple[str, ...], int] = {}
    get = out.get
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        count = _parse_count(parts[1]) if len(parts) == 2 else None
        if count is None:
            if strict:
                raise FoldedParseError(lineno, line)
            continue
        if count == 0:
            continue
        key = tuple(parts[0].split(";"))
        out[key] = get(key, 0) + count
    return out


def guess_frame(name: str) -> Frame:
    """Frame for a folded name: `_[k]` -> kernel, `_[j]` -> jit (suffix removed), `[unknown]`."""
    if len(name) > 4 and name[-4:] in SUFFIX_KIND:
        return Frame(name=name[:-4], kind=SUFFIX_KIND[name[-4:]])
    if name == "[unknown]":
        return Frame(name=name, kind="unknown")
    return Frame(name=name, kind="user")


def stackcounts_from_folded(
    folded: str | bytes | Mapping[tuple[str, ...], int] | Mapping[str, int],
    *,
    countname: str = "samples",
    palette: str = "hot",
    strict: bool = True,
    comm_root: bool = False,
) -> StackCounts:
    """StackCounts from folded text or an already parsed mapping (tuple or 'a;b;c' keys).

    Frame kinds are guessed from the stackcollapse annotations (see guess_frame); with
    comm_root, the first frame of every stack is a "comm" frame (BCC `profile -f` output).
    """
    parsed: Mapping
    if isinstance(folded, (str, bytes)):
        parsed = parse_folded(folded, strict=strict)
    else:
        parsed = folded
    cache: dict[str, Frame] = {}
    counts: dict[tuple[Frame, ...], int] = {}
    for key, n in parsed.items():
        if n <= 0:
            continue
        names = key.split(";") if isinstance(key, str) else key
        frames = []
        for name in names:
            f = cache.get(name)
            if f is None:
                f = cache[name] = guess_frame(name)
            frames.append(f)
        if comm_root and frames:
            frames[0] = Frame(name=names[0], kind="comm")
        stack = tuple(frames)
        counts[stack] = counts.get(stack, 0) + n
    return StackCounts(counts=counts, countname=countname, palette=palette)
