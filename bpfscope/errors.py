"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class BpfscopeError(Exception):
    """An error the user can act on (bad option, missing privilege, unsupported kernel)."""

    exit_code = 1


class UsageError(BpfscopeError):
    """Bad command-line input or options; REST maps it to 422."""

    exit_code = 2


class ToolUnavailable(BpfscopeError):
    """No hook of the tool's plan works on this kernel; message says why and what to use instead."""

    exit_code = 3
