"""Flame graph SVG, folded format and `bpfscope flamegraph` (pure Python, no BPF)."""

from __future__ import annotations

import io
import re
import sys
import xml.etree.ElementTree as ET

import pytest

from bpfscope.commands import flamegraph as cmd
from bpfscope.render.flamegraph import parse_rgb, render_diff_svg, render_stackcounts, render_svg
from bpfscope.render.folded import (
    FoldedParseError,
    format_folded,
    parse_folded,
    stackcounts_from_folded,
)
from bpfscope.results import Frame, StackCounts

NS = "{http://www.w3.org/2000/svg}"
XPAD = 10

STACKS = {
    ("bash", "main", "read_input", "read"): 300,
    ("bash", "main", "execute", "fork"): 150,
    ("bash", "main", "execute", "wait"): 50,
    ("bash", "main"): 20,
    ("sshd", "main", "poll"): 480,
}


# ------------------------------------------------------------------------ helpers
def frames_of(svg: str) -> list[dict]:
    """Every drawn frame: name, count, title, rect attributes, label, fill, group classes."""
    root = ET.fromstring(svg)
    group = next(g for g in root.iter(NS + "g") if g.get("id") == "frames")
    out = []
    for g in group.findall(NS + "g"):
        title = g.find(NS + "title").text
        rect = g.find(NS + "rect")
        text = g.find(NS + "text")
        out.append(
            {
                "name": re.sub(r" \([^()]*\)$", "", title),
                "title": title,
                "s": int(g.get("data-s")),
                "n": int(g.get("data-n")),
                "x": float(rect.get("x")),
                "y": float(rect.get("y")),
                "w": float(rect.get("width")),
                "fill": rect.get("fill"),
                "label": text.text or "",
            }
        )
    return out


def by_name(frames: list[dict], name: str) -> dict:
    found = [f for f in frames if f["name"] == name]
    assert len(found) == 1, (name, found)
    return found[0]


def plot_width(width: int = 1200) -> float:
    return width - 2 * XPAD


# ------------------------------------------------------------------- SVG structure
def test_svg_is_xml_with_frames_and_root():
    svg = render_svg(STACKS)
    root = ET.fromstring(svg)
    assert root.tag == NS + "svg"
    assert root.get("width") == "1200"
    frames = frames_of(svg)
    total = sum(STACKS.values())
    all_ = by_name(frames, "all")
    assert all_["n"] == total and all_["s"] == 0
    assert all_["title"] == f"all ({total:,} samples, 100.00%)"
    assert all_["w"] == pytest.approx(plot_width(), abs=0.01)
    # "main" exists under bash and under sshd: two frames, each with its own count
    mains = sorted(f["n"] for f in frames if f["name"] == "main")
    assert mains == [480, 520]


def test_widths_proportional_to_counts():
    frames = frames_of(render_svg(STACKS))
    total = sum(STACKS.values())
    for name, count in (("read", 300), ("fork", 150), ("poll", 480)):
        f = by_name(frames, name)
        assert f["n"] == count
        assert f["w"] == pytest.approx(count * plot_width() / total, abs=0.011)
    # ratios of widths are ratios of counts
    read, fork, wait = (by_name(frames, n)["w"] for n in ("read", "fork", "wait"))
    assert read / fork == pytest.approx(2.0, rel=1e-3)
    assert fork / wait == pytest.approx(3.0, rel=1e-3)


def test_tooltip_percent_and_countname():
    svg = render_svg(STACKS, countname="us")
    f = by_name(frames_of(svg), "poll")
    assert f["title"] == "poll (480 us, 48.00%)"


def test_children_inside_parent_and_sorted():
    frames = frames_of(render_svg(STACKS))
    execute = by_name(frames, "execute")
    fork, wait = by_name(frames, "fork"), by_name(frames, "wait")
    assert execute["n"] == 200
    # alphabetical siblings, left to right, inside the parent's span
    assert execute["s"] <= fork["s"] < wait["s"] < execute["s"] + execute["n"]
    assert fork["s"] + fork["n"] == wait["s"]
    # non-inverted: a child sits above (smaller y) its parent
    assert fork["y"] < execute["y"]
    bash, sshd = by_name(frames, "bash"), by_name(frames, "sshd")
    assert bash["s"] < sshd["s"]


def test_labels_truncated_to_fit():
    long = "a_really_long_function_name_" * 3
    stacks = {("x", long): 1, ("y",): 10_000}
    f = by_name(frames_of(render_svg(stacks, minwidth=0)), long)
    assert f["label"] == ""  # 0.1 px wide: no room for text
    stacks = {("x", long): 100}
    f = by_name(frames_of(render_svg(stacks)), long)
    assert f["label"] == long  # the full width fits it
    f = by_name(frames_of(render_svg(stacks, width=300)), long)
    assert f["label"].endswith("..") and long.startswith(f["label"][:-2])


def test_zoom_and_search_script_present():
    svg = render_svg(STACKS)
    root = ET.fromstring(svg)
    script = root.find(NS + "script").text
    for needle in (
        "function zoom(",
        "function unzoom(",
        "function search(",
        "Matched: ",
        "prompt(",
        "ctrlKey",
        "keyCode===70",
        "new RegExp",
    ):
        assert needle in script, needle
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    assert {"frames", "unzoom", "search", "matched", "details", "title"} <= ids
    assert "Reset Zoom" in svg
    # configuration the script reads
    assert "total:1000" in script and "w:1180" in script


def test_no_external_urls():
    svg = render_svg(STACKS, title="t")
    urls = re.findall(r"https?://[^\s\"'<>]*", svg)
    assert urls == ["http://www.w3.org/2000/svg"]
    assert "xlink" not in svg and "DOCTYPE" not in svg
    for other in (render_diff_svg(STACKS, STACKS), render_svg({}), render_svg(STACKS, palette="cold")):
        assert re.findall(r"https?://[^\s\"'<>]*", other) == ["http://www.w3.org/2000/svg"]


def test_escaping_and_control_characters():
    stacks = {("main", "std::vector<int>::push_back&co", "bad\x00\x07name"): 5}
    svg = render_svg(stacks)
    names = {f["name"] for f in frames_of(svg)}  # parses despite <, &, NUL
    assert "std::vector<int>::push_back&co" in names
    assert "bad  name" in names


def test_title_option_and_empty_input():
    svg = render_svg(STACKS, title="CPU <busy> & co")
    root = ET.fromstring(svg)
    title = next(e for e in root.iter(NS + "text") if e.get("id") == "title")
    assert title.text == "CPU <busy> & co"
    empty = render_svg({})
    ET.fromstring(empty)
    assert "ERROR: no stacks" in empty and frames_of(empty) == []


def test_width_option_and_bad_values():
    svg = render_svg(STACKS, width=600)
    assert ET.fromstring(svg).get("width") == "600"
    assert by_name(frames_of(svg), "all")["w"] == pytest.approx(580, abs=0.01)
    with pytest.raises(ValueError):
        render_svg(STACKS, width=50)
    with pytest.raises(ValueError):
        render_svg(STACKS, minwidth=-1)
    with pytest.raises(ValueError):
        render_svg(STACKS, palette="rainbow")


# ------------------------------------------------------------------------ minwidth
def test_minwidth_omits_narrow_frames_but_keeps_their_samples():
    stacks = {("main", "big"): 10_000}
    for i in range(50):
        stacks[("main", f"tiny{i:02d}", "deeper")] = 1
    total = sum(stacks.values())
    everything = frames_of(render_svg(stacks, minwidth=0))
    assert len(everything) == 2 + 1 + 50 * 2  # all, main, big, tiny*, deeper*
    pruned = frames_of(render_svg(stacks))  # default 0.1 px: 1 sample = 0.117 px stays
    assert len(pruned) == len(everything)
    pruned = frames_of(render_svg(stacks, minwidth=1.0))
    names = {f["name"] for f in pruned}
    assert names == {"all", "main", "big"}
    main = by_name(pruned, "main")
    assert main["n"] == total  # the omitted frames' samples still count in their parent
    assert main["w"] == pytest.approx(plot_width(), abs=0.01)
    # the threshold: a frame exactly minwidth wide stays
    one_px = total / plot_width()
    assert len(frames_of(render_svg(stacks, minwidth=1 / one_px))) == len(everything)


def test_minwidth_keeps_huge_graphs_small():
    stacks = {("root", f"f{i}", f"g{i}", f"h{i}"): 1 for i in range(20_000)}
    stacks[("root", "hot")] = 20_000
    svg = render_svg(stacks)
    frames = frames_of(svg)
    assert len(frames) == 3  # all, root, hot: every f*/g*/h* is 0.03 px wide
    assert by_name(frames, "root")["n"] == 40_000


# ------------------------------------------------------------------------ inverted
def test_inverted_icicle():
    normal = frames_of(render_svg(STACKS))
    icicle = frames_of(render_svg(STACKS, inverted=True))
    assert by_name(normal, "all")["y"] > by_name(normal, "read")["y"]
    assert by_name(icicle, "all")["y"] < by_name(icicle, "read")["y"]
    assert by_name(icicle, "read")["w"] == pytest.approx(by_name(normal, "read")["w"])
    assert "inverted:1" in render_svg(STACKS, inverted=True)


# --------------------------------------------------------------------- colours
def test_frames_coloured_by_kind():
    stacks = {
        (
            Frame("bash", "comm"),
            Frame("main", "user", "/bin/bash"),
            Frame("[unknown]", "unknown"),
            Frame("entry_SYSCALL_64", "kernel"),
            Frame("Interpreter::run", "jit"),
        ): 10,
    }
    frames = frames_of(render_svg(stacks))
    rgb = {f["name"]: parse_rgb(f["fill"]) for f in frames}
    r, g, b = rgb["entry_SYSCALL_64"]  # kernel: orange
    assert r >= 190 and 90 <= g <= 155 and b == 0
    r, g, b = rgb["Interpreter::run"]  # jit: green
    assert g > r and g > b
    r, g, b = rgb["[unknown]"]  # grey
    assert r == g == b
    r, g, b = rgb["bash"]  # comm: aqua
    assert g > r and b > r
    r, g, b = rgb["main"]  # user, hot: red/yellow
    assert r >= 205 and b <= 55


def test_annotated_plain_names_get_kind_colours_and_lose_the_suffix():
    stacks = {("bash", "main", "vfs_read_[k]"): 5, ("java", "Foo::bar_[j]"): 5}
    frames = frames_of(render_svg(stacks))
    names = {f["name"] for f in frames}
    assert "vfs_read" in names and "Foo::bar" in names
    assert parse_rgb(by_name(frames, "vfs_read")["fill"])[2] == 0  # orange
    r, g, b = parse_rgb(by_name(frames, "Foo::bar")["fill"])
    assert g > r and g > b


def test_cold_palette_is_blue():
    stacks = {
        (Frame("bash", "comm"), Frame("main"), Frame("schedule", "kernel"), Frame("x", "jit")): 10,
        (Frame("bash", "comm"), Frame("[unknown]", "unknown")): 3,
    }
    frames = frames_of(render_svg(stacks, palette="cold"))
    assert len(frames) == 6
    for f in frames:
        r, g, b = parse_rgb(f["fill"])
        assert b > r and b > g, f


def test_colours_are_stable_per_name():
    a = {f["name"]: f["fill"] for f in frames_of(render_svg(STACKS))}
    b = {f["name"]: f["fill"] for f in frames_of(render_svg({("other", "read"): 1, ("main",): 3}))}
    assert a["read"] == b["read"] and a["main"] == b["main"]


def test_render_stackcounts_uses_countname_and_palette():
    sc = StackCounts(counts={(Frame("sshd", "comm"), Frame("poll")): 1234}, countname="us", palette="cold")
    svg = render_stackcounts(sc)
    f = by_name(frames_of(svg), "poll")
    assert f["title"] == "poll (1,234 us, 100.00%)"
    r, g, b = parse_rgb(f["fill"])
    assert b > r


# --------------------------------------------------------------------- diff
def test_diff_red_grew_blue_shrank():
    before = {("app", "main", "parse"): 100, ("app", "main", "render"): 100, ("app", "main", "same"): 50}
    after = {("app", "main", "parse"): 300, ("app", "main", "render"): 20, ("app", "main", "same"): 50}
    svg = render_diff_svg(before, after)
    frames = frames_of(svg)
    parse, render, same = (by_name(frames, n) for n in ("parse", "render", "same"))
    r, g, b = parse_rgb(parse["fill"])
    assert r == 255 and g < 100 and b < 100  # grew most: deep red
    r, g, b = parse_rgb(render["fill"])
    assert b == 255 and r < 255 and g < 255 and r == g  # shrank: blue
    assert parse_rgb(same["fill"]) == (255, 255, 255)  # unchanged: white
    # drawn on the after profile
    assert parse["n"] == 300 and render["n"] == 20
    assert parse["w"] / render["w"] == pytest.approx(15, rel=1e-2)
    # intensity by delta: +200 is the largest change, -80 lighter
    assert parse_rgb(render["fill"])[0] > parse_rgb(parse["fill"])[1]
    assert "self +54.05%" in parse["title"]
    ET.fromstring(svg)


def test_diff_negate_and_normalize():
    before = {("a", "x"): 100, ("a", "y"): 100}
    after = {("a", "x"): 400, ("a", "y"): 400}
    flat = frames_of(render_diff_svg(before, after, normalize=True))
    assert all(parse_rgb(f["fill"]) == (255, 255, 255) for f in flat)  # same shape: no change
    grown = frames_of(render_diff_svg({("a", "x"): 1}, {("a", "x"): 5}))
    negated = frames_of(render_diff_svg({("a", "x"): 1}, {("a", "x"): 5}, negate=True))
    assert parse_rgb(by_name(grown, "x")["fill"])[0] == 255
    assert parse_rgb(by_name(negated, "x")["fill"])[2] == 255


def test_diff_accepts_frames():
    k = Frame("schedule", "kernel")
    before = {(Frame("bash", "comm"), k): 10}
    after = {(Frame("bash", "comm"), k): 20}
    f = by_name(frames_of(render_diff_svg(before, after)), "schedule")
    assert parse_rgb(f["fill"]) == (255, 0, 0)


# ---------------------------------------------------------------- input forms
def test_accepts_frames_names_and_joined_strings_alike():
    frames_input = {tuple(Frame(n) for n in k): v for k, v in STACKS.items()}
    joined = {";".join(k): v for k, v in STACKS.items()}
    a = render_svg(STACKS)
    assert render_svg(frames_input) == a
    assert render_svg(joined) == a
    sc = StackCounts(counts=frames_input)
    assert render_svg(sc) == a


def test_frames_differing_only_by_address_merge():
    stacks = {
        (Frame("main", address=1), Frame("f", address=2)): 3,
        (Frame("main", address=5), Frame("f", address=9)): 4,
    }
    frames = frames_of(render_svg(stacks))
    assert by_name(frames, "f")["n"] == 7


# ------------------------------------------------------------------ folded format
def test_format_folded_root_first_and_annotated():
    sc = StackCounts(
        counts={
            (Frame("bash", "comm"), Frame("main"), Frame("vfs_read", "kernel")): 3,
            (Frame("node", "comm"), Frame("LazyCompile:foo", "jit")): 2,
            (Frame("bash", "comm"), Frame("a;b")): 1,
            (Frame("bash", "comm"), Frame("zero")): 0,
        }
    )
    assert format_folded(sc) == "bash;a:b 1\nbash;main;vfs_read 3\nnode;LazyCompile:foo 2\n"
    assert format_folded(sc, annotate=True) == (
        "bash;a:b 1\nbash;main;vfs_read_[k] 3\nnode;LazyCompile:foo_[j] 2\n"
    )


def test_format_folded_merges_equal_names():
    sc = StackCounts(counts={(Frame("m", address=1),): 2, (Frame("m", address=2),): 5})
    assert format_folded(sc) == "m 7\n"


def test_parse_folded_tolerant():
    text = "\n  a;b;c 5\r\n\nfoo bar;baz  qux 7\na;b;c 3\na;b\t2\n\n"
    assert parse_folded(text) == {("a", "b", "c"): 8, ("foo bar", "baz  qux"): 7, ("a", "b"): 2}
    assert parse_folded(b"x;y 1\n") == {("x", "y"): 1}
    assert parse_folded("x 1.6\n") == {("x",): 2}  # flamegraph.pl accepts fractions
    assert parse_folded("x 0\n") == {}


def test_parse_folded_errors():
    with pytest.raises(FoldedParseError, match="line 2"):
        parse_folded("a;b 1\nnot a count\n")
    with pytest.raises(FoldedParseError):
        parse_folded("lonely\n")
    assert parse_folded("a;b 1\ngarbage\n", strict=False) == {("a", "b"): 1}


def test_folded_round_trip():
    sc = StackCounts(
        counts={
            (Frame("bash", "comm"), Frame("main"), Frame("vfs_read", "kernel")): 3,
            (Frame("node", "comm"), Frame("LazyCompile:foo", "jit")): 2,
            (Frame("bash", "comm"), Frame("[unknown]", "unknown")): 9,
            (Frame("x y", "comm"), Frame("operator()(int) const")): 4,
        }
    )
    text = format_folded(sc, annotate=True)
    back = stackcounts_from_folded(text, comm_root=True)
    assert back.counts == {tuple(Frame(f.name, f.kind) for f in k): v for k, v in sc.counts.items()}
    plain = stackcounts_from_folded(text)  # without comm_root, the comm is a user frame
    assert {k[0].kind for k in plain.counts} == {"user"}
    assert format_folded(back, annotate=True) == text
    parsed = parse_folded(format_folded(sc))
    assert parsed == {tuple(f.name for f in k): v for k, v in sc.counts.items()}


def test_stackcounts_from_mapping():
    sc = stackcounts_from_folded({"a;b_[k]": 2, ("a", "b_[k]"): 3}, countname="us", palette="cold")
    assert sc.counts == {(Frame("a"), Frame("b", "kernel")): 5}
    assert sc.countname == "us" and sc.palette == "cold"


# -------------------------------------------------------------------- command line
def write(tmp_path, name: str, stacks: dict) -> str:
    p = tmp_path / name
    p.write_text("".join(f"{';'.join(k)} {v}\n" for k, v in stacks.items()))
    return str(p)


def test_cli_file_to_svg(tmp_path):
    src = write(tmp_path, "cpu.folded", STACKS)
    out = tmp_path / "cpu.svg"
    rc = cmd.main(
        [
            src,
            "--svg",
            str(out),
            "--title",
            "My CPU",
            "--width",
            "800",
            "--countname",
            "us",
            "--colors",
            "cold",
            "--inverted",
            "--minwidth",
            "0.5",
        ]
    )
    assert rc == 0
    svg = out.read_text()
    frames = frames_of(svg)
    assert ET.fromstring(svg).get("width") == "800"
    assert ">My CPU<" in svg
    assert by_name(frames, "poll")["title"] == "poll (480 us, 48.00%)"
    assert by_name(frames, "all")["y"] < by_name(frames, "poll")["y"]
    assert all(parse_rgb(f["fill"])[2] > parse_rgb(f["fill"])[0] for f in frames)


def test_cli_merges_inputs_and_stdout(tmp_path, capsys):
    a = write(tmp_path, "a.folded", {("x", "y"): 2})
    b = write(tmp_path, "b.folded", {("x", "y"): 3, ("x", "z"): 5})
    assert cmd.main([a, b]) == 0
    frames = frames_of(capsys.readouterr().out)
    assert by_name(frames, "y")["n"] == 5 and by_name(frames, "x")["n"] == 10


def test_cli_stdin(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"p;q 4\n\np;r 6\n")))
    assert cmd.main(["-"]) == 0
    frames = frames_of(capsys.readouterr().out)
    assert by_name(frames, "r")["n"] == 6


def test_cli_diff(tmp_path):
    before = write(tmp_path, "before.folded", {("a", "grow"): 10, ("a", "shrink"): 50})
    after = write(tmp_path, "after.folded", {("a", "grow"): 60, ("a", "shrink"): 5})
    out = tmp_path / "diff.svg"
    assert cmd.main(["--diff", before, after, "--svg", str(out)]) == 0
    frames = frames_of(out.read_text())
    r, g, b = parse_rgb(by_name(frames, "grow")["fill"])
    assert r == 255 and g < 255
    r, g, b = parse_rgb(by_name(frames, "shrink")["fill"])
    assert b == 255 and r < 255
    assert "Differential Flame Graph" in out.read_text()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("a;b 1\nthis line has no count\n", "line 2"),
        ("", "no stacks"),
        ("\x00\x01\x02binary\xff", "line 1"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, content, message):
    path = tmp_path / "in.folded"
    if content is not None:
        path.write_bytes(content.encode("latin-1"))
    out = tmp_path / "out.svg"
    assert cmd.main([str(path), "--svg", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_usage_errors(tmp_path, capsys):
    src = write(tmp_path, "a.folded", STACKS)
    assert cmd.main([]) == 2
    assert "no input" in capsys.readouterr().err
    assert cmd.main([src, "--diff", src, src]) == 2
    assert "not both" in capsys.readouterr().err
    assert cmd.main([src, "--width", "10"]) == 2
    assert "width" in capsys.readouterr().err
    assert cmd.main([src, "--colors", "rainbow"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cmd.main([str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cmd.main([src, "--svg", str(tmp_path / "missing" / "x.svg")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert cmd.main(["--help"]) == 0
