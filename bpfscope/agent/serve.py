"""`bpfscope serve`: the node agent. Runs the continuous collectors and serves /metrics.

    bpfscope serve [--listen HOST:PORT] [--collectors cgnet,execs,...] [--config FILE]
                   [--token-file FILE] [--kubernetes] [--no-bpf-stats]

Collectors start (BPF loaded and attached) before the socket is bound, so a kernel that refuses
a program is a one-line error, not a half-running agent. SIGINT/SIGTERM stop the web server,
then every BPF object is closed and bpf_stats restored.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time

from ..errors import BpfscopeError, UsageError
from .config import DEFAULT_LISTEN, AgentConfig, from_sources, load_file, split_listen

log = logging.getLogger("bpfscope.agent")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpfscope serve",
        description="Run the node agent: continuous BPF collectors exported on /metrics (Prometheus).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  bpfscope serve                                  # 127.0.0.1:9440, every collector\n"
               "  bpfscope serve --collectors cgnet,execs\n"
               "  bpfscope serve --listen 0.0.0.0:9440 --token-file /etc/bpfscope/token\n"
               "  bpfscope serve --config /etc/bpfscope/agent.toml",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help=f"address to serve on (default: {DEFAULT_LISTEN}; "
                   "a non-loopback address needs --token-file)")
    p.add_argument("--collectors", metavar="LIST", help="comma-separated collectors to run (default: all)")
    p.add_argument("--config", metavar="FILE", help="TOML or YAML config file (flags override it)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the bearer token clients must send "
                   "(created with a random token, mode 0600, if it does not exist)")
    k8s = p.add_mutually_exclusive_group()
    k8s.add_argument("--kubernetes", dest="kubernetes", action="store_true", default=None,
                     help="pod labels from the Kubernetes API (default: on inside a cluster)")
    k8s.add_argument("--no-kubernetes", dest="kubernetes", action="store_false", help="no pod labels")
    p.add_argument("--no-bpf-stats", dest="bpf_stats", action="store_false", default=None,
                   help="do not turn on kernel.bpf_stats_enabled (no program run time)")
    p.add_argument("--list-collectors", action="store_true", help="list the collectors and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    from . import api, security

    security.add_arguments(p)
    api.add_arguments(p)
    return p


def build_config(ns: argparse.Namespace, known: set[str]) -> AgentConfig:
    file_data = load_file(ns.config) if ns.config else None
    flags = {"listen": ns.listen, "collectors": ns.collectors, "token_file": ns.token_file,
             "kubernetes": ns.kubernetes, "bpf_stats": ns.bpf_stats}
    from .security import ensure_token_file

    config = from_sources(file_data, flags, known)
    ensure_token_file(config.token_file)  # generated (0600, printed once) if missing
    return config.check()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not host:
        host, family = "::", socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise BpfscopeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str]) -> int:
    ns = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO, format="bpfscope serve: %(message)s",
                        stream=sys.stderr)
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if ns.verbose else logging.WARNING)
    from .metrics import Agent, available_collectors

    available = available_collectors()
    if ns.list_collectors:
        for name, cls in sorted(available.items()):
            print(f"  {name:<12} {cls.help}")
        return 0
    from .api import from_args as api_config

    api_cfg = api_config(ns)  # limits, TLS, CORS: checked before anything is created
    config = build_config(ns, set(available))
    host, port = split_listen(config.listen)

    # SIGINT/SIGTERM: uvicorn installs its own handlers while serving and, once it has shut down,
    # re-raises the signal with the handlers it found; these make that a no-op, so we get to close.
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    agent = Agent(config)
    try:
        agent.start()
        if stop.is_set():
            return 0
        _serve(config, agent, host, port, stop, api_cfg)
    finally:
        agent.close()
    return 0


def _serve(config: AgentConfig, agent, host: str, port: int, stop: threading.Event,  # noqa: ANN001
           api_cfg=None) -> None:  # noqa: ANN001
    import uvicorn

    from .app import create_app

    app = create_app(config, agent=agent, api_config=api_cfg)
    sock = bind(host, port)
    actual = sock.getsockname()
    shown = f"[{actual[0]}]" if ":" in actual[0] else actual[0]
    tls = api_cfg.security.uvicorn_kwargs() if api_cfg is not None else {}
    url = f"{'https' if tls else 'http'}://{shown}:{actual[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=3, server_header=False, **tls))

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        if not server.started:
            return
        cols = ", ".join(f"{n} ({c.mode})" for n, c in agent.collectors.items())
        failed = "; ".join(f"{n}: {why}" for n, why in agent.failed.items())
        log.info("serving %s/metrics; collectors: %s%s%s", url, cols, f"; not running: {failed}" if failed else "",
                 "; bearer token required" if config.token else "")
        ready_file = os.environ.get("BPFSCOPE_READY_FILE")
        if ready_file:  # tests and bench wait for this (first line as RunContext.mark_attached writes it)
            with open(ready_file + ".tmp", "w") as f:
                f.write(f"{time.time():.6f}\n{url}\n")
            os.replace(ready_file + ".tmp", ready_file)

    threading.Thread(target=announce, name="bpfscope-announce", daemon=True).start()
    try:
        server.run(sockets=[sock])
    except SystemExit as e:  # uvicorn exits on startup failures
        raise UsageError(f"web server failed to start (exit {e.code})") from None
    finally:
        sock.close()
