"""Real QUIC peers for tests: an HTTP/3 server that records what reaches it, and an HTTP/3 client.

Both are aioquic (the QUIC stack mitmproxy itself uses), with certificates the
tests generate. Importable (`RecordingServer`, `get`) and runnable, so the same
peers work on loopback and inside network namespaces:

    python -m tests.quicpeers serve --cert C --key K --port P [--host H] [--record FILE]
        Serve HTTP/3 on H:P (default 127.0.0.1; port 0 picks one) until killed. Prints one line
        `quicpeers listening on HOST:PORT` once ready. Every request is answered 200 with the body
        `quicpeers ok <path>`. With --record, every event is appended to FILE as one JSON line:
        {"event": "request", "method": ..., "path": ..., "authority": ...}
        {"event": "connection", "handshake_completed": bool, "stream_frames": int,
         "error_code": int | null, "reason": str}   (when a QUIC connection ends)

    python -m tests.quicpeers get URL --connect HOST:PORT --server-name N [--insecure | --ca FILE] [--timeout S]
        One HTTP/3 GET of URL's path, sent to HOST:PORT with SNI/authority N. Prints one JSON
        object: {"status": int | null, "body": str, "headers": {...}, "error": str | null,
        "close_code": int | null, "close_reason": str | null}. Exit status 0 when a response
        arrived, 1 otherwise (refused, closed, timed out).

"No request reached the upstream" is `server.requests == []`; "not even an
Initial packet" is `server.datagrams == 0`; "closed before any stream frame" is
a recorded connection with `stream_frames == 0` and `handshake_completed is
False`. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamDataReceived

# -- server ---------------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What one QUIC connection to the server did, filled in as it happens."""

    handshake_completed: bool = False
    stream_frames: int = 0
    error_code: int | None = None
    reason: str = ""
    ended: bool = False


@dataclass
class Request:
    method: str
    path: str
    authority: str


class _ServerProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, owner: RecordingServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._h3: H3Connection | None = None
        self._seen = Seen()
        self._pending: dict[int, Request] = {}
        owner.connections.append(self._seen)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self._seen.handshake_completed = True
            self._h3 = H3Connection(self._quic)
        elif isinstance(event, StreamDataReceived):
            self._seen.stream_frames += 1
        elif isinstance(event, ConnectionTerminated) and not self._seen.ended:
            self._seen.ended, self._seen.error_code, self._seen.reason = True, event.error_code, event.reason_phrase
            self._owner.note({"event": "connection", **{k: v for k, v in asdict(self._seen).items() if k != "ended"}})
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                self._h3_event(h3_event)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._seen.ended:
            self._seen.ended = True
            self._owner.note({"event": "connection", **{k: v for k, v in asdict(self._seen).items() if k != "ended"}})
        super().connection_lost(exc)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            headers = {k.decode(): v.decode("utf-8", "replace") for k, v in event.headers}
            request = Request(headers.get(":method", ""), headers.get(":path", ""), headers.get(":authority", ""))
            self._owner.add_request(request)
            if event.stream_ended:
                self._answer(event.stream_id, request)
            else:
                self._pending[event.stream_id] = request
        elif isinstance(event, DataReceived) and event.stream_ended and event.stream_id in self._pending:
            self._answer(event.stream_id, self._pending.pop(event.stream_id))

    def _answer(self, stream_id: int, request: Request) -> None:
        assert self._h3 is not None
        body = f"quicpeers ok {request.path}".encode()
        self._h3.send_headers(
            stream_id, [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        )
        self._h3.send_data(stream_id, body, end_stream=True)
        self.transmit()


class RecordingServer:
    """An HTTP/3 server on its own thread and event loop; `requests` and `connections` fill as clients arrive."""

    def __init__(
        self, cert: Path | str, key: Path | str, *, host: str = "127.0.0.1", port: int = 0, record: Path | str | None = None
    ) -> None:
        self.cert, self.key, self.host, self.port = str(cert), str(key), host, port
        self.record = Path(record) if record else None
        self.requests: list[Request] = []
        self.connections: list[Seen] = []
        self.datagrams = 0  # every UDP datagram that arrived, QUIC or not: 0 means the server saw nothing at all
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def add_request(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)
        self.note({"event": "request", **asdict(request)})

    def note(self, entry: dict[str, Any]) -> None:
        if self.record is not None:
            with self._lock, self.record.open("a") as out:
                out.write(json.dumps(entry) + "\n")

    @property
    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def start(self, timeout: float = 10) -> RecordingServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(self._serve())
                self.port = self._server._transport.get_extra_info("sockname")[1]
            except BaseException as exc:  # surfaced to start()'s caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.close()

        self._thread = threading.Thread(target=run, name="quicpeers server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("quicpeers server did not start")
        if failure:
            raise failure[0]
        return self

    async def _serve(self) -> Any:
        configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536)
        configuration.load_cert_chain(self.cert, self.key)
        server = await serve(
            self.host,
            self.port,
            configuration=configuration,
            create_protocol=lambda *a, **k: _ServerProtocol(*a, owner=self, **k),
        )
        received = server.datagram_received

        def counted(data: bytes, addr: Any) -> None:
            with self._lock:
                self.datagrams += 1
            received(data, addr)

        server.datagram_received = counted  # type: ignore[method-assign]
        return server

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None


# -- client ---------------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str | None = None
    close_code: int | None = None  # the QUIC CONNECTION_CLOSE error code the peer (or aioquic) ended with
    close_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None


class _ClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.closed: ConnectionTerminated | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.response = Response()
        self._body = bytearray()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.closed = event
            if not self.done.done():
                self.done.set_result(None)
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                for k, v in h3_event.headers:
                    if k == b":status":
                        self.response.status = int(v)
                    else:
                        self.response.headers[k.decode()] = v.decode("utf-8", "replace")
            elif isinstance(h3_event, DataReceived):
                self._body += h3_event.data
            if getattr(h3_event, "stream_ended", False) and not self.done.done():
                self.done.set_result(None)

    def request(self, authority: str, path: str) -> None:
        stream_id = self._quic.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()), (b":path", path.encode())]
        headers.append((b"user-agent", b"quicpeers"))
        self.h3.send_headers(stream_id, headers, end_stream=True)
        self.transmit()


async def _get(
    url: str, server_name: str, ca_file: str | None, verify: bool, connect_host: str, port: int, timeout: float
) -> Response:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name, idle_timeout=timeout)
    configuration.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if ca_file:
        configuration.load_verify_locations(ca_file)
    made: list[_ClientProtocol] = []

    def factory(*args: Any, **kwargs: Any) -> _ClientProtocol:
        made.append(_ClientProtocol(*args, **kwargs))
        return made[-1]

    result = Response()
    try:
        async with connect(connect_host, port, configuration=configuration, create_protocol=factory) as protocol:
            assert isinstance(protocol, _ClientProtocol)
            protocol.request(parts.netloc or server_name, path)
            await protocol.done
            result = protocol.response
            result.body = protocol._body.decode("utf-8", "replace")
    except ConnectionError as exc:
        result.error = f"connection failed: {exc}"
    if made and made[0].closed is not None:
        result.close_code, result.close_reason = made[0].closed.error_code, made[0].closed.reason_phrase
        if result.status is None and result.error is None:
            result.error = f"connection closed: {made[0].closed.reason_phrase or hex(made[0].closed.error_code)}"
    return result


def get(
    url: str,
    *,
    server_name: str,
    connect_host: str = "127.0.0.1",
    port: int,
    ca_file: str | Path | None = None,
    verify: bool = True,
    timeout: float = 10,
) -> Response:
    """One HTTP/3 GET; never raises for network outcomes (see `Response.error`), and never waits past `timeout`."""

    async def bounded() -> Response:
        try:
            return await asyncio.wait_for(
                _get(url, server_name, str(ca_file) if ca_file else None, verify, connect_host, port, timeout), timeout
            )
        except TimeoutError:
            return Response(error=f"timed out after {timeout}s")

    return asyncio.run(bounded())


# -- command line ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.quicpeers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve HTTP/3 and record what arrives")
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--record", help="append one JSON line per request and per ended connection")
    g = sub.add_parser("get", help="one HTTP/3 GET, result as JSON")
    g.add_argument("url")
    g.add_argument("--connect", required=True, metavar="HOST:PORT")
    g.add_argument("--server-name", required=True)
    trust = g.add_mutually_exclusive_group()
    trust.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    trust.add_argument("--ca", help="trust this CA file (default: the system store)")
    g.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args(argv)
    if args.command == "serve":
        server = RecordingServer(args.cert, args.key, host=args.host, port=args.port, record=args.record).start()
        print(f"quicpeers listening on {args.host}:{server.port}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
        return 0
    host, _, port = args.connect.rpartition(":")
    response = get(
        args.url,
        server_name=args.server_name,
        connect_host=host.strip("[]"),
        port=int(port),
        ca_file=args.ca,
        verify=not args.insecure,
        timeout=args.timeout,
    )
    print(json.dumps(asdict(response)), flush=True)
    return 0 if response.ok else 1


if __name__ == "__main__":
    sys.exit(main())
