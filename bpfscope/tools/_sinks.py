"""Where alerts go besides stdout: an append-only log file, an HTTP webhook, Prometheus counters.

Sinks never block the tracing loop: the webhook has its own thread behind a bounded queue;
what does not fit, or cannot be delivered after the retries, is counted as dropped.

Prometheus: METRICS is a module-level registry of counters (alerts by kind and container,
webhook deliveries, retries and drops, lost events). An exporter reads it with
METRICS.samples() / METRICS.exposition(), or registers it with prometheus_client
(`REGISTRY.register(METRICS)`: it has the collect() a custom collector needs).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from ..errors import UsageError

# ------------------------------------------------------------------------------------ metrics

_HELP = {
    "bpfscope_shellwatch_alerts_total": "Interactive shell and login session alerts raised.",
    "bpfscope_shellwatch_webhook_delivered_total": "Alerts the webhook accepted (2xx).",
    "bpfscope_shellwatch_webhook_retries_total": "Webhook delivery attempts beyond the first.",
    "bpfscope_shellwatch_webhook_dropped_total": "Alerts never delivered to the webhook (queue full, or failed after retries).",
    "bpfscope_shellwatch_log_errors_total": "Alerts that could not be written to the log file.",
    "bpfscope_shellwatch_lost_events_total": "Kernel events lost (ring buffer full) before the rule could see them.",
}


class AlertMetrics:
    """Thread-safe monotonic counters with labels, readable by a Prometheus exporter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, name: str, labels: dict[str, str] | None = None, value: float = 1) -> None:
        if name not in _HELP:
            raise KeyError(f"unknown metric {name}")
        key = (name, tuple(sorted((labels or {}).items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + value

    def value(self, name: str, **labels: str) -> float:
        """Sum over the series of `name` whose labels include `labels`."""
        with self._lock:
            return sum(v for (n, ls), v in self._values.items() if n == name and set(labels.items()) <= set(ls))

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        with self._lock:
            return [(n, dict(ls), v) for (n, ls), v in sorted(self._values.items())]

    def exposition(self) -> str:
        """Prometheus text format."""
        lines: list[str] = []
        done: set[str] = set()
        for name, labels, value in self.samples():
            if name not in done:
                done.add(name)
                lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} counter"]
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")
        return "\n".join(lines) + ("\n" if lines else "")

    def collect(self) -> Iterator[Any]:
        """prometheus_client custom-collector protocol (imported only when called)."""
        from prometheus_client.core import CounterMetricFamily

        by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        for name, labels, value in self.samples():
            by_name.setdefault(name, []).append((labels, value))
        for name, series in by_name.items():
            keys = sorted({k for labels, _ in series for k in labels})
            fam = CounterMetricFamily(name.removesuffix("_total"), _HELP[name], labels=keys)
            for labels, value in series:
                fam.add_metric([labels.get(k, "") for k in keys], value)
            yield fam


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


METRICS = AlertMetrics()


class CounterSink:
    """Counts alerts for Prometheus: bpfscope_shellwatch_alerts_total{kind, container}."""

    def __init__(self, metrics: AlertMetrics = METRICS):
        self.metrics = metrics

    def emit(self, alert: dict[str, Any]) -> None:
        self.metrics.inc("bpfscope_shellwatch_alerts_total",
                         {"kind": str(alert.get("alert", "shell")), "container": str(bool(alert.get("container"))).lower()})

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}


# ------------------------------------------------------------------------------------ log file

class LogFileSink:
    """Appends one JSON object per line to a file (created 0600), flushed per alert."""

    def __init__(self, path: str, metrics: AlertMetrics = METRICS):
        self.path = path
        self.metrics = metrics
        self.errors = 0
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise UsageError(f"log: cannot open {path} for appending: {e.strerror}") from None
        if not os.path.isfile(path):
            os.close(self.fd)
            raise UsageError(f"log: {path} is not a regular file")

    def emit(self, alert: dict[str, Any]) -> None:
        line = (json.dumps(alert, ensure_ascii=False, default=str) + "\n").encode()
        try:
            os.write(self.fd, line)  # O_APPEND: one write per line keeps lines whole
        except OSError:
            self.errors += 1
            self.metrics.inc("bpfscope_shellwatch_log_errors_total")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def stats(self) -> dict[str, int]:
        return {"log_errors": self.errors}


# ------------------------------------------------------------------------------------ webhook

def check_webhook_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"webhook: {url!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UsageError(f"webhook: bad port in {url!r}") from None
    return url


class WebhookSink:
    """POSTs each alert as JSON from a worker thread.

    emit() only enqueues (never blocks): with the queue full the alert is dropped and counted.
    Each alert gets 1 + retries attempts, `timeout` seconds each, waiting backoff * 2**n between
    them; 4xx answers other than 408/429 are final. An alert still undelivered after that is
    dropped and counted. close() lets the queue drain for a moment, then counts what is left.
    """

    def __init__(self, url: str, timeout: float = 2.0, retries: int = 3, backoff: float = 0.5,
                 queue_size: int = 1000, metrics: AlertMetrics = METRICS):
        self.url = check_webhook_url(url)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.metrics = metrics
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self.delivered = self.dropped = self.retried = self.queue_full = self.failed = 0
        self.last_error = ""
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._abort = threading.Event()
        # direct connections: an alert must not leak through a proxy picked up from the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._thread = threading.Thread(target=self._run, name="shellwatch-webhook", daemon=True)
        self._thread.start()

    # -- producer side (the tracing loop)
    def emit(self, alert: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(alert)
        except queue.Full:
            self._count_drop("queue_full")

    def _count_drop(self, reason: str) -> None:
        with self._lock:
            self.dropped += 1
            if reason == "queue_full":
                self.queue_full += 1
            else:
                self.failed += 1
        self.metrics.inc("bpfscope_shellwatch_webhook_dropped_total", {"reason": reason})

    # -- worker
    def _run(self) -> None:
        while True:
            try:
                alert = self.queue.get(timeout=0.05)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            if self._abort.is_set():
                self._count_drop("failed")
                continue
            self._deliver(alert)

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "bpfscope-shellwatch"},
        )
        with self._opener.open(req, timeout=self.timeout) as resp:
            resp.read(65536)

    def _deliver(self, alert: dict[str, Any]) -> None:
        body = json.dumps(alert, ensure_ascii=False, default=str).encode()
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
                self.metrics.inc("bpfscope_shellwatch_webhook_retries_total")
                if self._abort.wait(self.backoff * 2 ** (attempt - 1)):
                    break
            try:
                self._post(body)
            except urllib.error.HTTPError as e:
                self.last_error = f"HTTP {e.code}"
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    break  # the server refuses this alert: retrying will not help
                continue
            except (OSError, ValueError) as e:  # URLError, timeouts, refused connections
                self.last_error = str(getattr(e, "reason", e))
                continue
            with self._lock:
                self.delivered += 1
            self.metrics.inc("bpfscope_shellwatch_webhook_delivered_total")
            return
        self._count_drop("failed")

    def close(self, drain: float | None = None) -> None:
        """Stop taking alerts; deliver what is queued for up to `drain` seconds, drop the rest."""
        self._closing.set()
        self._thread.join(drain if drain is not None else min(2.0, self.timeout + 0.5))
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(self.timeout + 1.0)
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
            self._count_drop("failed")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "webhook_delivered": self.delivered,
                "webhook_dropped": self.dropped,
                "webhook_retries": self.retried,
                "webhook_queue_full": self.queue_full,
                "webhook_failed": self.failed,
            }

