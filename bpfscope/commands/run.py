"""`bpfscope run FILE.py [TOOL] [options]`: run a user-written tool like a built-in one."""

from __future__ import annotations

import sys

from .. import registry
from ..errors import UsageError


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(
            "usage: bpfscope run FILE.py [TOOL] [options]\n\n"
            "Run a tool written with bpfscope.api (a Tool subclass decorated with @register).\n"
            "TOOL is needed only when the file registers several tools.\n"
        )
        return 0 if argv else 2
    path, rest = argv[0], argv[1:]
    tools = registry.load_tool_file(path)
    if not tools:
        raise UsageError(f"{path} registers no tool (decorate a Tool subclass with @register)")
    if len(tools) > 1:
        names = [t.name for t in tools]
        if not rest or rest[0] not in names:
            raise UsageError(f"{path} registers several tools; name one: {', '.join(names)}")
        cls = next(t for t in tools if t.name == rest[0])
        rest = rest[1:]
    else:
        cls = tools[0]
    from ..cli import run_tool

    return run_tool(cls, rest)
