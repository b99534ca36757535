"""The agent's exposure rules: bearer token, TLS, CORS, Host checks, browser-facing headers.

The seed ("BCC REST-ified") served tools unauthenticated to the world. Here:

- loopback by default; any other address needs a bearer token (config.AgentConfig.check).
  `--token-file FILE` reads the token, or, when FILE does not exist yet, generates one, writes
  it with mode 0600 (created exclusively, never through a symlink) and prints it once.
- the token is compared in constant time (app.create_app's require_token).
- on loopback without a token, requests must name a loopback Host: a web page elsewhere cannot
  reach the agent through DNS rebinding. Cross-site POSTs cannot start runs either: the API
  only takes application/json bodies, which a browser sends cross-origin only after a CORS
  preflight, and no CORS headers are sent unless --cors-origin says so.
- TLS with --tls-cert/--tls-key (both checked before the agent starts).
- the web page gets a strict Content-Security-Policy (no third-party anything).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import ssl
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

log = logging.getLogger("bpfscope.agent")

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]", "ip6-localhost")


@dataclass
class SecurityOptions:
    tls_cert: str | None = None
    tls_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)  # extra Host names accepted without a token

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def uvicorn_kwargs(self) -> dict[str, Any]:
        if not self.tls:
            return {}
        return {"ssl_certfile": self.tls_cert, "ssl_keyfile": self.tls_key}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security")
    g.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM; needs --tls-key)")
    g.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    g.add_argument("--cors-origin", metavar="ORIGIN", action="append", default=[],
                   help="allow browser pages from ORIGIN (e.g. https://grafana.example) to call the API; "
                        "repeatable (default: no CORS)")
    g.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                   help="without a token, also accept requests addressed to Host NAME (default: loopback names)")


def from_args(ns: argparse.Namespace) -> SecurityOptions:
    opts = SecurityOptions(
        tls_cert=getattr(ns, "tls_cert", None), tls_key=getattr(ns, "tls_key", None),
        cors_origins=list(getattr(ns, "cors_origin", None) or []),
        allowed_hosts=list(getattr(ns, "allow_host", None) or []),
    )
    check_tls(opts)
    for origin in opts.cors_origins:
        if origin == "*" or not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise UsageError(f"--cors-origin {origin!r}: give one origin like https://host[:port] ('*' is refused)")
    return opts


def check_tls(opts: SecurityOptions) -> None:
    if bool(opts.tls_cert) != bool(opts.tls_key):
        raise UsageError("TLS needs both --tls-cert and --tls-key")
    if not opts.tls_cert:
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
    except FileNotFoundError as e:
        raise UsageError(f"TLS: {e.filename}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise UsageError(f"TLS: cannot use {opts.tls_cert} / {opts.tls_key}: {e}") from None


# ---------------------------------------------------------------------------------------- token
def ensure_token_file(path: str | None, out: Any = None) -> bool:
    """Create `path` with a fresh random token if it does not exist; True if one was generated.

    The file is created exclusively with mode 0600 (O_EXCL|O_NOFOLLOW: never through a
    symlink, never truncating someone else's file) and the token is printed once.
    """
    if not path:
        return False
    path = os.path.expanduser(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            log.warning("token file %s is readable by group or others (mode %o): chmod 600 it",
                        path, stat.S_IMODE(st.st_mode))
        return False
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise UsageError(f"cannot create token file {path}: its directory does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot create token file {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    (out or sys.stderr).write(
        f"bpfscope serve: generated a bearer token in {path} (mode 0600); it is shown only this once:\n"
        f"  {token}\n"
        f"clients send: Authorization: Bearer <token>\n"
    )
    (out or sys.stderr).flush()
    return True


def bearer_ok(authorization: str, token: str | None) -> bool:
    """Whether an Authorization header value carries the token (always, when none is set):
    the one check behind every route and the status fast path."""
    if not token:
        return True
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and token_matches(given.strip(), token)


def token_matches(given: str | bytes, token: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    import hmac

    if isinstance(given, str):
        given = given.encode()
    return hmac.compare_digest(given, token.encode())


# ----------------------------------------------------------------------------------- middleware
class HostCheck:
    """Pure ASGI middleware: without a token, only requests addressed to an allowed Host pass
    (defeats DNS rebinding against a loopback agent). 421 otherwise."""

    def __init__(self, app: Any, allowed: list[str]):
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            host = ""
            for k, v in scope.get("headers", ()):
                if k == b"host":
                    host = v.decode("latin-1").lower()
                    break
            if _strip_port(host) not in self.allowed:
                if scope["type"] == "http":
                    body = b'{"detail":"Host not allowed: address the agent by a loopback name or use a token"}'
                    await send({"type": "http.response.start", "status": 421,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


PAGE_HEADERS = {
    # The flame graph is an SVG with its own <script> and <style>, shown in a sandboxed blob:
    # iframe; blob: documents inherit this policy, so the page hands those two elements the
    # per-response nonce (nothing else in the SVG can run).
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; "
        "img-src 'self' data: blob:; frame-src blob:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def install(app: Any, host: str, token: str | None, opts: SecurityOptions) -> None:
    """Add the Host check (no token) and CORS (only if configured) to a FastAPI app."""
    if not token:
        allowed = [*LOOPBACK_HOSTS, *opts.allowed_hosts]
        if host:
            allowed.append(f"[{host}]" if ":" in host else host)
        app.add_middleware(HostCheck, allowed=allowed)
    if opts.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=opts.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"], max_age=600)
