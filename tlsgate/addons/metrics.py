"""Serves /metrics, /healthz and /readyz, and counts what passes through the hooks.

The endpoint runs on its own port, thread and event loop so a scrape never
waits on the proxy's event loop, and a busy proxy never waits on a scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tls
from prometheus_client import make_wsgi_app

from tlsgate.addons.state import Connections
from tlsgate.addons.verdicts import verdict_of
from tlsgate.policy import Policy
from tlsgate.sinks.metrics import Metrics
from tlsgate.tls.transport import transport_of

logger = logging.getLogger("tlsgate.metrics")


def parse_listen(spec: str) -> tuple[str, int] | None:
    """`HOST:PORT` (port 0 picks a free one), or empty for no endpoint."""
    if not spec:
        return None
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{spec!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


MAX_CONNECTIONS = 64  # open at once; the next one closes the oldest that has not sent its request
HEAD_TIMEOUT = 10.0  # seconds to send a request head; an idle connection is closed after it
MAX_HEAD = 8192


class _Endpoint:
    """A small HTTP/1.1 server on its own event loop in its own thread.

    One thread whatever the number of connections (the standard library's
    threading server held a thread per idle connection: 1,000 idle sockets,
    1,000 threads); each connection gets HEAD_TIMEOUT to send its request and
    one answer, and at most MAX_CONNECTIONS are open at once.

    At the cap, a new connection closes the oldest one still waiting for its
    request head instead of being refused itself: refusing the newcomer let any
    local process hold 64 idle connections and fail every scrape for as long as
    it held them. A scraper sends its request as soon as it connects, so only
    connections that sit idle are ever closed; the bound stays 64.
    """

    def __init__(self, address: tuple[str, int], metrics: Metrics, ready: Callable[[], tuple[bool, str]]) -> None:
        """Binds at once (raising OSError like a socket would), then serves from `start()`."""
        self.metrics = metrics
        self.app = make_wsgi_app(metrics.registry)
        self.ready = ready
        # Open connections, oldest first; True once the request head is in (being answered, not to be closed).
        self.connections: OrderedDict[asyncio.StreamWriter, bool] = OrderedDict()
        self.evicted = 0
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._bound = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(address,), name="tlsgate metrics", daemon=True)
        self._thread.start()
        self._bound.wait(10)
        if self._error is not None or self._server is None:
            self._thread.join(5)
            raise self._error if isinstance(self._error, OSError) else OSError(f"metrics endpoint did not start: {self._error}")
        self.server_address: tuple[Any, ...] = self._server.sockets[0].getsockname()  # (host, port[, flow, scope])

    def _run(self, address: tuple[str, int]) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(asyncio.start_server(self._serve, address[0], address[1], limit=MAX_HEAD))
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._bound.set()
            self.loop.close()
            return
        self._bound.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    def _make_room(self) -> None:
        """Close the oldest connection without a request head in; if every one is being answered, the oldest."""
        victim = next((w for w, answering in self.connections.items() if not answering), None)
        if victim is None:
            victim = next(iter(self.connections))
        del self.connections[victim]
        self.evicted += 1
        victim.transport.abort()  # its reader wakes with an error and its task ends

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= MAX_CONNECTIONS:
            self._make_room()
        self.connections[writer] = False
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            if writer not in self.connections:
                return  # closed to make room meanwhile
            self.connections[writer] = True
            status, headers, body = self.answer(head)
            lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", *(f"{k}: {v}" for k, v in headers)]
            lines += [f"Content-Length: {len(body)}", "Connection: close"]
            method = head.split(b" ", 1)[0]
            writer.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (b"" if method == b"HEAD" else body))
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        finally:
            self.connections.pop(writer, None)
            writer.close()

    def answer(self, head: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and body for one request head. /metrics is prometheus_client's own exposition
        (text or OpenMetrics by the Accept header, gzip by Accept-Encoding, `name[]` filters); HEAD gets
        GET's headers without the body."""
        request_line, _, rest = head.decode("latin-1").partition("\r\n")
        parts = request_line.split()
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
            return 405, [*text, ("Allow", "GET, HEAD")], b"GET /metrics, /healthz or /readyz\n"
        path, _, query = parts[1].partition("?")
        if path == "/metrics":
            fields = dict(line.split(":", 1) for line in rest.split("\r\n") if ":" in line)
            headers = {name.strip().lower(): value.strip() for name, value in fields.items()}
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "HTTP_ACCEPT": headers.get("accept", ""),
                "HTTP_ACCEPT_ENCODING": headers.get("accept-encoding", ""),
            }
            answered: list[tuple[str, list[tuple[str, str]]]] = []
            body = b"".join(self.app(environ, lambda status, hdrs: answered.append((status, hdrs))))
            status, hdrs = answered[0]
            return int(status.split()[0]), list(hdrs), body
        if path == "/healthz":
            return 200, text, b"ok\n"
        if path == "/readyz":
            ok, why = self.ready()
            return (200 if ok else 503), text, f"{why}\n".encode()
        return 404, text, b"try /metrics, /healthz or /readyz\n"


class MetricsExporter:
    """Serves the metrics, and counts what no verdict records: connections, handshakes, requests as they end.

    A request is counted by the verdict the recording path tied to its flow
    (`verdict_of`), the policy through the shared state's store: this add-on
    learns nothing from another add-on.
    """

    def __init__(self, connections: Connections, metrics: Metrics) -> None:
        self.store = connections.store
        self.metrics = metrics
        self._endpoint: _Endpoint | None = None
        self.store.subscribe(self._on_reload)

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
        host, port = self._endpoint.server_address[:2]
        logger.info(f"tlsgate: metrics listening at http://{host}:{port}/metrics")

    def done(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
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
        self.metrics.handshake("client", True, data.conn.tls_version, data.conn.cipher, transport_of(data.conn))

    def tls_failed_client(self, data: tls.TlsData) -> None:
        self.metrics.handshake("client", False, None, None, transport_of(data.conn))

    def tls_established_server(self, data: tls.TlsData) -> None:
        self.metrics.handshake("server", True, data.conn.tls_version, data.conn.cipher, transport_of(data.conn))

    def tls_failed_server(self, data: tls.TlsData) -> None:
        self.metrics.handshake("server", False, None, None, transport_of(data.conn))

    def response(self, flow: http.HTTPFlow) -> None:
        verdict = verdict_of(flow)
        decision = verdict.action if verdict is not None else "allowed"
        self.metrics.request(decision, verdict.check if verdict is not None else None, transport_of(flow.client_conn))
        # The upstream's answer time: not a block page tlsgate wrote, nor a fault page after a clock ran out.
        answered = flow.response.timestamp_start if flow.response else None
        if decision not in ("blocked", "failed") and answered and flow.request.timestamp_end:
            self.metrics.latency.observe(max(0.0, answered - flow.request.timestamp_end))

    def error(self, flow: http.HTTPFlow) -> None:
        verdict = verdict_of(flow)
        decision = verdict.action if verdict is not None else "error"
        self.metrics.request(decision, verdict.check if verdict is not None else None, transport_of(flow.client_conn))
