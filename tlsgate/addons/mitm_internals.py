"""Every use of mitmproxy's and pyOpenSSL's private names, in one place, with a test that notices when they move.

tlsgate rebuilds TLS connections the way mitmproxy's `tlsconfig` add-on builds
them, changing one thing each time; that needs a few names mitmproxy and
pyOpenSSL do not promise to keep (`_default_ciphers`, `SSL._lib`, ...).
`tests/unit/test_mitm_internals.py` pins the source of the tlsconfig functions
these copies follow, so an upgrade that changes them fails loudly here first.

Client side: the client audits need three changes to what the app is shown: another
certificate (an invalid-certificate probe), another version floor (refuse a
client below `client.min_version`, or let a report-mode or explicitly allowed
old client in), or another offer of versions and suites (a protocol probe).
Everything else (the cipher list but for a protocol probe, curve, DH parameters,
client certificate request, and the ALPN choice via tlsconfig's own callback and
app data) is copied from what tlsconfig configured, so a probed or re-floored
connection differs from a normal one only in what is being tested.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import re
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol, overload

from cryptography import x509
from mitmproxy import certs, ctx, tls
from mitmproxy.addons.tlsconfig import (
    _DEFAULT_CIPHERS_WITH_SECLEVEL_0,
    DEFAULT_HOSTFLAGS,
    TlsConfig,
    _default_ciphers,
    alpn_select_callback,
)
from mitmproxy.net import tls as net_tls
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.quic import QuicTlsData
from OpenSSL import SSL

from tlsgate.tls import versions
from tlsgate.tls.hostnames import to_ascii
from tlsgate.tls.probes import KeyType


def floor_version(word: str) -> net_tls.Version:
    return net_tls.Version[versions.TO_MITMPROXY_OPTION[word]]


def configured_floor() -> str:
    """mitmproxy's client-side minimum (`tls_version_client_min`) in the policy's words; "0.3" when unbounded/SSL 3."""
    return versions.from_mitmproxy_option(ctx.options.tls_version_client_min)


def tlsconfig_addon() -> TlsConfig:
    addon = ctx.master.addons.get("tlsconfig")
    if addon is None:
        raise RuntimeError("mitmproxy's tlsconfig addon is not loaded")
    return addon


def client_connection(
    tls_start: tls.TlsData,
    floor: str | None = None,
    certificate: x509.Certificate | None = None,
    key: KeyType | None = None,
    chain: tuple[x509.Certificate, ...] = (),
    *,
    ceiling: str | None = None,
    ciphers: tuple[str, ...] | None = None,
    weak_certificate: bool = False,
) -> SSL.Connection:
    """Replace tlsconfig's client-side connection; `certificate`/`key` default to tlsconfig's own for the host.

    `ceiling` and `ciphers` (a protocol probe's offer, `@SECLEVEL=0` included when it needs it) become arguments
    of mitmproxy's cached context factory, so they make a context of their own: the contexts of normal
    connections are never touched, and nothing is set on a context after it is built.

    `weak_certificate`: OpenSSL refuses to load a SHA-1-signed or 1024-bit RSA
    certificate at its default security level 1 ("ca md too weak", "ee key too
    small"). Its connection gets a context of its own at level 0, the way
    mitmproxy lowers it for old TLS versions (`@SECLEVEL=0` in the cipher
    string: pyOpenSSL's bindings have no per-connection setter). The cipher list
    is otherwise unchanged, and the client's own security level is untouched:
    that is what the probe tests.
    """
    tlsconfig = tlsconfig_addon()
    previous = tls_start.ssl_conn
    assert previous is not None, "tlsconfig must have built the connection first"
    min_version = floor_version(floor) if floor else net_tls.Version[ctx.options.tls_version_client_min]
    max_version = floor_version(ceiling) if ceiling else net_tls.Version[ctx.options.tls_version_client_max]
    chain_file = None
    extra_chain = [certs.Cert(c) for c in chain]
    if certificate is None or key is None:
        entry = tlsconfig.get_cert(tls_start.context)
        certificate, key, chain_file = entry.cert.to_cryptography(), entry.privatekey, entry.chain_file
        # tlsconfig's own certificate goes with tlsconfig's own chain (mitmproxy 12.3: the intermediates of a
        # `--certs` file, which has no chain file, and the upstream's certificates if the option asks for them)
        if entry.chain_file is None and len(entry.chain_certs) > 1:
            extra_chain.extend(entry.chain_certs)
        if ctx.options.add_upstream_certs_to_client_chain:
            extra_chain.extend(tls_start.context.server.certificate_list)
    offered = ciphers or tuple(tls_start.conn.cipher_list or _default_ciphers(min_version))
    context = net_tls.create_client_proxy_context(
        method=net_tls.Method.TLS_SERVER_METHOD,
        min_version=min_version,
        max_version=max_version,
        cipher_list=_lowered(offered) if weak_certificate else offered,
        ecdh_curve=net_tls.get_curve(ctx.options.tls_ecdh_curve_client),
        chain_file=chain_file,
        request_client_cert=ctx.options.request_client_cert,
        alpn_select_callback=alpn_select_callback,
        extra_chain_certs=tuple(extra_chain),
        dhparams=tlsconfig.certstore.dhparams,
    )
    conn = SSL.Connection(context)
    conn.use_certificate(certificate)
    conn.use_privatekey(key)
    conn.set_app_data(previous.get_app_data())  # tlsconfig's ALPN decision inputs, unchanged
    conn.set_accept_state()
    return conn


def _lowered(ciphers: tuple[str, ...]) -> tuple[str, ...]:
    """The cipher list at security level 0 (OpenSSL applies the last @SECLEVEL it reads)."""
    return (*ciphers, "@SECLEVEL=0")


def legacy_connection(tls_start: tls.TlsData, floor: str) -> SSL.Connection:
    """An upstream connection that can negotiate TLS 1.0/1.1 and legacy suites, for one host only.

    mitmproxy (with OpenSSL 4) refuses to start when its global minimum is below
    TLS 1.2, and that is the right global default. A report-mode rule for a legacy
    backend must still reach it, so this builds that one connection the way
    tlsconfig builds every other (same trust store, same hostname verification,
    same ALPN), only with a lower floor and @SECLEVEL=0.
    """
    server = tls_start.conn
    verify = net_tls.Verify.VERIFY_NONE if ctx.options.ssl_insecure else net_tls.Verify.VERIFY_PEER
    context = net_tls.create_proxy_server_context(
        method=net_tls.Method.TLS_CLIENT_METHOD,
        min_version=floor_version(floor),
        max_version=net_tls.Version[ctx.options.tls_version_server_max],
        cipher_list=_DEFAULT_CIPHERS_WITH_SECLEVEL_0,
        ecdh_curve=net_tls.get_curve(ctx.options.tls_ecdh_curve_server),
        verify=verify,
        ca_path=ctx.options.ssl_verify_upstream_trusted_confdir,
        ca_pemfile=ctx.options.ssl_verify_upstream_trusted_ca,
        client_cert=None,
        legacy_server_connect=True,
    )
    conn = SSL.Connection(context)
    if server.sni:
        verify_host(conn, server.sni, hostflags=DEFAULT_HOSTFLAGS)
    if server.alpn_offers:
        conn.set_alpn_protos(list(server.alpn_offers))
    conn.set_connect_state()
    return conn


def verify_host(conn: SSL.Connection, host: str, hostflags: int | None = None) -> None:
    """Make OpenSSL check the peer's name (or IP address) the way tlsconfig does; pyOpenSSL has no API for it."""
    param = SSL._lib.SSL_get0_param(conn._ssl)
    if hostflags is not None:
        SSL._lib.X509_VERIFY_PARAM_set_hostflags(param, hostflags)
    try:
        ip = ipaddress.ip_address(host).packed
    except ValueError:
        name = to_ascii(host).encode("ascii")
        conn.set_tlsext_host_name(name)
        ok = SSL._lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))
    else:
        ok = SSL._lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))
    SSL._openssl_assert(ok == 1)


@overload
def verify_result(conn: SSL.Connection) -> int: ...
@overload
def verify_result(conn: None) -> None: ...
@overload
def verify_result(conn: SSL.Connection | None) -> int | None: ...
def verify_result(conn: SSL.Connection | None) -> int | None:
    """OpenSSL's verify result code for a connection (0: verified), which pyOpenSSL does not expose."""
    return SSL._lib.SSL_get_verify_result(conn._ssl) if conn is not None else None


def verify_error_text(code: int) -> str:
    return SSL._ffi.string(SSL._lib.X509_verify_cert_error_string(code)).decode()


StapleCallback = Callable[[bytes], bool]
_staple_callbacks: weakref.WeakKeyDictionary[SSL.Connection, StapleCallback] = weakref.WeakKeyDictionary()
_stapling_contexts: weakref.WeakSet[SSL.Context] = weakref.WeakSet()


def request_staple(conn: SSL.Connection, on_staple: StapleCallback) -> None:
    """Ask the server to staple an OCSP response; `on_staple(der)` (b"": it stapled none) says whether the handshake goes on.

    OpenSSL's status callback belongs to the SSL context, and mitmproxy shares
    one context among many upstream connections (`create_proxy_server_context`
    is cached): each such context gets one dispatcher, which hands each
    connection's response to that connection's own callback. OpenSSL calls it
    only for connections that asked for a staple, and reads it at each
    handshake, so setting it on a context already in use (which pyOpenSSL's
    method refuses, hence its unwrapped form) changes nothing for the others.
    """
    context = conn.get_context()
    if context not in _stapling_contexts:
        inspect.unwrap(SSL.Context.set_ocsp_client_callback)(context, _dispatch_staple)
        _stapling_contexts.add(context)
    _staple_callbacks[conn] = on_staple
    conn.request_ocsp()


def _dispatch_staple(conn: SSL.Connection, der: bytes, data: object) -> bool:
    on_staple = _staple_callbacks.pop(conn, None)
    if on_staple is None:
        return True
    try:
        return bool(on_staple(der))
    except Exception:  # noqa: BLE001 - raised inside OpenSSL it would surface as a crash mid-handshake: refuse instead
        logging.getLogger("tlsgate.tls").exception("tlsgate: judging a stapled OCSP response failed; refusing the connection")
        return False


class _ReusePortAsyncio:
    """asyncio as mitmproxy's server module sees it, with listeners that share their port."""

    def __getattr__(self, name: str) -> object:
        return getattr(asyncio, name)

    @staticmethod
    async def start_server(*args: Any, **kwargs: Any) -> asyncio.Server:  # mitmproxy's own arguments, passed on
        kwargs.setdefault("reuse_port", True)
        return await asyncio.start_server(*args, **kwargs)


def share_listening_port() -> None:
    """Only mitmproxy's mode servers get SO_REUSEPORT (for `--workers`); the rest of the process is untouched."""
    from mitmproxy.proxy import mode_servers

    mode_servers.asyncio = _ReusePortAsyncio()  # type: ignore[assignment]


def replace_server_instance(mode_type: str, instance_class: type) -> type:
    """Make mitmproxy start `instance_class` for `--mode <mode_type>`; returns the class it replaced.

    mitmproxy picks a mode's server class from `ServerInstance`'s private
    registry, filled by `__init_subclass__`, which refuses a second class for a
    mode. tlsgate's WireGuard server (one peer per device) takes the place of
    mitmproxy's single-peer one there; `tests/unit/test_wireguard.py` pins the
    source of the registry and of the code the replacement follows.
    """
    from mitmproxy.proxy.mode_servers import ServerInstance

    registry: dict[str, type] = ServerInstance._ServerInstance__modes  # type: ignore[attr-defined]
    previous = registry[mode_type]
    registry[mode_type] = instance_class
    return previous


def close_quic(context: object, conn: object, reason: str) -> bool:
    """Close one QUIC connection from inside a hook, before mitmproxy sends anything more on it.

    mitmproxy's QUIC layer keeps its aioquic connection as `layer.quic` (not a
    promised name). Closed in `tls_established_server`, aioquic has the
    handshake's last flight (the client Finished) still queued: from now on it
    only ever sends CONNECTION_CLOSE, so the server never completes the
    handshake and never receives a stream frame. Returns False when the
    connection's layer cannot be found (the caller must still refuse requests).
    """
    from aioquic.quic.connection import QuicErrorCode
    from mitmproxy.proxy.layers.quic import ClientQuicLayer, ServerQuicLayer

    for layer in getattr(context, "layers", ()):
        if isinstance(layer, (ServerQuicLayer, ClientQuicLayer)) and layer.conn is conn and layer.quic is not None:
            layer.quic.close(error_code=QuicErrorCode.CONNECTION_REFUSED, reason_phrase=reason[:200])
            return True
    return False


# An ALPN value no client offers: a server that only speaks it fails every QUIC handshake at the ClientHello.
REFUSED_ALPN = "tlsgate-refused-quic"


def refuse_handshake(data: QuicTlsData) -> None:
    """Make this client-side QUIC handshake fail at the ClientHello, with a CONNECTION_CLOSE and nothing else.

    Here because it leans on what aioquic does with settings mitmproxy passes
    through, not on a promise: with no common ALPN it closes before any
    certificate, and with no settings mitmproxy drops the connection.
    """
    if data.settings is None or not data.conn.alpn_offers:
        # Without an ALPN offer aioquic would not fail on ALPN: provide no settings, and mitmproxy drops the
        # connection (silently, but still before any certificate or upstream packet).
        data.settings = None
        return
    data.settings.alpn_protocols = [REFUSED_ALPN]


def quic_client_id(context: object, conn: object) -> str | None:
    """The original destination connection ID (hex) of a client's QUIC connection, as aioquic's log lines show it.

    Read from the client's first Initial packet, which mitmproxy's client QUIC
    layer still buffers (`handshake_datagram_buf`, not a promised name) when
    the `quic_start_client` hook runs. None when it cannot be found.
    """
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import pull_quic_header
    from mitmproxy.proxy.layers.quic import ClientQuicLayer

    for layer in getattr(context, "layers", ()):
        if isinstance(layer, ClientQuicLayer) and layer.conn is conn:
            buffered = getattr(layer, "handshake_datagram_buf", None)
            if not buffered:
                return None
            try:
                return pull_quic_header(Buffer(data=buffered[0])).destination_cid.hex()
            except Exception:  # noqa: BLE001 - a packet aioquic cannot read gets no console annotation, nothing worse
                return None
    return None


# mitmproxy's advice when an eager connection fails; tlsgate refuses `lazy` (see UpstreamTls.configure).
LAZY_ADVICE = re.compile(
    r"\s*If you plan to redirect requests away from this server, "
    r"consider setting `connection_strategy` to `lazy` to suppress early connections\.?"
)
EAGER_ADVICE = (
    " tlsgate keeps connection_strategy=eager (it judges the server before the app's request is read, and refuses "
    "lazy): if tlsgate refused this server, its finding names the check, the rule and what to change; otherwise "
    "check that the server is reachable from here (or --resolve)."
)


def corrected_advice(text: str) -> str:
    """`text` with mitmproxy's `connection_strategy=lazy` advice replaced by advice that holds under tlsgate."""
    return LAZY_ADVICE.sub(EAGER_ADVICE, text)


class _EagerAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "connection_strategy` to `lazy`" in message:
            record.msg, record.args = corrected_advice(message), ()
        return True


def correct_connection_advice() -> None:
    """Rewrite the advice in mitmproxy's proxy-server log lines (the text lives in its TLS, QUIC and HTTP layers)."""
    server_logger = logging.getLogger("mitmproxy.proxy.server")
    if not any(isinstance(f, _EagerAdvice) for f in server_logger.filters):
        server_logger.addFilter(_EagerAdvice())


# -- request-head bound (tlsgate_max_request_head) ------------------------------------------------------

_HEAD_END = re.compile(rb"\n\r?\n")  # what h11's ReceiveBuffer.maybe_extract_lines takes for the end of a head
_HEAD_REFUSED_BODY = b"request head too large (tlsgate_max_request_head)\n"
HEAD_REFUSED = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_HEAD_REFUSED_BODY), _HEAD_REFUSED_BODY)
)


def head_overflows(data: bytes, limit: int) -> bool:
    """Whether the head at the start of `data` does not end within `limit` bytes (leading blank lines, which
    mitmproxy skips two bytes per read, count against it too)."""
    if not limit or len(data) <= limit:
        return False
    stripped = data.lstrip(b"\r\n")
    skipped = len(data) - len(stripped)
    return skipped >= limit or _HEAD_END.search(stripped, 0, limit - skipped) is None


def bound_request_heads(limit: Callable[[], int], refuse: Callable[[Any, int, int], bytes]) -> None:
    """Answer an HTTP/1 request head longer than `limit()` bytes with `refuse(context, size, limit)` and close.

    mitmproxy's `Http1Server.read_headers` keeps reading until the blank line
    ("FIXME: protect against header size DoS"); its buffer (`buf`, h11's
    ReceiveBuffer) is not a promised name. The check runs on each read before
    mitmproxy's own parsing, so at most `limit` plus one read (64 KiB) is ever
    held; the 431 is sent, the connection closed and the head never parsed, so
    no flow exists and nothing goes upstream. `refuse` may raise: a plain 431
    is sent then. `tests/unit/test_mitm_internals.py` pins the wrapped method.
    """
    from mitmproxy.proxy import commands, events
    from mitmproxy.proxy.layers.http import _http1

    server = _http1.Http1Server
    original = getattr(server.read_headers, "tlsgate_original", server.read_headers)

    def read_headers(self: Any, event: Any) -> Any:
        cap = limit()
        if isinstance(event, events.DataReceived) and cap and len(self.buf) > cap:
            data = bytes(self.buf)
            if head_overflows(data, cap):
                try:
                    answer = refuse(self.context, len(data), cap)
                except Exception:  # noqa: BLE001 - refused all the same, with the plain answer
                    logging.getLogger("tlsgate.client_bounds").exception("tlsgate: recording an oversized head failed")
                    answer = HEAD_REFUSED
                self.buf.maybe_extract_at_most(len(self.buf))  # let the memory go now
                yield commands.SendData(self.conn, answer)
                yield commands.CloseConnection(self.conn)
                self.state = self.done
                return
        yield from original(self, event)

    read_headers.tlsgate_original = original  # type: ignore[attr-defined]
    server.read_headers = read_headers  # type: ignore[method-assign]


# -- upstream timeouts and broken answers (tlsgate.addons.upstream_timeouts) ----------------------------


def _server_io(client: object, server: object) -> Any:
    """mitmproxy's ConnectionIO (task, reader, writer) for `server`, from the live handler of `client`; None if gone.

    `Proxyserver.connections` (by client id) and `ConnectionHandler.transports`
    (by connection) are not promised names; the task is the one that runs
    `ConnectionHandler.open_connection` for that server, pinned in
    `tests/unit/test_mitm_internals.py` with the code that reacts to its cancellation.
    """
    proxyserver = ctx.master.addons.get("proxyserver")
    connections = getattr(proxyserver, "connections", None)
    handler = connections.get(getattr(client, "id", None)) if isinstance(connections, dict) else None
    transports = getattr(handler, "transports", None)
    return transports.get(server) if isinstance(transports, dict) else None


def end_server_connection(client: Any, server: Any, reason: str, hooks_done: bool) -> str:
    """Close one upstream connection from outside mitmproxy's hooks, the way mitmproxy closes it on a client's exit.

    Cancelling the task that owns the connection is safe at two points only:
    inside `asyncio.open_connection` (mitmproxy turns the cancellation into a
    failed connect: `server_connect_error`, then an error reply to the layer
    that asked, with `reason` as the error), and inside `handle_connection`
    (the layers get a ConnectionClosed). `hooks_done` says the server_connected
    hooks have returned, so the task is no longer inside them. Returns "closed"
    when it was cancelled; "later" when the connection is in neither place (e.g.
    waiting for mitmproxy's limit of five connections per address), so the
    caller tries again; "gone" when there is no such connection (any more).
    """
    io = _server_io(client, server)
    task = getattr(io, "handler", None)
    if task is None or task.done():
        return "gone"
    connecting = io.reader is None and server.timestamp_start is not None and server.timestamp_tcp_setup is None
    connected = io.reader is not None and hooks_done
    if not (connecting or connected):
        return "later"
    task.cancel(reason)
    return "closed"


class StreamWatcher(Protocol):
    """What UpstreamTimeouts hears from inside mitmproxy's HTTP streams (see `watch_http_streams`)."""

    def body_bytes(self, flow: Any, size: int) -> None: ...


_streams: weakref.WeakKeyDictionary[Any, weakref.ref[Any]] = weakref.WeakKeyDictionary()  # flow -> its HttpStream
_pending: set[asyncio.Task[None]] = set()  # end_http_stream's deliveries, referenced until done


def watch_http_streams(watcher: StreamWatcher) -> None:
    """Tell `watcher` of every response body chunk per flow, and make `end_http_stream` possible.

    mitmproxy's layers hold a response body without any hook until it is
    complete, and what reaches the upstream connection's socket is TLS records
    or HTTP/2 frames of any stream, so body progress is only seen where
    `HttpStream` receives a `ResponseData` event: body bytes, de-chunked and
    decrypted, of this one flow, whatever the transport. Wraps
    `HttpStream._handle_event`; pinned in `tests/unit/test_mitm_internals.py`.
    (An app hanging up is told by `answer_upstream_errors`.)
    """
    from mitmproxy.proxy import events
    from mitmproxy.proxy.layers.http import HttpStream, RequestData, RequestEndOfMessage, RequestHeaders, ResponseData

    handle = getattr(HttpStream._handle_event, "tlsgate_original", HttpStream._handle_event)

    def _handle_event(self: Any, event: Any) -> Any:
        if isinstance(event, ResponseData):
            try:
                watcher.body_bytes(self.flow, len(event.data))
            except Exception:  # noqa: BLE001 - counting must never lose the server's bytes
                logging.getLogger("tlsgate.timeouts").exception("tlsgate: counting response bytes failed")
        elif isinstance(event, events.Wakeup) and isinstance(event.command, StreamClock):
            yield from _clock_ran_out(self, event.command)
            return
        elif isinstance(event, events.Wakeup) and isinstance(event.command, HeldResume):
            if (held := _held_bodies.get(self)) is not None:
                yield from _resumed(self, held)
            return
        elif isinstance(event, (RequestData, RequestEndOfMessage)) and (held := _held_bodies.get(self)) is not None:
            yield from _held_body_event(self, event, held, handle)
            return
        if isinstance(event, RequestHeaders):
            yield from _registering(self, handle(self, event))
        else:
            yield from handle(self, event)

    _handle_event.tlsgate_original = handle  # type: ignore[attr-defined]
    HttpStream._handle_event = _handle_event  # type: ignore[method-assign]


class HeldBody(Protocol):
    """A request body's stream callable that holds its first bytes until judged (tlsgate.addons.payload_stream)."""

    def __call__(self, chunk: bytes) -> list[bytes] | bytes: ...

    def finish(self) -> None:
        """The body ended: judge what is held now, if that is not done yet, before its end goes upstream."""

    def flush(self) -> list[bytes]:
        """Passed chunks not handed over yet (at the body's end: what was held until the verdict)."""

    def refusal(self) -> Any:
        """The block answer (an http.Response) once the held bytes were judged blocked, else None."""


def _closing_trailers(body: Any) -> Any:
    """The trailers that end the app's stream when the server's answer had begun (a gRPC status between two
    messages: `GrpcCall.closing`), or None: then the app's stream is reset."""
    closing = getattr(body, "closing", None)
    return closing() if closing is not None else None


class _HeldStream:
    """What `_held_body_event` knows of one stream: its body's callable, and whether its upstream was cut."""

    def __init__(self, body: HeldBody) -> None:
        self.body = body
        self.cut = False


_held_bodies: weakref.WeakKeyDictionary[Any, _HeldStream] = weakref.WeakKeyDictionary()  # HttpStream -> its body
_held_flows: weakref.WeakKeyDictionary[Any, HeldBody] = weakref.WeakKeyDictionary()  # flow -> body, until its stream


class _NoWatcher:
    def body_bytes(self, flow: Any, size: int) -> None:
        pass


def hold_request_body(flow: Any, body: HeldBody) -> None:
    """Give `body` every chunk of `flow`'s request body, from its first: streamed from the start (when the
    `requestheaders` hook set `flow.request.stream = body`), or only once mitmproxy decides to stream a body it
    was buffering (a chunked or HTTP/2 body past `stream_large_bodies`), which it would otherwise do with
    `stream = True`, out of any hook's reach. A blocked body's upstream is cut where it is judged (see
    `_held_body_event`). Needs `watch_http_streams`' wrapper: installed here if no add-on installed it yet."""
    from mitmproxy.proxy.layers.http import HttpStream

    if not hasattr(HttpStream._handle_event, "tlsgate_original"):
        watch_http_streams(_NoWatcher())
    _held_flows[flow] = body


def _held_body_event(stream: Any, event: Any, held: _HeldStream, handle: Callable[[Any, Any], Any]) -> Any:
    """One request body event of a stream whose body is held (`hold_request_body`).

    Buffering (`state_consume_request_body`): where mitmproxy's `check_body_size`
    would switch to streaming (what is buffered plus this chunk passes
    `stream_large_bodies`), the switch is made here instead, with the held
    body's callable as `request.stream`; everything buffered so far goes
    through it as one chunk. Streaming: the body's end is judged before
    mitmproxy sends it on; a body judged blocked gets its upstream request
    cancelled at once (HTTP/2: RST_STREAM, CANCEL; HTTP/1: the upstream
    connection closed, as mitmproxy does for an app that hangs up mid-body),
    the app gets the block answer if no response byte went to it yet, and
    nothing more of the body goes anywhere. Pinned in `tests/unit/test_mitm_internals.py`.
    """
    from mitmproxy.proxy.layers.http import RequestData, RequestEndOfMessage
    from mitmproxy.utils import human

    flow = stream.flow
    body = held.body
    if stream.client_state == stream.state_consume_request_body and isinstance(event, RequestData):
        threshold = human.parse_size(stream.context.options.stream_large_bodies)
        limit = human.parse_size(stream.context.options.body_size_limit)
        size = len(stream.request_body_buf) + len(event.data)
        if threshold is None or size <= threshold or (limit is not None and size > limit):
            yield from handle(stream, event)  # mitmproxy's own: buffered, or refused past body_size_limit
            return
        buffered = bytes(stream.request_body_buf) + event.data
        stream.request_body_buf.clear()
        flow.request.stream = body
        yield from stream.start_request_stream()
        if stream.client_state != stream.state_stream_request_body:
            return  # no upstream connection: mitmproxy answered the app
        event = RequestData(event.stream_id, buffered)
    if stream.client_state != stream.state_stream_request_body or flow.request.stream is not body:
        yield from handle(stream, event)
        return
    if isinstance(event, RequestEndOfMessage):
        yield from _ending(stream, event, held, handle)
        return
    if body.refusal() is None:
        yield from handle(stream, event)
    refusal = body.refusal()
    if refusal is not None and not held.cut:
        held.cut = True
        yield from _cut_request(stream, refusal, _closing_trailers(body))


class HeldResume(commands.RequestWakeup):
    """The signal `resume_held_body` routes to one flow's HttpStream: its held body has more judged chunks."""

    def __init__(self, flow: Any) -> None:
        super().__init__(0)
        self.flow = flow


def resume_held_body(flow: Any) -> bool:
    """Have `flow`'s HttpStream ask its held body (`hold_request_body`) for chunks judged since the last event
    (`HeldBody.resume`) and send them upstream, or cut the request if they were refused: for a body whose
    judging went on after its chunk's event returned, so that one app's stream of many small messages does not
    hold the event loop for a whole socket read's worth of them. Routed like `end_http_stream`. False when
    there is no such stream any more."""
    return _deliver(flow, HeldResume(flow))


def _resumed(stream: Any, held: _HeldStream) -> Any:
    from mitmproxy.proxy.layers.http import RequestData, SendHttp

    body = held.body
    if held.cut or stream.client_state != stream.state_stream_request_body or stream.flow.request.stream is not body:
        return
    for chunk in body.resume():  # only bodies that call `resume_held_body` have it (`GrpcCall`, `StreamWindow`)
        yield SendHttp(RequestData(stream.stream_id, chunk), stream.context.server)  # passed: before any refused one
    refusal = body.refusal()
    if refusal is not None and not held.cut:
        held.cut = True
        yield from _cut_request(stream, refusal, _closing_trailers(body))


def pause_client_reading(flow: Any, paused: bool) -> bool:
    """Stop (or go on) reading what the app sends on `flow`'s connection: back-pressure while its held body's
    judging is behind, so what waits to be judged stays one socket read. Only for TCP clients (asyncio
    transports); a UDP-borne client (HTTP/3, WireGuard) is read on. False when it could not be paused."""
    if getattr(ctx, "master", None) is None:
        return False  # not inside a running proxy (unit tests)
    io = _server_io(getattr(flow, "client_conn", None), getattr(flow, "client_conn", None))
    transport = getattr(getattr(io, "writer", None), "transport", None)
    if transport is None or not hasattr(transport, "pause_reading") or transport.is_closing():
        return False
    reader: Any = getattr(io, "reader", None)
    if paused:
        transport.pause_reading()
        # asyncio's StreamReader resumes a transport it paused itself (its buffer full) once mitmproxy drains it,
        # which under a flood undid this pause at once: it is told it did not pause it (pinned in the unit tests)
        if reader is not None and isinstance(getattr(reader, "_paused", None), bool):
            reader._paused = False
    elif not transport.is_reading():
        transport.resume_reading()
    return True


def _ending(stream: Any, event: Any, held: _HeldStream, handle: Callable[[Any, Any], Any]) -> Any:
    """The body's end: mitmproxy asks the callable for its last chunks (the held ones are not handed over yet),
    runs the `request` hook, where the add-on finishes judging in slices while mitmproxy waits, and then sends
    the trailers and the end upstream. Here, before the first of those goes out, the held chunks go (passed),
    or the request is cut and nothing more goes (refused)."""
    from mitmproxy.proxy.layers.http import RequestData, RequestEndOfMessage, RequestTrailers, SendHttp

    body = held.body
    commands_ = handle(stream, event)
    reply = None
    while True:
        try:
            command = commands_.send(reply)
        except StopIteration:
            return
        if (
            isinstance(command, SendHttp)
            and isinstance(command.event, (RequestTrailers, RequestEndOfMessage))
            and command.connection is stream.context.server
        ):
            body.finish()  # judged in the hook already, unless the hook did not run (then: now)
            refusal = body.refusal()
            if refusal is not None:
                commands_.close()
                for chunk in body.flush():  # what passed before the refused part (a gRPC call's earlier messages)
                    yield SendHttp(RequestData(stream.stream_id, chunk), stream.context.server)
                if not held.cut:
                    held.cut = True
                    yield from _cut_request(stream, refusal, _closing_trailers(body))
                return
            for chunk in body.flush():
                yield SendHttp(RequestData(stream.stream_id, chunk), stream.context.server)
        reply = yield command


def _cut_request(stream: Any, refusal: Any, trailers: Any = None) -> Any:
    """The server's request stream reset, and the app answered: with `refusal` if no byte of the server's answer
    went to it yet (headers only, ending the stream, when it has no body: a gRPC trailers-only status), else
    with `trailers` ending the answer, else with its stream reset."""
    from mitmproxy.proxy.layers.http import (
        DropStream,
        ErrorCode,
        RequestProtocolError,
        ResponseData,
        ResponseEndOfMessage,
        ResponseHeaders,
        ResponseProtocolError,
        ResponseTrailers,
        SendHttp,
    )

    server = stream.context.server
    layers = stream.context.layers
    parent = layers[layers.index(stream) - 1] if stream in layers else None
    if server.connected and server in getattr(parent, "connections", {}):
        yield SendHttp(RequestProtocolError(stream.stream_id, "blocked by policy", ErrorCode.CANCEL), server)
    stream.client_state = stream.server_state = stream.state_errored  # nothing more of it goes either way
    stream.flow.live = False
    client = stream.context.client
    if stream.flow.response is None and client.connected:
        stream.flow.response = refusal
        only_headers = not refusal.raw_content and stream.flow.request.http_version.startswith(("HTTP/2", "HTTP/3"))
        yield SendHttp(ResponseHeaders(stream.stream_id, refusal, end_stream=only_headers), client)
        if refusal.raw_content:
            yield SendHttp(ResponseData(stream.stream_id, refusal.raw_content), client)
        yield SendHttp(ResponseEndOfMessage(stream.stream_id), client)
    elif client.connected and trailers is not None:
        yield SendHttp(ResponseTrailers(stream.stream_id, trailers), client)
        yield SendHttp(ResponseEndOfMessage(stream.stream_id), client)
    elif client.connected:  # the server's answer had begun: the app's stream (HTTP/1: connection) is cut instead
        yield SendHttp(ResponseProtocolError(stream.stream_id, "blocked by policy", ErrorCode.KILL), client)
    yield DropStream(stream.stream_id)  # what the app still sends of the body is dropped with the stream


def _registering(stream: Any, commands_: Any) -> Any:
    """`commands_` passed through, the stream remembered for its flow as soon as the flow exists (before the
    first command: hooks and the connection to the server may hold this event's handling for a long time)."""
    reply = None
    while True:
        try:
            command = commands_.send(reply)
        except StopIteration:
            _hold_for(stream)  # the requestheaders hook may have asked to hold its body (`hold_request_body`)
            yield from _answered_at_headers(stream)
            return
        flow = getattr(stream, "flow", None)
        if flow is not None and flow not in _streams:
            _streams[flow] = weakref.ref(stream)
        _hold_for(stream)
        reply = yield command


_answer_now: weakref.WeakSet[Any] = weakref.WeakSet()  # flows whose answer goes before their body has ended


def answer_at_headers(flow: Any) -> None:
    """Send the answer a `requestheaders` hook set (`flow.response`) as soon as the hook returns, not once the
    body has ended, which is when mitmproxy sends it: a bidirectional gRPC call refused at its headers keeps
    its side open waiting for answers, and would wait for its deadline. Nothing was sent upstream; what the app
    still sends is dropped with the stream. HTTP/2 and 3 only (an HTTP/1 connection would have the body's rest
    read as the next request). Needs `watch_http_streams`' wrapper: installed here if missing."""
    from mitmproxy.proxy.layers.http import HttpStream

    if not hasattr(HttpStream._handle_event, "tlsgate_original"):
        watch_http_streams(_NoWatcher())
    _answer_now.add(flow)


def _answered_at_headers(stream: Any) -> Any:
    from mitmproxy.proxy.layers.http import DropStream, ResponseData, ResponseEndOfMessage, ResponseHeaders, SendHttp

    flow = getattr(stream, "flow", None)
    if flow is None or flow not in _answer_now:
        return
    _answer_now.discard(flow)
    response = flow.response
    if (
        response is None
        or not flow.live
        or stream.client_state != stream.state_consume_request_body
        or not flow.request.http_version.startswith(("HTTP/2", "HTTP/3"))
    ):
        return  # mitmproxy answers as usual (the body had ended with its headers, or it was killed)
    client = stream.context.client
    stream.client_state = stream.server_state = stream.state_errored
    flow.live = False
    if client.connected:
        yield SendHttp(ResponseHeaders(stream.stream_id, response, end_stream=not response.raw_content), client)
        if response.raw_content:
            yield SendHttp(ResponseData(stream.stream_id, response.raw_content), client)
        yield SendHttp(ResponseEndOfMessage(stream.stream_id), client)
    yield DropStream(stream.stream_id)


def _hold_for(stream: Any) -> None:
    flow = getattr(stream, "flow", None)
    if flow is not None and (body := _held_flows.pop(flow, None)) is not None:
        _held_bodies[stream] = _HeldStream(body)


def _waiting_for_server(stream: Any) -> bool:
    """The app's whole request went upstream and the server's answer is not complete."""
    return (
        getattr(stream, "flow", None) is not None
        and stream.client_state == stream.state_done
        and stream.server_state
        in (stream.state_wait_for_response_headers, stream.state_consume_response_body, stream.state_stream_response_body)
    )


class StreamClock(commands.RequestWakeup):
    """The signal `end_http_stream` routes to one flow's HttpStream, the way a wakeup it had asked for would come."""

    def __init__(self, flow: Any, phase: str, reason: str, confirm: Callable[[], bool]) -> None:
        super().__init__(0)
        self.flow = flow
        self.phase = phase  # "response_head" or "response_body"
        self.reason = reason
        self.confirm = confirm  # asked once the stream is reached: does the clock still stand?


def end_http_stream(flow: Any, phase: str, reason: str, confirm: Callable[[], bool]) -> bool:
    """End one exchange whose server ran out of time, inside mitmproxy's layers, as a server error on its stream.

    The stream then cancels its request upstream (HTTP/2: a stream reset, the
    connection lives on for the app's other requests; HTTP/1: the connection,
    which carried only this exchange, is closed) and meets a
    `ResponseProtocolError` carrying `reason`: `answer_upstream_errors` answers
    it (a 504) if the app has no response head yet, mitmproxy cuts the app's
    stream if it has. `confirm()` runs when the stream is reached, only if it
    is still in `phase` ("response_head": no head yet; "response_body": a body
    under way), so a head or the body's end that arrived meanwhile wins.

    The stream is reached the way mitmproxy routes a `Wakeup` to the layer that
    asked for it: each `HttpLayer` on the stream's path (`context.layers`) is
    told which child the command came from, and the event enters at the top of
    the client connection's layers, like every other event. Returns False when
    there is no such stream or live connection: nothing waits on it any more.
    """
    return _deliver(flow, StreamClock(flow, phase, reason, confirm))


def _deliver(flow: Any, clock: commands.RequestWakeup) -> bool:
    from mitmproxy.proxy import events
    from mitmproxy.proxy.layers.http import HttpLayer

    stream_ref = _streams.get(flow)
    stream = stream_ref() if stream_ref is not None else None
    handler = _handler_of(getattr(flow, "client_conn", None))
    if stream is None or handler is None or getattr(stream, "flow", None) is not flow:
        return False
    path = stream.context.layers
    routed = False
    for parent, child in zip(path, path[1:], strict=False):
        if isinstance(parent, HttpLayer):
            parent.command_sources[clock] = child
            routed = routed or child is stream
    if not routed:
        return False
    task = asyncio.get_running_loop().create_task(handler.server_event(events.Wakeup(clock)))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return True


def _handler_of(client: Any) -> Any:
    proxyserver = ctx.master.addons.get("proxyserver")
    connections = getattr(proxyserver, "connections", None)
    return connections.get(getattr(client, "id", None)) if isinstance(connections, dict) else None


def _clock_ran_out(stream: Any, clock: StreamClock) -> Any:
    from mitmproxy.proxy.layers.http import ErrorCode, RequestProtocolError, ResponseProtocolError, SendHttp

    flow = getattr(stream, "flow", None)
    if flow is not clock.flow or not flow.live or stream.client_state != stream.state_done:
        return
    if clock.phase == "response_head":
        in_phase = stream.server_state == stream.state_wait_for_response_headers
    else:
        in_phase = stream.server_state in (stream.state_consume_response_body, stream.state_stream_response_body)
    if not in_phase or not clock.confirm():
        return
    server = stream.context.server
    layers = stream.context.layers
    parent = layers[layers.index(stream) - 1] if stream in layers else None
    if server.connected and server in getattr(parent, "connections", {}):  # the layer that routes what we send
        yield SendHttp(RequestProtocolError(stream.stream_id, clock.reason, ErrorCode.CANCEL), server)
    yield from stream.handle_protocol_error(ResponseProtocolError(stream.stream_id, clock.reason, ErrorCode.GENERIC_SERVER_ERROR))


def server_reading(client: Any, server: Any) -> bool:
    """False while asyncio has paused reading from the server because the client is slow to take what was read
    (mitmproxy's back-pressure): a quiet server then is not the server's fault."""
    io = _server_io(client, server)
    transport = getattr(getattr(io, "writer", None), "transport", None)
    return transport.is_reading() if transport is not None and hasattr(transport, "is_reading") else True


def answer_upstream_errors(answer: Callable[[Any, str, str], Any], gave_up: Callable[[Any, str], None] | None = None) -> None:
    """Let tlsgate answer when the upstream fails an HTTP exchange before the client was sent anything.

    mitmproxy turns a failed connect, a server that closes or stalls, or an
    answer that is not HTTP into a `ResponseProtocolError`, which its HTTP/1
    server layer answers with its own bare 502 page (and HTTP/2 with a stream
    reset); the `error` hook cannot answer instead. This wraps
    `HttpStream.handle_protocol_error`: when the whole request has been read
    and no response byte has gone to the client, `answer(flow, message, code)`
    may return a response (tlsgate's page, with its finding recorded), which is
    then sent the way a response set by an add-on is sent (`send_response`:
    the `response` hook runs, nothing of the broken answer is passed on).
    Returning None, or raising, leaves mitmproxy's own handling.

    The app's side ending a stream whose request went upstream and whose answer
    is not complete (a `RequestProtocolError`: a close, an HTTP/2 reset) is told
    to `gave_up(flow, message)` first: mitmproxy only calls it an error. Pinned
    in `tests/unit/test_mitm_internals.py`.
    """
    from mitmproxy.proxy.layers.http import HttpStream, RequestProtocolError, ResponseProtocolError

    original = getattr(HttpStream.handle_protocol_error, "tlsgate_original", HttpStream.handle_protocol_error)

    def handle_protocol_error(self: Any, event: Any) -> Any:
        if gave_up is not None and isinstance(event, RequestProtocolError) and _waiting_for_server(self):
            try:
                gave_up(self.flow, event.message)
            except Exception:  # noqa: BLE001 - mitmproxy's own handling goes on regardless
                logging.getLogger("tlsgate.timeouts").exception("tlsgate: recording an app's hang-up failed")
        if (
            isinstance(event, ResponseProtocolError)
            and getattr(self, "flow", None) is not None
            and self.client_state == self.state_done
            and self.server_state in (self.state_wait_for_response_headers, self.state_consume_response_body)
        ):
            try:
                response = answer(self.flow, event.message, event.code.name)
            except Exception:  # noqa: BLE001 - mitmproxy's own 502 then
                logging.getLogger("tlsgate.timeouts").exception("tlsgate: answering an upstream failure failed")
                response = None
            if response is not None:
                self.flow.response = response
                yield from self.send_response()
                return
        yield from original(self, event)

    handle_protocol_error.tlsgate_original = original  # type: ignore[attr-defined]
    HttpStream.handle_protocol_error = handle_protocol_error  # type: ignore[method-assign]


def close_client(client: object) -> bool:
    """Close a client connection (and the upstream connections it holds) from outside its layers.

    The way mitmproxy's own idle watchdog does it: `ProxyConnectionHandler.on_timeout`
    cancels the client's read task, and the handler then closes every transport.
    The handler is found in the proxyserver add-on's `connections` (keyed by the
    client's id for TCP), which mitmproxy does not document. Returns False if
    the connection is not there (already gone).
    """
    import asyncio

    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(getattr(client, "id", None))
    if handler is None:
        return False
    task = asyncio.get_running_loop().create_task(handler.on_timeout())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    return True


_closing: set[object] = set()  # the close tasks, referenced until done (asyncio keeps only weak references)


# -- connections closed while waiting for the event lock (tlsgate.addons.containment) ------------------------


def close_connections_however_they_end() -> None:
    """Make every connection mitmproxy stops reading be closed, and its layers told, however its task ends.

    `ConnectionHandler.handle_connection` closes a connection's socket at its
    end, after the layers got a `ConnectionClosed`. A close is a cancellation
    of the connection's task (a layer's `CloseConnection`, mitmproxy's idle
    timeout, tlsgate's `close_client` and `end_server_connection`), and it is
    caught only where the task reads or drains. Its other awaits are
    `server_event` (`DataReceived`, then `ConnectionClosed`), which first wait
    for the handler's event lock whenever another task's event is queued on it:
    under mitmproxy's eager task factory a hook completing (the `next_layer`
    that chose the HelloGate, a TCP message a blocked stream ends on, a killed
    flow's verdict) queues there, and a connection with more bytes buffered
    reads on without pausing and queues behind it. A close asked for by the
    hook's event lands in the lock wait; the CancelledError then leaves
    `handle_connection` before its end, so the socket was never closed: it
    stayed ESTABLISHED, its descriptor held for the life of the process (the
    event loop keeps a transport it is reading from), and the layers never
    heard the connection end. All of 200 clients refused for an oversized
    ClientHello with 100 KB behind it stayed open this way (half of them with
    300 KB behind it: a transport whose reading had paused was closed when the
    garbage collector happened to find its writer).

    The wrapper finishes what was skipped, with mitmproxy's effects: the
    connection is marked closed and dropped from the handler's transports (so
    commands the layers still send for it are ignored), its socket is closed,
    then the layers get their `ConnectionClosed`. mitmproxy's own end removes
    the connection from `transports`, so finding it there means that end did
    not run. `tests/unit/test_mitm_internals.py` pins the wrapped method and
    what it relies on; `tests/unit/test_closing.py` drives the interleaving.
    """
    import contextlib

    from mitmproxy.connection import ConnectionState
    from mitmproxy.proxy import events, server

    handler_class = server.ConnectionHandler
    original = getattr(handler_class.handle_connection, "tlsgate_original", handler_class.handle_connection)

    async def handle_connection(self: Any, connection: Any) -> None:
        try:
            await original(self, connection)
        except BaseException as exc:
            io = self.transports.pop(connection, None)
            if io is not None:
                connection.state = ConnectionState.CLOSED
                if io.writer is not None:
                    with contextlib.suppress(OSError):
                        io.writer.close()
                if isinstance(exc, Exception | asyncio.CancelledError):  # not while the coroutine is being discarded
                    await self.server_event(events.ConnectionClosed(connection))
            raise

    handle_connection.tlsgate_original = original  # type: ignore[attr-defined]
    handler_class.handle_connection = handle_connection  # type: ignore[method-assign]


# -- WebSocket: closing a connection with a close code from the `websocket_message` hook -----------------------

_ws_closing: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()  # flow -> (code, reason)


def close_websocket(flow: Any, code: int, reason: str) -> None:
    """Ask the WebSocket layer of `flow` to close both sides with `code` and `reason` once the current
    `websocket_message` hook returns (the caller drops the message itself).

    mitmproxy has no way for an add-on to close a WebSocket with a close code (mitmproxy issue #4773, open
    since 2021; #4711 for killing flows in transit): `flow.kill()` is not looked at by its WebSocket layer (the
    message would still be relayed), and `inject.websocket` sends messages only.
    `close_websockets_on_request` makes the layer do what it does when a peer closes: a close frame to each
    side still open, both connections closed, `websocket_end` called.
    """
    _ws_closing[flow] = (code, reason)


def close_websockets_on_request() -> None:
    """Wrap `WebsocketLayer.relay_messages` so `close_websocket` takes effect right after the hook that asked.

    The rest of the batch of frames the layer was reading is not relayed (the original generator is closed), so
    nothing that followed a blocked message reaches the other side either. Pinned in
    `tests/unit/test_mitm_internals.py`.
    """
    from mitmproxy.proxy.layers.websocket import WebsocketEndHook, WebsocketLayer, WebsocketMessageHook
    from wsproto import ConnectionState
    from wsproto.events import CloseConnection

    relay = getattr(WebsocketLayer.relay_messages, "tlsgate_original", WebsocketLayer.relay_messages)

    def relay_messages(self: Any, event: Any) -> Any:
        inner = relay(self, event)
        reply = None
        while True:
            try:
                command = inner.send(reply)
            except StopIteration:
                return
            reply = yield command
            if isinstance(command, WebsocketMessageHook) and (closing := _ws_closing.pop(self.flow, None)) is not None:
                inner.close()
                code, reason = closing
                websocket = self.flow.websocket
                websocket.timestamp_end = time.time()
                websocket.close_code, websocket.close_reason = code, reason
                for ws in (self.server_ws, self.client_ws):
                    if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                        yield ws.send2(CloseConnection(code=code, reason=reason))
                    yield commands.CloseConnection(ws.conn)
                yield WebsocketEndHook(self.flow)
                self.flow.live = False
                self._handle_event = self.done
                return

    relay_messages.tlsgate_original = relay  # type: ignore[attr-defined]
    WebsocketLayer.relay_messages = relay_messages  # type: ignore[method-assign]
