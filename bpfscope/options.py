"""One declaration per option, three uses: argparse flags (CLI), JSON schema (REST, web form)
and strict validation of JSON input (REST: "false" is not true, 1.5 is not an int).

Plain dataclasses rather than pydantic: the CLI path must start in a few milliseconds.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class Option:
    name: str  # attribute / JSON key
    type: type = str  # int, float, bool, str
    default: Any = None
    help: str = ""
    flags: tuple[str, ...] = ()  # e.g. ("-p", "--pid"); empty = positional
    nargs: str | None = None  # positional: "?" optional; "*"/"+" lists
    multiple: bool = False  # flag may repeat / value is a list (-p 1 -p 2, or -p 1,2)
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    pattern: str | None = None  # strings must fully match (safe grammar)
    regex: bool = False  # the string is a user regex: must compile
    metavar: str | None = None
    cli_only: bool = False  # not offered over REST (e.g. output file paths)
    max_len: int = 256

    @property
    def positional(self) -> bool:
        return not self.flags

    # ---- validation (shared by CLI and REST) -------------------------------
    def check(self, value: Any, strict: bool) -> Any:
        """Validate one value; strict=True (REST) refuses any implicit conversion."""
        if value is None:
            return None
        if self.multiple or self.nargs in ("*", "+"):
            items = value if isinstance(value, list) else [value]
            if not strict:
                flat: list[Any] = []
                for v in items:
                    flat.extend(v.split(",") if isinstance(v, str) and self.type is not str else [v])
                items = flat
            elif not isinstance(value, list):
                raise UsageError(f"{self.name}: expected a list")
            return [self._check_one(v, strict) for v in items]
        return self._check_one(value, strict)

    def _check_one(self, value: Any, strict: bool) -> Any:
        t = self.type
        if t is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{self.name}: expected true or false, got {value!r}")
        elif t is int:
            if isinstance(value, str) and not strict:
                try:
                    value = int(value, 0)
                except ValueError:
                    raise UsageError(f"{self.name}: expected an integer, got {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{self.name}: expected an integer, got {value!r}")
        elif t is float:
            if isinstance(value, str) and not strict:
                try:
                    value = float(value)
                except ValueError:
                    raise UsageError(f"{self.name}: expected a number, got {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{self.name}: expected a number, got {value!r}")
            value = float(value)
        elif t is str:
            if not isinstance(value, str):
                raise UsageError(f"{self.name}: expected a string, got {value!r}")
            if len(value) > self.max_len:
                raise UsageError(f"{self.name}: longer than {self.max_len} characters")
            if "\0" in value:
                raise UsageError(f"{self.name}: NUL byte not allowed")
            if self.pattern and not re.fullmatch(self.pattern, value):
                raise UsageError(f"{self.name}: {value!r} is not a valid value (expected {self.metavar or self.pattern})")
            if self.regex:
                try:
                    re.compile(value)
                except re.error as e:
                    raise UsageError(f"{self.name}: bad regular expression {value!r}: {e}") from None
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{self.name}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.min is not None and value < self.min:
            raise UsageError(f"{self.name}: {value} is below the minimum {self.min:g}")
        if self.max is not None and value > self.max:
            raise UsageError(f"{self.name}: {value} is above the maximum {self.max:g}")
        return value

    # ---- argparse -------------------------------------------------------
    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kw: dict[str, Any] = {"help": self.help + (f" (default: {self.default})" if self.default not in (None, False, [], "") else "")}
        if self.positional:
            kw["nargs"] = self.nargs
            kw["default"] = self.default
            kw["metavar"] = self.metavar or self.name.upper()
            parser.add_argument(self.name, **kw)
            return
        kw["dest"] = self.name
        if self.type is bool:
            kw["action"] = "store_true"
            kw["default"] = bool(self.default)
        else:
            kw["metavar"] = self.metavar or self.name.upper()
            kw["default"] = self.default
            if self.multiple:
                kw["action"] = "append"
                kw["default"] = None
        parser.add_argument(*self.flags, **kw)

    # ---- JSON schema ----------------------------------------------------
    def schema(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"},
        }[self.type].copy()
        if self.min is not None:
            base["minimum"] = self.min
        if self.max is not None:
            base["maximum"] = self.max
        if self.choices is not None:
            base["enum"] = list(self.choices)
        if self.type is str:
            base["maxLength"] = self.max_len
            if self.pattern:
                base["pattern"] = f"^(?:{self.pattern})$"
        if self.multiple or self.nargs in ("*", "+"):
            base = {"type": "array", "items": base, "maxItems": 64}
        if self.default is not None:
            base["default"] = self.default
        base["description"] = self.help
        return base


@dataclass
class Options:
    """Validated option values, attribute access (opts.pid)."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        v = self.values.get(name)
        return default if v is None else v

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def validate(options: list[Option], raw: dict[str, Any], strict: bool = True) -> Options:
    """Check a dict of values against the declarations; unknown keys are refused."""
    known = {o.name: o for o in options}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for opt in options:
        v = raw.get(opt.name)
        if v is None:
            d = opt.default
            values[opt.name] = list(d) if isinstance(d, (list, tuple)) else d
            if opt.type is bool and d is None:
                values[opt.name] = False
            continue
        values[opt.name] = opt.check(v, strict)
    return Options(values)


def json_schema(options: list[Option]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {o.name: o.schema() for o in options if not o.cli_only},
    }


# ---- options shared by many tools --------------------------------------------
PID_PATTERN = r"[0-9]{1,10}"
PID = Option("pid", int, None, "trace this process only", ("-p", "--pid"), min=1, max=2**22, metavar="PID")
PIDS = Option("pid", int, None, "trace these processes only (repeat or comma-separate)", ("-p", "--pid"),
              multiple=True, min=1, max=2**22, metavar="PID")
DURATION = Option("duration", float, None, "stop after this many seconds (default: until Ctrl-C)",
                  ("-d", "--duration"), min=0.01, max=86400, metavar="SECONDS")
INTERVAL = Option("interval", float, None, "print and clear every INTERVAL seconds", ("-i", "--interval"),
                  min=0.1, max=86400, metavar="INTERVAL")
TIMESTAMP = Option("timestamp", bool, False, "include a time of day on output", ("-T", "--timestamp"))
CGROUP = Option("cgroup", str, None, "trace only this cgroup v2 (path, absolute or under the cgroup mount)",
                ("--cgroup",), pattern=r"[A-Za-z0-9_.:@/=+-]{1,255}", metavar="PATH")
