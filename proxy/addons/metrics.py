"""Serves /metrics, /healthz and /readyz, and counts what passes through the hooks.

The endpoint runs on its own port and thread so a scrape never waits on the
proxy's event loop, and a busy proxy never waits on a scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mitmproxy import connection, ctx, exceptions, http, tls

from proxy.addons.policy import PolicyStore
from proxy.policy import Policy
from proxy.sinks.metrics import Metrics

logger = logging.getLogger("tlsgate.metrics")


def parse_listen(spec: str) -> tuple[str, int] | None:
    """`HOST:PORT` (port 0 picks a free one), or empty for no endpoint."""
    if not spec:
        return None
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{spec!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def transport(conn: connection.Connection) -> str:
    """The `transport` label: quic for a QUIC connection (mitmproxy's UDP with TLS), tcp for everything else."""
    return "quic" if conn.transport_protocol == "udp" else "tcp"


class _Endpoint(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics, ready: Callable[[], tuple[bool, str]]) -> None:
        self.metrics = metrics
        self.ready = ready
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Endpoint

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            ok, why = self.server.ready()
            self._send(200 if ok else 503, f"{why}\n".encode())
        else:
            self._send(404, b"try /metrics, /healthz or /readyz\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class MetricsExporter:
    def __init__(self, store: PolicyStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self._endpoint: _Endpoint | None = None
        store.subscribe(self._on_reload)

    def load(self, loader) -> None:
        loader.add_option(
            "tlsgate_metrics_listen",
            str,
            "",
            "Serve Prometheus /metrics, /healthz and /readyz on HOST:PORT (port 0 picks a free one). Empty: off.",
        )

    def configure(self, updated: set[str]) -> None:
        if "tlsgate_metrics_listen" in updated:
            try:
                parse_listen(ctx.options.tlsgate_metrics_listen)
            except ValueError as exc:
                raise exceptions.OptionsError(f"tlsgate_metrics_listen: {exc}") from None
            if self._endpoint is not None:
                self._stop()
                self.running()

    def running(self) -> None:
        address = parse_listen(ctx.options.tlsgate_metrics_listen)
        if address is None or self._endpoint is not None:
            return
        try:
            self._endpoint = _Endpoint(address, self.metrics, self.readiness)
        except OSError as exc:
            logger.error(f"tlsgate: cannot serve metrics on {address[0]}:{address[1]}: {exc}")
            return
        threading.Thread(target=self._endpoint.serve_forever, name="tlsgate metrics", daemon=True).start()
        host, port = self._endpoint.server_address[:2]
        logger.info(f"tlsgate: metrics listening at http://{host}:{port}/metrics")

    def done(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._endpoint is not None:
            self._endpoint.shutdown()
            self._endpoint.server_close()
            self._endpoint = None

    def _on_reload(self, result: str, policy: Policy | None) -> None:
        if policy is None:
            self.metrics.on_reload(result, None)
        else:
            patterns = (pattern.text for rule in policy.rules for pattern in rule.hosts)
            self.metrics.on_reload(result, policy.rule_count, patterns)

    def readiness(self) -> tuple[bool, str]:
        if self.store.policy is None:
            return False, "no policy loaded"
        proxyserver = ctx.master.addons.get("proxyserver")
        servers = list(proxyserver.servers) if proxyserver is not None else []
        if not servers or not all(s.is_running for s in servers):
            return False, "proxy not listening"
        return True, f"ready: {self.store.policy.rule_count} rules"

    # -- counters fed by hooks ------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        self.metrics.open_connections.labels("client").inc()

    def client_disconnected(self, client: connection.Client) -> None:
        self.metrics.open_connections.labels("client").dec()

    def server_connected(self, data) -> None:
        self.metrics.open_connections.labels("server").inc()

    def server_disconnected(self, data) -> None:
        self.metrics.open_connections.labels("server").dec()

    def tls_established_client(self, data: tls.TlsData) -> None:
        self.metrics.handshake("client", True, data.conn.tls_version, data.conn.cipher, transport(data.conn))

    def tls_failed_client(self, data: tls.TlsData) -> None:
        self.metrics.handshake("client", False, None, None, transport(data.conn))

    def tls_established_server(self, data: tls.TlsData) -> None:
        self.metrics.handshake("server", True, data.conn.tls_version, data.conn.cipher, transport(data.conn))

    def tls_failed_server(self, data: tls.TlsData) -> None:
        self.metrics.handshake("server", False, None, None, transport(data.conn))

    def response(self, flow: http.HTTPFlow) -> None:
        verdict = flow.metadata.get("tlsgate") or {}
        decision = verdict.get("action", "allowed")
        self.metrics.request(decision, verdict.get("check"), transport(flow.client_conn))
        if decision != "blocked" and flow.response and flow.response.timestamp_start and flow.request.timestamp_end:
            self.metrics.latency.observe(max(0.0, flow.response.timestamp_start - flow.request.timestamp_end))

    def error(self, flow: http.HTTPFlow) -> None:
        verdict = flow.metadata.get("tlsgate") or {}
        self.metrics.request(verdict.get("action", "error"), verdict.get("check"), transport(flow.client_conn))
