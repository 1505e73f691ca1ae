"""`mitm_internals.ask_for_staple` / `stapled_response` on real OpenSSL handshakes: a shared context, each connection's own staple.

Handshakes run over memory BIOs (no sockets): a pyOpenSSL server that staples
what it is told, and client connections on one context, as mitmproxy's cached
upstream context is shared.
"""

from __future__ import annotations

import contextlib

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


def test_the_private_reader_still_exists() -> None:
    assert hasattr(SSL._lib, "SSL_get_tlsext_status_ocsp_resp")


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_each_connection_on_a_used_shared_context_reads_its_own_staple(chain: Chain, version: int) -> None:
    shared = client_context(chain)
    SSL.Connection(shared)  # mitmproxy's cached context has made connections before: pyOpenSSL freezes it then
    good = ocsp_response(chain.leaf, chain.intermediate)
    revoked = ocsp_response(chain.leaf, chain.intermediate, status="revoked")
    got = []
    for staple in (good, revoked, b""):
        client = SSL.Connection(shared)
        mitm_internals.ask_for_staple(client)
        handshake(client, SSL.Connection(server_context(chain, staple, version)))
        got.append(mitm_internals.stapled_response(client))
    assert got == [good, revoked, b""]


def test_a_connection_that_did_not_ask_sends_no_status_request(chain: Chain) -> None:
    good = ocsp_response(chain.leaf, chain.intermediate)
    server_context_ = server_context(chain, good)
    asked: list[int] = []

    def staple(conn: SSL.Connection, data: object) -> bytes:
        asked.append(1)
        return good

    server_context_.set_ocsp_server_callback(staple)
    client = SSL.Connection(client_context(chain))
    handshake(client, SSL.Connection(server_context_))
    assert asked == [] and mitm_internals.stapled_response(client) == b""


def test_a_server_that_does_not_staple(chain: Chain) -> None:
    plain = SSL.Context(SSL.TLS_SERVER_METHOD)
    plain.use_certificate(chain.leaf.cert)
    plain.use_privatekey(chain.leaf.key)
    plain.add_extra_chain_cert(chain.intermediate.cert)
    client = SSL.Connection(client_context(chain))
    mitm_internals.ask_for_staple(client)
    handshake(client, SSL.Connection(plain))
    assert mitm_internals.stapled_response(client) == b""
