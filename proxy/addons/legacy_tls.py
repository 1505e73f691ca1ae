"""An upstream TLS connection that can negotiate TLS 1.0/1.1 and legacy suites, for one host only.

mitmproxy (with OpenSSL 4) refuses to start when its global minimum is below
TLS 1.2, and that is the right global default. A report-mode rule for a legacy
backend must still reach it, so this builds that one connection the way
mitmproxy's tlsconfig addon builds every other (same trust store, same
hostname verification, same ALPN), only with a lower floor and @SECLEVEL=0.
"""

from __future__ import annotations

import ipaddress

from mitmproxy import ctx, tls
from mitmproxy.addons.tlsconfig import _DEFAULT_CIPHERS_WITH_SECLEVEL_0, DEFAULT_HOSTFLAGS
from mitmproxy.net import tls as net_tls
from OpenSSL import SSL

FLOORS = {"1.0": net_tls.Version.TLS1, "1.1": net_tls.Version.TLS1_1}


def legacy_connection(tls_start: tls.TlsData, floor: str) -> SSL.Connection:
    server = tls_start.conn
    verify = net_tls.Verify.VERIFY_NONE if ctx.options.ssl_insecure else net_tls.Verify.VERIFY_PEER
    context = net_tls.create_proxy_server_context(
        method=net_tls.Method.TLS_CLIENT_METHOD,
        min_version=FLOORS[floor],
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
        param = SSL._lib.SSL_get0_param(conn._ssl)  # type: ignore[attr-defined]
        SSL._lib.X509_VERIFY_PARAM_set_hostflags(param, DEFAULT_HOSTFLAGS)  # type: ignore[attr-defined]
        try:
            ip = ipaddress.ip_address(server.sni).packed
        except ValueError:
            name = server.sni.encode("idna")
            conn.set_tlsext_host_name(name)
            ok = SSL._lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))  # type: ignore[attr-defined]
        else:
            ok = SSL._lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))  # type: ignore[attr-defined]
        SSL._openssl_assert(ok == 1)  # type: ignore[attr-defined]
    if server.alpn_offers:
        conn.set_alpn_protos(list(server.alpn_offers))
    conn.set_connect_state()
    return conn
