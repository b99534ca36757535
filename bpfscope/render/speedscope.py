"""Speedscope file format export (https://www.speedscope.app), one "sampled" profile.

The `$schema` value is how speedscope recognises its own format; it is an identifier,
nothing is fetched.
"""

from __future__ import annotations

import json

from bpfscope.results import Frame, StackCounts

SCHEMA = "https://www.speedscope.app/file-format-schema.json"

_UNITS = {
    "us": "microseconds",
    "usecs": "microseconds",
    "ns": "nanoseconds",
    "nsecs": "nanoseconds",
    "ms": "milliseconds",
    "bytes": "bytes",
}


def to_speedscope(sc: StackCounts, name: str = "bpfscope") -> str:
    """Speedscope JSON: shared frames (name, file = module) and one sampled profile whose
    samples are frame-index lists, root first, weighted by their counts. With
    sc.sample_period (ns per sample) the weights are nanoseconds."""
    frames: list[dict] = []
    index: dict[tuple[str, str], int] = {}
    samples: list[list[int]] = []
    weights: list[int] = []
    unit = _UNITS.get(sc.countname, "none")
    mult = 1
    if sc.countname == "samples" and sc.sample_period > 0:
        unit, mult = "nanoseconds", sc.sample_period

    by_id: dict[int, int] = {}  # id(Frame) -> index; valid while sc.counts holds the frames

    def idx(f: Frame) -> int:
        key = (f.name, f.module)
        i = index.get(key)
        if i is None:
            i = index[key] = len(frames)
            frames.append({"name": f.name, "file": f.module} if f.module else {"name": f.name})
        by_id[id(f)] = i
        return i

    get = by_id.get
    for stack, n in sc.counts.items():
        if n <= 0:
            continue
        row = [get(id(f), -1) for f in stack]
        if -1 in row:
            row = [i if i >= 0 else idx(f) for i, f in zip(row, stack, strict=True)]
        samples.append(row)
        weights.append(n * mult)
    doc = {
        "$schema": SCHEMA,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": unit,
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "bpfscope",
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
