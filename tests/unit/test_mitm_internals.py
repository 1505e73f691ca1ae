"""Fails when mitmproxy changes the code tlsgate's TLS rebuilds copy, or drops a private name they use.

`tlsgate/addons/mitm_internals.py` builds client- and server-side TLS connections
the way mitmproxy's `tlsconfig` add-on does, changing one thing each time. If
an upgrade changes how tlsconfig builds them, the copies silently diverge (a
probe certificate sent with another cipher list, a legacy upstream connection
without hostname checks). These hashes make that divergence a failing test:
read the new mitmproxy source, update `mitm_internals.py` to match, then the hash.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import pytest
from mitmproxy import version
from mitmproxy.addons import tlsconfig
from mitmproxy.net import tls as net_tls
from OpenSSL import SSL

from tlsgate.addons import mitm_internals

PINNED = {
    # 12.3.1: re-read; it now sends an entry's chain_certs when there is no chain file (the `emudhra` CA) next to
    # add_upstream_certs_to_client_chain's certificates: client_connection does both for tlsconfig's own certificate.
    "TlsConfig.tls_start_client": (tlsconfig.TlsConfig.tls_start_client, "d3093c897eeafc2f"),
    "TlsConfig.tls_start_server": (tlsconfig.TlsConfig.tls_start_server, "2e2dc9c25670cf64"),
    "create_client_proxy_context": (net_tls.create_client_proxy_context, "8a3bd5b54ef3d093"),
    "create_proxy_server_context": (net_tls.create_proxy_server_context, "e2d90d71c5744797"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_tlsconfig_code_the_rebuilds_follow_is_unchanged(name: str) -> None:
    function, pinned = PINNED[name]
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert digest == pinned, (
        f"mitmproxy {version.VERSION} changed {name}: re-read it, bring tlsgate/addons/mitm_internals.py in line, "
        f"then pin {digest}"
    )


def test_private_names_still_exist() -> None:
    assert callable(tlsconfig._default_ciphers)
    assert isinstance(tlsconfig._DEFAULT_CIPHERS_WITH_SECLEVEL_0, tuple | list)
    assert isinstance(tlsconfig.DEFAULT_HOSTFLAGS, int)
    for name in ("SSL_get0_param", "SSL_get_verify_result", "X509_VERIFY_PARAM_set1_host", "X509_VERIFY_PARAM_set1_ip"):
        assert hasattr(SSL._lib, name), name
    assert callable(SSL._openssl_assert)


def test_version_words_map_to_mitmproxy_floors() -> None:
    assert mitm_internals.floor_version("1.0") is net_tls.Version.TLS1
    assert mitm_internals.floor_version("1.3") is net_tls.Version.TLS1_3
    for member in net_tls.Version:
        assert mitm_internals.versions.from_mitmproxy_option(member.name) in mitm_internals.versions.ORDER


def test_verify_helpers_on_a_real_connection() -> None:
    conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
    mitm_internals.verify_host(conn, "api.test")
    mitm_internals.verify_host(conn, "127.0.0.1")
    assert mitm_internals.verify_result(conn) == 0
    assert "unable to get local issuer certificate" in mitm_internals.verify_error_text(20)


# -- upstream timeouts (tlsgate.addons.upstream_timeouts) ----------------------------------------------------
# end_server_connection cancels the task running ConnectionHandler.open_connection: safe only because its
# try/except turns a cancelled connect into a failed one and handle_connection turns it into a close.
# answer_upstream_errors wraps HttpStream.handle_protocol_error and answers through send_response; the fault
# kinds (tlsgate.checks.faults) read Http1Client.read_headers' error texts. watch_http_streams wraps
# HttpStream._handle_event (ResponseData is a stream's body bytes); end_http_stream routes a Wakeup the way
# HttpLayer routes CommandCompleted (command_sources, filled in event_to_child), through tunnel layers and a
# CONNECT stream's passthrough, entering at ConnectionHandler.server_event; the stream then sends a
# RequestProtocolError upstream (Http1Client.send: close; Http2Connection: reset the stream).


def _upstream_pins() -> dict[str, tuple[object, str]]:
    from mitmproxy.proxy import server, tunnel
    from mitmproxy.proxy.layers.http import HttpLayer, HttpStream
    from mitmproxy.proxy.layers.http._http1 import Http1Client
    from mitmproxy.proxy.layers.http._http2 import Http2Connection

    handle_protocol_error = getattr(HttpStream.handle_protocol_error, "tlsgate_original", HttpStream.handle_protocol_error)
    handle_event = getattr(HttpStream._handle_event, "tlsgate_original", HttpStream._handle_event)
    handle_connection = server.ConnectionHandler.handle_connection
    handle_connection = getattr(handle_connection, "tlsgate_original", handle_connection)
    return {
        "ConnectionHandler.open_connection": (server.ConnectionHandler.open_connection, "5e0b3cbaf7a4030a"),
        "ConnectionHandler.handle_connection": (handle_connection, "95c3f93e9824e527"),
        "ConnectionHandler.server_event": (server.ConnectionHandler.server_event, "a2b42657ebe8bf6d"),
        "HttpStream.handle_protocol_error": (handle_protocol_error, "59fc3b2eeeabf63a"),
        "HttpStream.send_response": (HttpStream.send_response, "d581bc106152e369"),
        "HttpStream._handle_event": (handle_event, "e3cbfef7310ae81f"),
        "HttpStream.passthrough": (HttpStream.passthrough, "a6df32aba1ae251a"),
        "HttpLayer._handle_event": (HttpLayer._handle_event, "6ba31883cc7a06b3"),
        "HttpLayer.event_to_child": (HttpLayer.event_to_child, "1095f6e1581d1780"),
        "TunnelLayer._handle_event": (tunnel.TunnelLayer._handle_event, "00676a887c456cec"),
        "Http1Client.read_headers": (Http1Client.read_headers, "415454c5fa8b5981"),
        "Http1Client.send": (Http1Client.send, "35d961e20d481204"),
        # 12.3.1: re-read; only a comment's spelling changed ("Debatable"), the reset codes are the same
        "Http2Connection._handle_event": (Http2Connection._handle_event, "7fc814a8a507f234"),
    }


@pytest.mark.parametrize("name", sorted(_upstream_pins()))
def test_the_code_upstream_timeouts_rely_on_is_unchanged(name: str) -> None:
    function, pinned = _upstream_pins()[name]
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]  # type: ignore[arg-type]
    assert digest == pinned, (
        f"mitmproxy {version.VERSION} changed {name}: re-read it, check tlsgate/addons/mitm_internals.py's "
        f"end_server_connection / answer_upstream_errors / watch_http_streams / end_http_stream still hold, "
        f"then pin {digest}"
    )


def test_the_names_upstream_timeouts_reach_for_still_exist() -> None:
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.proxy.server import ConnectionIO

    assert isinstance(Proxyserver().connections, dict)
    assert {"handler", "reader", "writer"} <= set(ConnectionIO.__dataclass_fields__)
    from mitmproxy.proxy.layers.http import HttpLayer, HttpStream

    assert {"state_wait_for_response_headers", "state_consume_response_body", "state_stream_response_body"} <= set(
        dir(HttpStream)
    )
    assert "command_sources" in HttpLayer.__init__.__code__.co_names


# What the hostile-client bounds (tlsgate/addons/client_bounds.py, containment.py) wrap or read in mitmproxy.
CLIENT_BOUNDS_PINNED = {
    "Http1Server.read_headers": "3fe0945216bcf7bc",  # wrapped by bound_request_heads: `buf`, `state`, `done`
    "Http1Connection._handle_event": "2ac8db3e43ae743f",  # appends each read to `buf`, then calls the state
    "ConnectionHandler.on_timeout": "0d1e6b0aa6e41173",  # close_client calls it
    "Proxyserver.register_connection": "d79bb91554a8bda2",  # close_client finds handlers in `connections`
    # close_connections_however_they_end wraps handle_connection (pinned with the upstream-timeouts names): a close is a
    # cancellation of the connection's task; the client's ending (client_disconnected, then every other transport's
    # task cancelled) runs after that task is done, whatever it ended with.
    "ConnectionHandler.close_connection": "c0d10cc05dd65b80",
    "ConnectionHandler.handle_client": "01f1b7cc991c4711",
}


@pytest.mark.parametrize("name", sorted(CLIENT_BOUNDS_PINNED))  # one test per pin: a report names every one that moved
def test_client_bounds_code_is_unchanged(name: str) -> None:
    from mitmproxy.addons import proxyserver
    from mitmproxy.proxy import server
    from mitmproxy.proxy.layers.http import _http1

    read_headers = _http1.Http1Server.read_headers
    functions = {
        "Http1Server.read_headers": getattr(read_headers, "tlsgate_original", read_headers),
        "Http1Connection._handle_event": _http1.Http1Connection._handle_event,
        "ConnectionHandler.on_timeout": server.ConnectionHandler.on_timeout,
        "Proxyserver.register_connection": proxyserver.Proxyserver.register_connection,
        "ConnectionHandler.close_connection": server.ConnectionHandler.close_connection,
        "ConnectionHandler.handle_client": server.ConnectionHandler.handle_client,
    }
    digest = hashlib.sha256(inspect.getsource(functions[name]).encode()).hexdigest()[:16]
    assert digest == CLIENT_BOUNDS_PINNED[name], (
        f"mitmproxy {version.VERSION} changed {name}: re-read it, bring tlsgate/addons/mitm_internals.py in line, "
        f"then pin {digest}"
    )


def test_the_lines_containment_rewrites_are_still_mitmproxys() -> None:
    from mitmproxy.proxy import server
    from mitmproxy.proxy.layers import tls as tls_layer
    from mitmproxy.proxy.layers.http import _http1

    from tlsgate.addons import containment

    server_source = inspect.getsource(server)
    assert all(line in server_source for line in containment.CRASHES)
    assert "Client closed connection before completing request headers: {buf!r}" in inspect.getsource(_http1)
    assert "Cannot parse ClientHello: {self.recv_buffer.hex()}" in inspect.getsource(tls_layer)


# -- WebSocket closes (tlsgate.addons.payload) -----------------------------------------------------------------
# close_websockets_on_request wraps WebsocketLayer.relay_messages: it expects the hook for a finished message to be
# yielded before the message is relayed (`if not message.dropped`), and copies the layer's own close path (a close
# frame to each side still OPEN or REMOTE_CLOSING, CloseConnection for both, websocket_end, `done`).


def _websocket_pins() -> dict[str, tuple[object, str]]:
    from mitmproxy.proxy.layers.websocket import WebsocketLayer

    relay = getattr(WebsocketLayer.relay_messages, "tlsgate_original", WebsocketLayer.relay_messages)
    return {"WebsocketLayer.relay_messages": (relay, "2d451252c7287da0")}


@pytest.mark.parametrize("name", sorted(_websocket_pins()))
def test_the_websocket_layer_code_the_close_relies_on_is_unchanged(name: str) -> None:
    function, pinned = _websocket_pins()[name]
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]  # type: ignore[arg-type]
    assert digest == pinned, (
        f"mitmproxy {version.VERSION} changed {name}: re-read it, check tlsgate/addons/mitm_internals.py's "
        f"close_websockets_on_request still holds, then pin {digest}"
    )


# What `hold_request_body` (streamed request bodies held until judged, tlsgate/addons/payload.py) relies on.
HELD_BODY_PINNED = {
    # step 3 switches a buffered body to streaming with `stream = True`: `_held_body_event` makes that switch itself
    "HttpStream.check_body_size": "236ca0a7b9fd4f69",
    "HttpStream.start_request_stream": "46f03368a2a54362",  # opens the upstream and sends the head
    # calls the stream callable per chunk and with b"" at the end, then the request hook, then sends the end
    "HttpStream.state_stream_request_body": "c98f7f715cef7cfa",
    "HttpStream.state_consume_request_body": "45459c1bbd8bdb1a",  # buffers into request_body_buf
    "Http1Server.send": "cc218a1337c0f5cf",  # a response may go out while the request body is still coming
    # gRPC calls (tlsgate/addons/grpc_stream.py): a `request.stream` set in the requestheaders hook opens the upstream
    # request right after it, and the answer's head is awaited while the body streams (bidirectional calls); a
    # response set in the hook leaves the stream in state_consume_request_body (`answer_at_headers` answers there)
    "HttpStream.state_wait_for_request_headers": "3706d5d5ce01dcd4",
    # calls `response.stream` per chunk before sending it: GrpcCall.response sees exactly what went to the app
    "HttpStream.state_stream_response_body": "3fb6320300d3ddd5",
}


def test_a_paused_client_is_read_through_asyncio_transports() -> None:
    """`pause_client_reading` reaches the app's connection as mitmproxy's ConnectionHandler keeps it."""
    from mitmproxy.proxy.server import ConnectionIO

    assert {"handler", "reader", "writer"} <= set(ConnectionIO.__dataclass_fields__)


@pytest.mark.parametrize("name", sorted(HELD_BODY_PINNED))
def test_the_code_held_request_bodies_rely_on_is_unchanged(name: str) -> None:
    from mitmproxy.proxy.layers.http import HttpStream
    from mitmproxy.proxy.layers.http._http1 import Http1Server

    owner, attribute = name.split(".")
    function = getattr({"HttpStream": HttpStream, "Http1Server": Http1Server}[owner], attribute)
    function = getattr(function, "tlsgate_original", function)
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert digest == HELD_BODY_PINNED[name], (
        f"mitmproxy {version.VERSION} changed {name}: re-read it, check tlsgate/addons/mitm_internals.py's "
        f"hold_request_body / _held_body_event / _cut_request still hold, then pin {digest}"
    )


# -- client_connection follows tlsconfig's chain (mitmproxy 12.3: a default chain with no chain file is sent) ------


def test_a_refloored_connection_sends_the_chain_tlsconfig_sends(tmp_path: Path) -> None:
    """A client let in below the floor (report mode) must see the certificate chain every other client sees.

    mitmproxy 12.3's `emudhra` option signs with an intermediate whose chain has no chain file: tlsconfig sends the
    intermediates itself, and a copy that did not would show this client a lone leaf it cannot build a path from."""
    from mitmproxy import ctx, tls
    from mitmproxy.proxy.context import Context
    from mitmproxy.test import taddons, tflow

    from tests.unit.test_staple_capture import handshake

    addon = tlsconfig.TlsConfig()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, confdir=str(tmp_path / "certs"), emudhra=True)

        def served(rebuild: bool) -> list[str]:
            client = tflow.tclient_conn()
            client.sni = "api.test"
            data = tls.TlsData(client, Context(client, ctx.options))
            addon.tls_start_client(data)
            server = mitm_internals.client_connection(data, "1.2") if rebuild else data.ssl_conn
            app = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
            app.set_tlsext_host_name(b"api.test")
            handshake(app, server)  # type: ignore[arg-type]
            return [c.subject.rfc4514_string() for c in app.get_peer_cert_chain(as_cryptography=True) or []]

        normal = served(rebuild=False)
        assert len(normal) > 2, normal  # the leaf and the intermediates
        assert served(rebuild=True) == normal


def test_a_stream_reader_resumes_only_a_transport_it_paused_itself() -> None:
    """`pause_client_reading` clears `StreamReader._paused` so asyncio's own flow control does not undo its pause."""
    import asyncio

    resume = inspect.getsource(asyncio.StreamReader._maybe_resume_transport)
    assert "if self._paused" in resume and "self._paused = False" in resume and "resume_reading()" in resume
    assert "self._paused = True" in inspect.getsource(asyncio.StreamReader.feed_data)
