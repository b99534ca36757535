"""`bpfscope doctor`: what this kernel supports, and how every tool would run here."""

from __future__ import annotations

import argparse
import json
import platform
import sys

from .. import registry
from ..bpf.features import Features


def report(features: Features | None = None) -> dict:
    f = features or Features()
    feats = {name: {"available": ok, "detail": detail, "description": Features.DESCRIPTIONS[name]}
             for name, (ok, detail) in f.all().items()}
    tools = {}
    for name, cls in registry.all_tools().items():
        rows = cls.mode_report(f)
        tools[name] = [{"target": t, "usable": ok, "mode": d if ok else None, "reason": None if ok else d}
                       for t, ok, d in rows]
    return {"kernel": platform.release(), "features": feats, "tools": tools}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bpfscope doctor", description="check kernel features and tool modes")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    ns = p.parse_args(argv)
    rep = report()
    if ns.json:
        json.dump(rep, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = sys.stdout
    out.write(f"Kernel {rep['kernel']}\n\nFeatures:\n")
    for name, f in rep["features"].items():
        mark = "yes" if f["available"] else "NO "
        out.write(f"  {mark}  {name:<13} {f['detail']}\n")
    out.write("\nTools:\n")
    for name, rows in rep["tools"].items():
        for r in rows:
            label = f"{name}{' ' + r['target'] if r['target'] else ''}"
            if r["usable"]:
                out.write(f"  ok   {label:<28} {r['mode']}\n")
            else:
                out.write(f"  --   {label:<28} cannot run: {r['reason']}\n")
    return 0
