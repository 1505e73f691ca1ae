"""Every use of mitmproxy's and pyOpenSSL's private names, in one place, with a test that notices when they move.

tlsgate rebuilds TLS connections the way mitmproxy's `tlsconfig` add-on builds
them, changing one thing each time; that needs a few names mitmproxy and
pyOpenSSL do not promise to keep (`_default_ciphers`, `SSL._lib`, ...).
`tests/unit/test_mitm_internals.py` pins the source of the tlsconfig functions
these copies follow, so an upgrade that changes them fails loudly here first.

Client side: the client audits need two changes to what the app is shown: another
certificate (an invalid-certificate probe) or another version floor (refuse a
client below `client.min_version`, or let a report-mode or explicitly allowed
old client in). Everything else (cipher list, curve, DH parameters, client
certificate request, and the ALPN choice via tlsconfig's own callback and app
data) is copied from what tlsconfig configured, so a probed or re-floored
connection differs from a normal one only in what is being tested.
"""

from __future__ import annotations

import ipaddress
import logging
import re

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
from OpenSSL import SSL

from proxy.tls import versions
from proxy.tls.probes import KeyType


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
) -> SSL.Connection:
    """Replace tlsconfig's client-side connection; `certificate`/`key` default to tlsconfig's own for the host."""
    tlsconfig = tlsconfig_addon()
    previous = tls_start.ssl_conn
    assert previous is not None, "tlsconfig must have built the connection first"
    min_version = floor_version(floor) if floor else net_tls.Version[ctx.options.tls_version_client_min]
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
    param = SSL._lib.SSL_get0_param(conn._ssl)  # type: ignore[attr-defined]
    if hostflags is not None:
        SSL._lib.X509_VERIFY_PARAM_set_hostflags(param, hostflags)  # type: ignore[attr-defined]
    try:
        ip = ipaddress.ip_address(host).packed
    except ValueError:
        name = host.encode("idna")
        conn.set_tlsext_host_name(name)
        ok = SSL._lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))  # type: ignore[attr-defined]
    else:
        ok = SSL._lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))  # type: ignore[attr-defined]
    SSL._openssl_assert(ok == 1)  # type: ignore[attr-defined]


def verify_result(conn: SSL.Connection | None) -> int | None:
    """OpenSSL's verify result code for a connection (0: verified), which pyOpenSSL does not expose."""
    return SSL._lib.SSL_get_verify_result(conn._ssl) if conn is not None else None  # type: ignore[attr-defined]


def verify_error_text(code: int) -> str:
    return SSL._ffi.string(SSL._lib.X509_verify_cert_error_string(code)).decode()  # type: ignore[attr-defined]


class _ReusePortAsyncio:
    """asyncio as mitmproxy's server module sees it, with listeners that share their port."""

    def __getattr__(self, name: str) -> object:
        import asyncio

        return getattr(asyncio, name)

    @staticmethod
    async def start_server(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        import asyncio

        kwargs.setdefault("reuse_port", True)
        return await asyncio.start_server(*args, **kwargs)  # type: ignore[arg-type]


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
