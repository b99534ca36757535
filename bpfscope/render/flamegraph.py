"""Interactive, self-contained SVG flame graphs (after Brendan Gregg's flamegraph.pl).

The output has no external reference at all (no DOCTYPE, no xlink, no fonts, no scripts
from elsewhere): the only URI is the SVG namespace. Open it directly in a browser:

- hover a frame: its name, count and percentage at the bottom (and as a <title> tooltip);
- click a frame: zoom so it fills the width; its ancestors stay (faded), everything else
  hides; "Reset Zoom" (top left) goes back;
- Ctrl-F / F3 / "Search" (top right): regular-expression search, matches turn purple and
  "Matched: X%" shows the share of samples under matching frames (nested matches counted
  once); Esc or "Reset Search" clears it; "ic" toggles ignore-case.

Layout: stacks are sorted and laid out left to right, so siblings appear in alphabetical
order and a frame's samples-without-children (self) sit at its left edge, as in
flamegraph.pl. Frames narrower than `minwidth` pixels are omitted (their samples stay in
their parent's width), which keeps graphs of huge profiles small and fast.

Implementation: the sorted stack list is itself the prefix tree. A node is a contiguous
range [lo, hi) of sorted stacks sharing a prefix; its children are found by bisecting on
the next frame, its x/width come from a prefix sum of counts. Subtrees narrower than
minwidth are never visited, so the cost is the sort plus the number of *drawn* frames.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping
from itertools import accumulate
from operator import itemgetter, methodcaller

from bpfscope.results import Frame, StackCounts

# Geometry, as flamegraph.pl's defaults.
XPAD = 10
FRAME_HEIGHT = 16
FRAME_PAD = 1
FONT_SIZE = 12
FONT_WIDTH = 0.59  # average glyph width / font size, to fit labels
YPAD_TOP = FONT_SIZE * 3
YPAD_BOTTOM = FONT_SIZE * 2 + 10

SEARCH_COLOR = "rgb(230,0,230)"
PALETTES = ("hot", "cold", "mem", "io", "red", "green", "blue", "aqua", "yellow", "purple", "orange")

_KIND_SEP = "\x01"  # internal: "name\x01kind" for Frames whose kind is not "user"
_KIND_MARK = {"kernel": "_[k]", "jit": "_[j]"}  # stackcollapse annotations of plain names

StackMap = Mapping[tuple[Frame, ...], int] | Mapping[tuple[str, ...], int] | Mapping[str, int]


# ----------------------------------------------------------------------------- input
def _normalize(stacks: StackMap | StackCounts) -> dict[tuple[str, ...], int]:
    """Any accepted stack mapping -> {tuple of node keys: count}, positive counts only.

    Plain names stay as they are (kinds are guessed from `_[k]`/`_[j]` when drawing);
    a Frame becomes its name, plus "\\x01kind" when its kind is not "user".
    """
    if isinstance(stacks, StackCounts):
        stacks = stacks.counts
    out: dict[tuple[str, ...], int] = {}
    sep = _KIND_SEP
    for stack, n in stacks.items():
        if not n or n <= 0:
            continue
        if isinstance(stack, str):
            key = tuple(stack.split(";")) if stack else ()
        elif not stack or isinstance(stack[0], str):
            key = stack if type(stack) is tuple else tuple(stack)
            if not isinstance(key[-1] if key else "", str):
                key = tuple(map(_node_key, key))
        else:
            try:  # the hot path: one comprehension, no call per frame
                key = tuple([f.name if f.kind == "user" else f.name + sep + f.kind for f in stack])
            except AttributeError:  # names mixed in with Frames
                key = tuple(map(_node_key, stack))
        if key in out:
            out[key] += int(n)
        else:
            out[key] = int(n)
    return out


def _node_key(f: Frame | str) -> str:
    if isinstance(f, str):
        return f
    return f.name if f.kind == "user" else f"{f.name}{_KIND_SEP}{f.kind}"


def _split_key(key: str) -> tuple[str, str]:
    """Node key -> (display name, kind)."""
    if _KIND_SEP in key:
        name, kind = key.rsplit(_KIND_SEP, 1)
        return name, kind
    if key.endswith("]") and len(key) > 4:
        tail = key[-4:]
        if tail == "_[k]":
            return key[:-4], "kernel"
        if tail == "_[j]":
            return key[:-4], "jit"
        if tail in ("_[i]", "_[w]"):  # inlined / waker annotations: shown without the mark
            return key[:-4], "user"
    if key == "[unknown]":
        return key, "unknown"
    if key in ("-", "--"):
        return key, "delim"
    return key, "user"


# ---------------------------------------------------------------------------- colours
def _namehash(name: str) -> float:
    """flamegraph.pl's namehash: a stable 0..1 from the first characters of a name."""
    vector = 0.0
    weight = 1.0
    total = 1.0
    mod = 10
    backtick = name.find("`")  # "module`function": skip the module but its first char
    if backtick > 0:
        name = name[0] + name[backtick + 1 :]
    for c in name:
        i = ord(c) % mod
        vector += (i / (mod - 1)) * weight
        mod += 1
        total += weight
        weight *= 0.70
        if mod > 12:
            break
    return 1 - vector / total


def _rgb(r: float, g: float, b: float) -> str:
    return f"rgb({int(r)},{int(g)},{int(b)})"


def _hue(hue: str, v1: float, v2: float, v3: float) -> str:
    """flamegraph.pl's palettes (color()), v1..v3 in 0..1."""
    if hue == "hot":
        return _rgb(205 + 50 * v3, 230 * v1, 55 * v2)
    if hue == "mem":
        return _rgb(0, 190 + 50 * v2, 210 * v1)
    if hue in ("io", "cold"):
        return _rgb(80 + 60 * v1, 80 + 60 * v1, 190 + 55 * v2)
    if hue == "red":
        return _rgb(200 + 55 * v1, 50 + 80 * v1, 50 + 80 * v1)
    if hue == "green":
        return _rgb(50 + 60 * v1, 200 + 55 * v1, 50 + 60 * v1)
    if hue == "blue":
        return _rgb(80 + 60 * v1, 80 + 60 * v1, 205 + 50 * v1)
    if hue == "yellow":
        return _rgb(175 + 55 * v1, 175 + 55 * v1, 50 + 20 * v1)
    if hue == "purple":
        return _rgb(190 + 65 * v1, 80 + 60 * v1, 190 + 65 * v1)
    if hue == "aqua":
        return _rgb(50 + 60 * v1, 165 + 55 * v1, 165 + 55 * v1)
    if hue == "orange":
        return _rgb(190 + 65 * v1, 90 + 65 * v1, 0)
    if hue == "grey":
        return _rgb(170 + 40 * v1, 170 + 40 * v1, 170 + 40 * v1)
    return "rgb(0,0,0)"


# kind -> hue inside the multi-kind palettes; cold keeps every kind blue-dominant.
_KIND_HUES = {
    "hot": {"user": "hot", "kernel": "orange", "jit": "green", "comm": "aqua", "node": "purple"},
    "mem": {"user": "mem", "kernel": "orange", "jit": "green", "comm": "aqua", "node": "purple"},
}
_COLD = {
    "user": lambda v1, v2: _rgb(80 + 60 * v1, 80 + 60 * v1, 190 + 55 * v2),
    "kernel": lambda v1, v2: _rgb(110 + 40 * v1, 70 + 50 * v1, 200 + 55 * v2),  # violet-blue
    "jit": lambda v1, v2: _rgb(40 + 40 * v1, 150 + 40 * v1, 200 + 55 * v2),  # teal-blue
    "comm": lambda v1, v2: _rgb(150 + 40 * v1, 180 + 30 * v1, 235 + 20 * v2),  # light blue
    "node": lambda v1, v2: _rgb(120 + 40 * v1, 120 + 40 * v1, 220 + 35 * v2),
    "unknown": lambda v1, v2: _rgb(150 + 30 * v1, 155 + 30 * v1, 190 + 30 * v2),  # blue-grey
    "delim": lambda v1, v2: _rgb(190, 195, 215),
}


def frame_color(name: str, kind: str, palette: str = "hot") -> str:
    """The fill of a frame: hue from palette and kind, shade from the name (stable)."""
    v1 = _namehash(name)
    v2 = _namehash(name[::-1])
    if palette in ("cold", "io"):
        return _COLD.get(kind, _COLD["user"])(v1, v2)
    if kind == "unknown":
        return _hue("grey", v1, v2, v2)
    if kind == "delim":
        return "rgb(200,200,200)"
    hues = _KIND_HUES.get(palette)
    if hues is None:  # single-hue palettes colour every kind alike
        return _hue(palette, v1, v2, v2)
    return _hue(hues.get(kind, hues["user"]), v1, v2, v2)


def diff_color(delta: int, maxdelta: int) -> str:
    """flamegraph.pl's color_scale: red for growth, blue for shrinkage, white for none."""
    if delta > 0 and maxdelta:
        gb = int(210 * (maxdelta - delta) / maxdelta)
        return f"rgb(255,{gb},{gb})"
    if delta < 0 and maxdelta:
        rg = int(210 * (maxdelta + delta) / maxdelta)
        return f"rgb({rg},{rg},255)"
    return "rgb(255,255,255)"


_BACKGROUNDS = {
    "hot": ("#eeeeee", "#eeeeb0"),
    "cold": ("#eeeeee", "#e0e0ff"),
    "io": ("#f8f8f8", "#e8e8e8"),
    "mem": ("#eeeeee", "#e0ffe0"),
    "diff": ("#f8f8f8", "#e8e8e8"),
}


# ------------------------------------------------------------------------------ text
# XML 1.0 cannot hold most control characters at all; escape the three specials.
_XML_TABLE = {c: " " for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)}
_XML_TABLE.update({ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", 0xFFFE: " ", 0xFFFF: " "})
_XML_TABLE.update({c: " " for c in range(0xD800, 0xE000)})


def _esc(s: str) -> str:
    return s.translate(_XML_TABLE)


def _label(name: str, width: float) -> str:
    """Label that fits a frame `width` px wide, as flamegraph.pl truncates ("abc.."), or ""."""
    chars = int(width / (FONT_SIZE * FONT_WIDTH))
    if chars < 3:
        return ""
    if len(name) <= chars:
        return name
    return name[: chars - 2] + ".."


# ------------------------------------------------------------------------------- tree
def _layout(keys: list[tuple[str, ...]], cum: list[int], min_count: float) -> list[tuple[int, int, int]]:
    """Frames to draw, as (lo, hi, depth): stacks keys[lo:hi] share the frame at depth-1.

    `keys` must be sorted; cum is the prefix sum of their counts. The root ("all") is
    (0, len(keys), 0). Children narrower than min_count samples are not visited.
    """
    out = [(0, len(keys), 0)]
    work = [(0, len(keys), 0)]
    pop = work.pop
    push = work.append
    emit = out.append
    while work:
        lo, hi, depth = pop()
        i = lo
        if len(keys[i]) == depth:  # the stack ending here (self samples) sorts first
            i += 1
        if i >= hi:
            continue
        get = itemgetter(depth)
        child = depth + 1
        while i < hi:
            if i + 1 == hi:
                j = hi
            else:
                j = bisect_right(keys, keys[i][depth], i, hi, key=get)
            if cum[j] - cum[i] >= min_count:
                if j - i == 1:  # a single stack: one chain of equally wide frames
                    emit_chain = [(i, j, d) for d in range(child, len(keys[i]) + 1)]
                    out.extend(emit_chain)
                else:
                    emit((i, j, child))
                    push((i, j, child))
            i = j
    return out


def _sorted_stacks(stacks: dict[tuple[str, ...], int]) -> list[tuple[str, ...]]:
    """The stacks in tuple order, fast: sorting '\\0'-joined strings gives the same order
    (when no name holds a NUL) and compares far faster than tuples of distinct str objects."""
    keys = list(stacks)
    joined = list(map("\0".join, keys))
    nuls = sum(map(methodcaller("count", "\0"), joined))
    frames = sum(map(len, keys))
    if nuls != frames - len(keys) + keys.count(()):
        return sorted(keys)  # some name holds a NUL
    order = sorted(range(len(keys)), key=joined.__getitem__)
    return list(map(keys.__getitem__, order))


class _Graph:
    """Sorted stacks, their prefix sums and the frames to draw."""

    def __init__(self, stacks: dict[tuple[str, ...], int], plot_width: float, minwidth: float):
        self.keys = _sorted_stacks(stacks)
        self.counts = [stacks[k] for k in self.keys]
        self.cum = list(accumulate(self.counts, initial=0))
        self.total = self.cum[-1]
        min_count = minwidth * self.total / plot_width if self.total else 0
        self.nodes = _layout(self.keys, self.cum, min_count) if self.keys else []
        self.max_depth = max((d for _, _, d in self.nodes), default=0)

    def self_count(self, lo: int, depth: int) -> int:
        return self.counts[lo] if len(self.keys[lo]) == depth else 0


# ------------------------------------------------------------------------------- SVG
_CSS = """
text{font-family:Verdana,"DejaVu Sans",sans-serif;font-size:%(fs)dpx;fill:#000}
#title{font-size:17px;text-anchor:middle}
#subtitle{text-anchor:middle;fill:#a0a0a0}
#frames rect{rx:2px;ry:2px}
#frames g{cursor:pointer}
#frames g:hover rect{stroke:#000;stroke-width:0.5}
#frames text{pointer-events:none}
#frames g.parent{opacity:0.5}
#frames g.m rect{fill:%(search)s}
.hide{display:none}
.btn{cursor:pointer;fill:#000}
.btn:hover{fill:#c00}
#matched{text-anchor:end}
"""

# Small, dependency-free viewer. Every frame is <g data-s=START data-n=COUNT><title/><rect/><text/></g>
# with START/COUNT in samples, so zoom positions are exact whatever the zoom depth.
_JS = r"""
(function(){
"use strict";
var C=FG_CONF;
var frames=document.getElementById("frames"), details=document.getElementById("details"),
 unzoombtn=document.getElementById("unzoom"), searchbtn=document.getElementById("search"),
 icbtn=document.getElementById("ignorecase"), matched=document.getElementById("matched"),
 rootg=frames.firstElementChild, current=rootg, searching=null, ignorecase=false;
if(!rootg)return;
function num(g,a){return parseFloat(g.getAttribute(a));}
function name_of(g){return g.children[0].textContent.replace(/ \([^()]*\)$/,"");}
var F=null;
function recs(){
 if(!F){
  F=[];var all=frames.children;
  for(var i=0;i<all.length;i++){
   var e=all[i],r=e.children[1];
   e.fg={g:e,s:num(e,"data-s"),n:num(e,"data-n"),y:num(r,"y"),nm:name_of(e),x:r.getAttribute("x"),
    w:r.getAttribute("width"),t:e.children[2].textContent,z:"",m:false};
   F.push(e.fg);
  }
 }
 return F;
}
function cls(f,z,m){
 if(f.z===z&&f.m===m)return;
 f.z=z;f.m=m;var c=z+(m?" m":"");
 if(c)f.g.setAttribute("class",c.trim());else f.g.removeAttribute("class");
}
function place(f,x,w){
 var xs=x.toFixed(2),ws=w.toFixed(2),g=f.g;
 if(xs!==f.x){f.x=xs;g.children[1].setAttribute("x",xs);g.children[2].setAttribute("x",(x+3).toFixed(2));}
 if(ws!==f.w){
  f.w=ws;g.children[1].setAttribute("width",ws);
  var c=Math.floor(w/(C.fs*C.fw)),n=f.nm,t=c<3?"":(n.length<=c?n:n.substring(0,c-2)+"..");
  if(t!==f.t){f.t=t;g.children[2].textContent=t;}
 }
}
function zoom(g){
 var all=recs(),z=g.fg,s0=z.s,n0=z.n,y0=z.y,k=C.w/n0;
 for(var i=0;i<all.length;i++){
  var f=all[i],s=f.s,n=f.n;
  if(C.inverted?f.y<y0:f.y>y0){
   if(s<=s0&&s+n>=s0+n0){cls(f,"parent",f.m);place(f,C.xpad,C.w);}
   else cls(f,"hide",f.m);
  }else if(s>=s0&&s+n<=s0+n0){cls(f,"",f.m);place(f,C.xpad+(s-s0)*k,n*k);}
  else cls(f,"hide",f.m);
 }
 current=g;
 if(g===rootg)unzoombtn.classList.add("hide");else unzoombtn.classList.remove("hide");
}
function unzoom(){zoom(rootg);}
function show(g){details.textContent=g?"Function: "+g.children[0].textContent:" ";}
function reset_search(){
 var all=recs();
 for(var i=0;i<all.length;i++)cls(all[i],all[i].z,false);
 searching=null;matched.classList.add("hide");searchbtn.textContent="Search";
}
function search(term){
 var rx;
 try{rx=new RegExp(term,ignorecase?"i":"");}catch(err){matched.textContent="Bad regex: "+term;matched.classList.remove("hide");return -1;}
 var all=recs(),iv=[];
 for(var i=0;i<all.length;i++){
  var f=all[i],m=rx.test(f.nm);
  cls(f,f.z,m);
  if(m)iv.push([f.s,f.n]);
 }
 iv.sort(function(a,b){return a[0]-b[0]||b[1]-a[1];});
 var cover=0,end=-1;
 for(var j=0;j<iv.length;j++){
  var a=iv[j][0],b=a+iv[j][1];
  if(a>=end){cover+=b-a;end=b;}else if(b>end){cover+=b-end;end=b;}
 }
 var pct=C.total?100*cover/C.total:0;
 searching=term;searchbtn.textContent="Reset Search";
 matched.textContent="Matched: "+(pct===100?"100":pct.toFixed(1))+"%";
 matched.classList.remove("hide");
 return pct;
}
function search_prompt(){
 var t=window.prompt("Enter a search term (regexp allowed, eg: ^ext4_)"+(ignorecase?", ignoring case":""),searching||"");
 if(t)search(t);
}
frames.addEventListener("click",function(ev){
 var g=ev.target.closest("g");if(g&&g.parentNode===frames)zoom(g);
});
frames.addEventListener("mouseover",function(ev){
 var g=ev.target.closest("g");if(g&&g.parentNode===frames)show(g);
});
frames.addEventListener("mouseout",function(){show(null);});
unzoombtn.addEventListener("click",unzoom);
searchbtn.addEventListener("click",function(){if(searching)reset_search();else search_prompt();});
icbtn.addEventListener("click",function(){
 ignorecase=!ignorecase;icbtn.style.fill=ignorecase?"#c00":"";
 if(searching)search(searching);
});
window.addEventListener("keydown",function(ev){
 if(ev.keyCode===114||((ev.ctrlKey||ev.metaKey)&&ev.keyCode===70)){ev.preventDefault();search_prompt();}
 else if(ev.keyCode===27){if(searching)reset_search();}
});
window.flamegraph={zoom:zoom,unzoom:unzoom,search:search,reset_search:reset_search,
 current:function(){return current;}};
})();
"""


def _svg(
    graph: _Graph,
    *,
    title: str,
    subtitle: str,
    width: int,
    inverted: bool,
    fill_for,  # (lo, hi, depth, name, kind) -> fill
    info_for,  # (lo, hi, depth, name, n, pct) -> tooltip text (unescaped)
    background: tuple[str, str],
) -> str:
    plot_w = width - 2 * XPAD
    total = graph.total
    depth_max = graph.max_depth
    height = (depth_max + 1) * FRAME_HEIGHT + YPAD_TOP + YPAD_BOTTOM
    if subtitle:
        height += FONT_SIZE * 2
    top = YPAD_TOP + (FONT_SIZE * 2 if subtitle else 0)
    scale = plot_w / total if total else 0.0
    out: list[str] = []
    add = out.append
    add(
        f'<?xml version="1.0" standalone="no"?>\n'
        f'<svg version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">\n'
        f'<defs><linearGradient id="background" y1="0" y2="1" x1="0" x2="0">'
        f'<stop stop-color="{background[0]}" offset="5%"/><stop stop-color="{background[1]}" offset="95%"/>'
        f"</linearGradient></defs>\n"
        f"<style>{_CSS % {'fs': FONT_SIZE, 'search': SEARCH_COLOR}}</style>\n"
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="url(#background)"/>\n'
        f'<text id="title" x="{width / 2:.1f}" y="24">{_esc(title)}</text>\n'
    )
    if subtitle:
        add(f'<text id="subtitle" x="{width / 2:.1f}" y="{24 + FONT_SIZE * 2}">{_esc(subtitle)}</text>\n')
    add(
        f'<text id="details" x="{XPAD}" y="{height - YPAD_BOTTOM / 2 + 6:.0f}"> </text>\n'
        f'<text id="unzoom" class="btn hide" x="{XPAD}" y="24">Reset Zoom</text>\n'
        f'<text id="search" class="btn" x="{width - XPAD - 120}" y="24">Search</text>\n'
        f'<text id="ignorecase" class="btn" x="{width - XPAD - 16}" y="24">ic</text>\n'
        f'<text id="matched" class="hide" x="{width - XPAD}" y="{height - YPAD_BOTTOM / 2 + 6:.0f}"> </text>\n'
    )
    if not total:
        add(f'<text x="{width / 2:.1f}" y="{top + 24}" style="text-anchor:middle">ERROR: no stacks</text>\n')
    add('<g id="frames">\n')
    keys = graph.keys
    cum = graph.cum
    names: dict[str, tuple[str, str, str]] = {}  # key -> (name, kind, escaped name)
    base_y = height - YPAD_BOTTOM
    for lo, hi, depth in graph.nodes:
        if depth:
            key = keys[lo][depth - 1]
            entry = names.get(key)
            if entry is None:
                name, kind = _split_key(key)
                entry = names[key] = (name, kind, _esc(name))
            name, kind, ename = entry
        else:
            name, kind, ename = "all", "root", "all"
        start = cum[lo]
        n = cum[hi] - start
        x = XPAD + start * scale
        w = n * scale
        if inverted:
            y = top + depth * FRAME_HEIGHT
        else:
            y = base_y - (depth + 1) * FRAME_HEIGHT + FRAME_PAD
        pct = 100.0 * n / total
        info = _esc(info_for(lo, hi, depth, name, n, pct))
        label = _label(name, w)
        if label is not name:
            label = _esc(label)
        else:
            label = ename
        fill = fill_for(lo, hi, depth, name, kind)
        add(
            f'<g data-s="{start}" data-n="{n}"><title>{info}</title>'
            f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{FRAME_HEIGHT - FRAME_PAD}" fill="{fill}"/>'
            f'<text x="{x + 3:.2f}" y="{y + 10.5}">{label}</text></g>\n'
        )
    add("</g>\n")
    conf = (
        f"{{xpad:{XPAD},w:{plot_w},total:{total},inverted:{1 if inverted else 0},"
        f"fs:{FONT_SIZE},fw:{FONT_WIDTH}}}"
    )
    add(f'<script type="text/ecmascript"><![CDATA[{_JS.replace("FG_CONF", conf)}]]></script>\n')
    add("</svg>\n")
    return "".join(out)


def _check(width: int, minwidth: float, palette: str) -> None:
    if not isinstance(width, int) or width < 2 * XPAD + 100:
        raise ValueError(f"width must be an integer >= {2 * XPAD + 100} pixels, got {width!r}")
    if not minwidth >= 0:
        raise ValueError(f"minwidth must be >= 0 pixels, got {minwidth!r}")
    if palette not in PALETTES:
        raise ValueError(f"unknown palette {palette!r} (one of: {', '.join(PALETTES)})")


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def render_svg(
    stacks: StackMap | StackCounts,
    *,
    title: str = "Flame Graph",
    width: int = 1200,
    minwidth: float = 0.1,
    inverted: bool = False,
    countname: str = "samples",
    palette: str = "hot",
    subtitle: str = "",
) -> str:
    """An interactive flame graph SVG of {stack: count}; stacks are Frame or name tuples, root first.

    Names may also be 'a;b;c' strings. Frames are coloured by kind (user, kernel, jit,
    unknown, comm...; for plain names `_[k]`/`_[j]` suffixes mark kernel/JIT frames and
    are not shown). palette: "hot" (CPU), "cold" (off-CPU, blues), "mem", "io", or one of
    red/green/blue/aqua/yellow/purple/orange. minwidth: frames narrower than this many
    pixels are omitted. inverted: icicle graph (root at the top).
    """
    _check(width, minwidth, palette)
    graph = _Graph(_normalize(stacks), width - 2 * XPAD, minwidth)
    colors: dict[tuple[str, str], str] = {}
    root_fill = frame_color("all", "user", palette)

    def fill_for(lo, hi, depth, name, kind):
        if not depth:
            return root_fill
        c = colors.get((name, kind))
        if c is None:
            c = colors[(name, kind)] = frame_color(name, kind, palette)
        return c

    def info_for(lo, hi, depth, name, n, pct):
        return f"{name} ({_fmt_count(n)} {countname}, {pct:.2f}%)"

    bg = _BACKGROUNDS.get(palette, _BACKGROUNDS["io"])
    return _svg(
        graph,
        title=title,
        subtitle=subtitle,
        width=width,
        inverted=inverted,
        fill_for=fill_for,
        info_for=info_for,
        background=bg,
    )


def render_stackcounts(sc: StackCounts, **kwargs) -> str:
    """render_svg with the StackCounts' own countname and palette (overridable)."""
    kwargs.setdefault("countname", sc.countname)
    palette = kwargs.setdefault("palette", sc.palette)
    if palette not in PALETTES:
        kwargs["palette"] = "hot"
    if sc.countname == "us" and "title" not in kwargs:
        kwargs["title"] = "Off-CPU Time Flame Graph"
    return render_svg(sc.counts, **kwargs)


def render_diff_svg(
    before: StackMap | StackCounts,
    after: StackMap | StackCounts,
    *,
    title: str = "Differential Flame Graph",
    width: int = 1200,
    minwidth: float = 0.1,
    inverted: bool = False,
    countname: str = "samples",
    normalize: bool = False,
    negate: bool = False,
    subtitle: str = "",
) -> str:
    """A differential flame graph (difffolded.pl + flamegraph.pl): drawn on the `after` profile.

    Each frame is coloured by the change of its own (self) count from before to after:
    red = grew, blue = shrank, white = unchanged, the deeper the colour the bigger the
    change relative to the largest change among drawn frames. Stacks only in `before`
    are not drawn (they have no width in `after`). normalize scales `before` to the
    total of `after` first (difffolded.pl -n); negate swaps red and blue.
    """
    _check(width, minwidth, "hot")
    b = _normalize(before)
    a = _normalize(after)
    if normalize:
        tb = sum(b.values())
        ta = sum(a.values())
        if tb and ta:
            b = {k: int(round(v * ta / tb)) for k, v in b.items()}
    graph = _Graph(a, width - 2 * XPAD, minwidth)
    keys = graph.keys
    deltas: dict[tuple[int, int], int] = {}
    for lo, _hi, depth in graph.nodes:
        stack = keys[lo] if len(keys[lo]) == depth else keys[lo][:depth]
        d = graph.self_count(lo, depth) - b.get(stack, 0)
        deltas[(lo, depth)] = -d if negate else d
    maxdelta = max((abs(d) for d in deltas.values()), default=0)
    total = graph.total or 1

    def fill_for(lo, hi, depth, name, kind):
        return diff_color(deltas[(lo, depth)], maxdelta)

    def info_for(lo, hi, depth, name, n, pct):
        d = deltas[(lo, depth)]
        if negate:
            d = -d
        return f"{name} ({_fmt_count(n)} {countname}, {pct:.2f}%; self {100.0 * d / total:+.2f}%)"

    return _svg(
        graph,
        title=title,
        subtitle=subtitle,
        width=width,
        inverted=inverted,
        fill_for=fill_for,
        info_for=info_for,
        background=_BACKGROUNDS["diff"],
    )


_RGB = re.compile(r"rgb\((\d+),(\d+),(\d+)\)")


def parse_rgb(fill: str) -> tuple[int, int, int]:
    """'rgb(r,g,b)' -> (r, g, b); for tests and tools reading our SVGs."""
    m = _RGB.fullmatch(fill.replace(" ", ""))
    if not m:
        raise ValueError(f"not an rgb() colour: {fill!r}")
    return int(m[1]), int(m[2]), int(m[3])
