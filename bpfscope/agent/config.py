"""Agent configuration: command-line flags over a config file (TOML or YAML) over defaults.

    # bpfscope.toml                       # the same keys in YAML work too (bpfscope.yaml)
    listen = "127.0.0.1:9440"
    collectors = ["cgnet", "execs"]       # default: every collector the registry offers
    token_file = "/etc/bpfscope/token"    # required to listen on a non-loopback address
    kubernetes = true                     # pod labels from the API (default: on inside a cluster)
    bpf_stats = true                      # program run time (kernel.bpf_stats_enabled while serving)

    [cgnet]                               # one table per collector: its `settings`
    retention = 60

    [execs]
    top = 30

Unknown keys and wrongly typed values are errors (one line), like every other input.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

DEFAULT_LISTEN = "127.0.0.1:9440"
TOP_KEYS = {"listen", "collectors", "token_file", "kubernetes", "bpf_stats"}


@dataclass
class AgentConfig:
    listen: str = DEFAULT_LISTEN
    collectors: list[str] | None = None  # None: all available
    token_file: str | None = None
    kubernetes: bool | None = None  # None: automatic (inside a cluster)
    bpf_stats: bool = True
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # collector name -> its table
    token: str | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def check(self) -> AgentConfig:
        """Validate; read the token. Refuses a non-loopback address without a token."""
        host, _ = split_listen(self.listen)
        if self.token_file:
            self.token = read_token(self.token_file)
        if not is_loopback(host) and not self.token:
            raise UsageError(
                f"refusing to listen on non-loopback address {self.listen} without authentication: "
                "give --token-file FILE (clients then send 'Authorization: Bearer <token>')"
            )
        return self


def split_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT' or ':PORT' (all addresses) -> (host, port)."""
    text = listen.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise UsageError(f"--listen {listen!r}: expected [ADDRESS]:PORT")
        port_s = rest[1:]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise UsageError(f"--listen {listen!r}: expected HOST:PORT")
        if ":" in host:
            raise UsageError(f"--listen {listen!r}: write IPv6 addresses as [ADDRESS]:PORT")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise UsageError(f"--listen {listen!r}: port must be a number from 0 to 65535")
    if host and not all(c.isalnum() or c in ".-:_" for c in host):
        raise UsageError(f"--listen {listen!r}: bad host name")
    return host, int(port_s)


def is_loopback(host: str) -> bool:
    """Only loopback addresses (or names that resolve to nothing else) count; '' / 0.0.0.0 do not."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read token file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"token file {path} is not text") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UsageError(f"token file {path}: the token must be one word of at least 16 characters")
    return token


def load_file(path: str) -> dict[str, Any]:
    """A config file's content: .toml through tomllib, .yaml/.yml through PyYAML."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror}") from None
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UsageError("YAML config files need PyYAML (pip install pyyaml); or use TOML") from None
            data = yaml.safe_load(raw.decode()) or {}
        else:
            import tomllib

            data = tomllib.loads(raw.decode())
    except UsageError:
        raise
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError
        raise UsageError(f"config file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path}: expected a table of settings at the top level")
    return data


def from_sources(file_data: dict[str, Any] | None, flags: dict[str, Any], known_collectors: set[str]) -> AgentConfig:
    """Merge: flags (non-None) win over the file, the file over defaults."""
    data = dict(file_data or {})
    cfg = AgentConfig()
    settings: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in TOP_KEYS:
            continue
        if key in known_collectors:
            if not isinstance(value, dict):
                raise UsageError(f"config: [{key}] must be a table of collector settings")
            settings[key] = value
            continue
        raise UsageError(f"config: unknown key {key!r} (known: {', '.join(sorted(TOP_KEYS | known_collectors))})")
    merged = {k: data.get(k) for k in TOP_KEYS}
    merged.update({k: v for k, v in flags.items() if v is not None})
    if merged.get("listen") is not None:
        if not isinstance(merged["listen"], str):
            raise UsageError("config: listen must be a string HOST:PORT")
        split_listen(merged["listen"])
        cfg.listen = merged["listen"]
    cols = merged.get("collectors")
    if cols is not None:
        if isinstance(cols, str):
            cols = [c.strip() for c in cols.split(",") if c.strip()]
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise UsageError("config: collectors must be a list of names")
        unknown = [c for c in cols if c not in known_collectors]
        if unknown:
            raise UsageError(f"unknown collector(s) {', '.join(unknown)}; available: "
                             f"{', '.join(sorted(known_collectors)) or 'none'}")
        cfg.collectors = list(dict.fromkeys(cols))
    for key in ("kubernetes", "bpf_stats"):
        v = merged.get(key)
        if v is not None:
            if not isinstance(v, bool):
                raise UsageError(f"config: {key} must be true or false, got {v!r}")
            setattr(cfg, key, v)
    tf = merged.get("token_file")
    if tf is not None:
        if not isinstance(tf, str):
            raise UsageError("config: token_file must be a path")
        cfg.token_file = os.path.expanduser(tf)
    cfg.settings = settings
    return cfg
