"""A client-side TLS connection built the way mitmproxy's tlsconfig builds it, with one thing changed.

The client audits need two changes to what the app is shown: another
certificate (an invalid-certificate probe) or another version floor (refuse a
client below `client.min_version`, or let a report-mode or explicitly allowed
old client in). Everything else (cipher list, curve, DH parameters, client
certificate request, and the ALPN choice via tlsconfig's own callback and app
data) is copied from what tlsconfig configured, so a probed or re-floored
connection differs from a normal one only in what is being tested.
"""

from __future__ import annotations

from cryptography import x509
from mitmproxy import certs, ctx, tls
from mitmproxy.addons.tlsconfig import TlsConfig, _default_ciphers, alpn_select_callback
from mitmproxy.net import tls as net_tls
from OpenSSL import SSL

from proxy.tls.probes import KeyType

_V = net_tls.Version
FLOORS = {"1.0": _V.TLS1, "1.1": _V.TLS1_1, "1.2": _V.TLS1_2, "1.3": _V.TLS1_3}
_OPTION_WORDS = {"TLS1": "1.0", "TLS1_1": "1.1", "TLS1_2": "1.2", "TLS1_3": "1.3"}


def configured_floor() -> str:
    """mitmproxy's client-side minimum (`tls_version_client_min`) in the policy's words; "0.3" when unbounded/SSL 3."""
    return _OPTION_WORDS.get(ctx.options.tls_version_client_min, "0.3")


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
) -> SSL.Connection:
    """Replace tlsconfig's client-side connection; `certificate`/`key` default to tlsconfig's own for the host."""
    tlsconfig = tlsconfig_addon()
    previous = tls_start.ssl_conn
    assert previous is not None, "tlsconfig must have built the connection first"
    min_version = FLOORS[floor] if floor else net_tls.Version[ctx.options.tls_version_client_min]
    chain_file = None
    if certificate is None or key is None:
        entry = tlsconfig.get_cert(tls_start.context)
        certificate, key, chain_file = entry.cert.to_cryptography(), entry.privatekey, entry.chain_file
    context = net_tls.create_client_proxy_context(
        method=net_tls.Method.TLS_SERVER_METHOD,
        min_version=min_version,
        max_version=net_tls.Version[ctx.options.tls_version_client_max],
        cipher_list=tuple(tls_start.conn.cipher_list or _default_ciphers(min_version)),
        ecdh_curve=net_tls.get_curve(ctx.options.tls_ecdh_curve_client),
        chain_file=chain_file,
        request_client_cert=ctx.options.request_client_cert,
        alpn_select_callback=alpn_select_callback,
        extra_chain_certs=tuple(certs.Cert(c) for c in chain),
        dhparams=tlsconfig.certstore.dhparams,
    )
    conn = SSL.Connection(context)
    conn.use_certificate(certificate)
    conn.use_privatekey(key)
    conn.set_app_data(previous.get_app_data())  # tlsconfig's ALPN decision inputs, unchanged
    conn.set_accept_state()
    return conn
