"""`mitm_internals.request_staple` on real OpenSSL handshakes: a shared, already used context, each connection's own staple.

Handshakes run over memory BIOs (no sockets): a pyOpenSSL server that staples
what it is told, and client connections on one context, as mitmproxy's cached
upstream context is shared.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import pytest
from OpenSSL import SSL
from OpenSSL.crypto import X509

from tests.certgen import Chain, make_chain
from tests.ocsplab import ocsp_response
from tlsgate.addons import mitm_internals


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain(dns=("api.test",))


def server_context(chain: Chain, staple: bytes, version: int | None = None) -> SSL.Context:
    """OpenSSL 4 staples only bytes that parse as an OCSPResponse: garbage is tested at the facts layer."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    if version is not None:
        context.set_max_proto_version(version)
    context.use_certificate(chain.leaf.cert)
    context.add_extra_chain_cert(chain.intermediate.cert)
    context.use_privatekey(chain.leaf.key)
    context.set_ocsp_server_callback(lambda conn, data: staple)
    return context


def client_context(chain: Chain) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    store = context.get_cert_store()
    assert store is not None
    store.add_cert(X509.from_cryptography(chain.root.cert))
    context.set_verify(SSL.VERIFY_PEER)
    return context


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Drive both ends over memory BIOs until both finish; raises the client's SSL.Error if it aborts."""
    client.set_connect_state()
    server.set_accept_state()
    done = {"client": False, "server": False}
    for _ in range(50):
        for name, conn, peer in (("client", client, server), ("server", server, client)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error:
                    if name == "client":
                        raise
                    done[name] = True  # the server saw the client's alert; the client's own error says why
            with contextlib.suppress(SSL.WantReadError):
                peer.bio_write(conn.bio_read(65536))
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_each_connection_on_a_used_shared_context_gets_its_own_staple(chain: Chain, version: int) -> None:
    shared = client_context(chain)
    SSL.Connection(shared)  # mitmproxy's cached context has made connections before: pyOpenSSL freezes it then
    good = ocsp_response(chain.leaf, chain.intermediate)
    revoked = ocsp_response(chain.leaf, chain.intermediate, status="revoked")
    seen: list[tuple[str, bytes]] = []

    def waiter(name: str) -> Callable[[bytes], bool]:
        def wait(der: bytes) -> bool:
            seen.append((name, der))
            return True

        return wait

    for name, staple in (("good", good), ("revoked", revoked), ("none", b"")):
        client = SSL.Connection(shared)
        mitm_internals.request_staple(client, waiter(name))
        handshake(client, SSL.Connection(server_context(chain, staple, version)))
    assert seen == [("good", good), ("revoked", revoked), ("none", b"")]


def test_a_connection_that_did_not_ask_sends_no_status_request_and_is_not_judged(chain: Chain) -> None:
    shared = client_context(chain)
    good = ocsp_response(chain.leaf, chain.intermediate)
    judged: list[bytes] = []
    asked = SSL.Connection(shared)
    mitm_internals.request_staple(asked, lambda der: judged.append(der) is None)
    handshake(asked, SSL.Connection(server_context(chain, good)))
    requests: list[int] = []
    server = server_context(chain, good)

    def staple(conn: SSL.Connection, data: object) -> bytes:
        requests.append(1)
        return good

    server.set_ocsp_server_callback(staple)
    plain = SSL.Connection(shared)  # same context, dispatcher installed, no status asked for
    handshake(plain, SSL.Connection(server))
    assert judged == [good] and requests == []


def test_refusing_aborts_the_handshake_before_it_completes(chain: Chain) -> None:
    client = SSL.Connection(client_context(chain))
    mitm_internals.request_staple(client, lambda der: False)
    server = SSL.Connection(server_context(chain, ocsp_response(chain.leaf, chain.intermediate, status="revoked")))
    with pytest.raises(SSL.Error, match="status response|certificate status"):
        handshake(client, server)
    with pytest.raises(SSL.Error):  # the server never completed: it can read no application data
        server.recv(1)


def test_a_waiter_that_raises_refuses_and_spoils_no_later_connection(chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    shared = client_context(chain)
    good = ocsp_response(chain.leaf, chain.intermediate)

    def broken(der: bytes) -> bool:
        raise RuntimeError("a bug in a judge")

    client = SSL.Connection(shared)
    mitm_internals.request_staple(client, broken)
    with caplog.at_level(logging.ERROR, "tlsgate.tls"), pytest.raises(SSL.Error):
        handshake(client, SSL.Connection(server_context(chain, good)))
    assert "refusing the connection" in caplog.text
    later = SSL.Connection(shared)
    mitm_internals.request_staple(later, lambda der: True)
    handshake(later, SSL.Connection(server_context(chain, good)))  # no exception left behind on the shared context
