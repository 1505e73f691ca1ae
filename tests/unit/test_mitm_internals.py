"""Fails when mitmproxy changes the code tlsgate's TLS rebuilds copy, or drops a private name they use.

`proxy/addons/mitm_internals.py` builds client- and server-side TLS connections
the way mitmproxy's `tlsconfig` add-on does, changing one thing each time. If
an upgrade changes how tlsconfig builds them, the copies silently diverge (a
probe certificate sent with another cipher list, a legacy upstream connection
without hostname checks). These hashes make that divergence a failing test:
read the new mitmproxy source, update `mitm_internals.py` to match, then the hash.
"""

from __future__ import annotations

import hashlib
import inspect

import pytest
from mitmproxy import version
from mitmproxy.addons import tlsconfig
from mitmproxy.net import tls as net_tls
from OpenSSL import SSL

from proxy.addons import mitm_internals

PINNED = {
    "TlsConfig.tls_start_client": (tlsconfig.TlsConfig.tls_start_client, "05334c27c22a10ed"),
    "TlsConfig.tls_start_server": (tlsconfig.TlsConfig.tls_start_server, "2e2dc9c25670cf64"),
    "create_client_proxy_context": (net_tls.create_client_proxy_context, "8a3bd5b54ef3d093"),
    "create_proxy_server_context": (net_tls.create_proxy_server_context, "e2d90d71c5744797"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_tlsconfig_code_the_rebuilds_follow_is_unchanged(name: str) -> None:
    function, pinned = PINNED[name]
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert digest == pinned, (
        f"mitmproxy {version.VERSION} changed {name}: re-read it, bring proxy/addons/mitm_internals.py in line, "
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
