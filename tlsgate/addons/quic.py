"""Decides, per QUIC connection, whether it is refused or inspected (`quic:` in the policy).

mitmproxy terminates QUIC itself in the modes that carry UDP (wireguard,
local, tun, reverse:http3://). Without this add-on such a connection would
bypass every pyOpenSSL-based check, so each one is judged at its ClientHello:

- refused (`quic: refuse`, enforce mode): the upstream handshake is not
  started (`establish_server_tls_first = False`, so the server receives not
  even an Initial packet), and the client's handshake is made to fail at once:
  `quic_start_client` offers only an ALPN no client asks for, so aioquic answers
  the ClientHello with a CONNECTION_CLOSE (CRYPTO_ERROR, handshake_failure)
  before any certificate is shown. Clients such as Chrome/Cronet then mark QUIC
  broken for the origin and use TCP. This uses only mitmproxy's public hooks;
  a QUIC-level CONNECTION_REFUSED would need the layer's private aioquic
  connection before its first send, which no hook offers. The finding is
  recorded once per client address and host, not per retry.
- inspected (`quic: inspect`, or any `quic:` in report mode): the upstream
  checks (`UpstreamTls`) and client audits (`ClientAudit`) run on it as on TCP;
  in report mode a would-be refusal is recorded as reported.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, tls
from mitmproxy.proxy.layers.quic import QuicTlsData

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.mitm_internals import quic_client_id, refuse_handshake
from tlsgate.addons.state import Connections, is_quic, server_host
from tlsgate.addons.verdicts import quic_decided, record
from tlsgate.checks.quic import quic_refused, quic_setting, refuses
from tlsgate.policy.sections.quic import Quic
from tlsgate.sinks.refusals import explain_refusals
from tlsgate.tls.recent import Once

logger = logging.getLogger("tlsgate.quic")


class QuicGuard:
    def __init__(self, connections: Connections, sink: FindingsSink, capacity: int = 4096) -> None:
        self.connections = connections
        self.sink = sink
        # (client address, host) pairs already told about: a refused app retries QUIC on every request.
        self._said: Once[tuple[str, str]] = Once(capacity)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        if data.ignore_connection or not is_quic(client):
            return
        state = self.connections.of(client)
        if state is None:
            return
        try:
            match = state.settle(data.client_hello.sni or server_host(data.context.server))
            refuse = refuses(match)
            if refuse:
                data.establish_server_tls_first = False  # the server is never contacted for a refused connection
                state.quic_refused = True
            decision = "refused" if refuse else "inspected" if quic_setting(match) is Quic.INSPECT else "reported"
            alpn = [a.decode("ascii", "replace") for a in data.client_hello.alpn_protocols]
            issue = quic_refused(match, alpn)
            if decision != "inspected" and self._first(client, match.host):
                port = data.context.server.address[1] if data.context.server.address else None
                record(self.sink, state, client, issue, match, port)
            if refuse:  # aioquic's own words for the failed handshake would be "No common ALPN protocols"
                explain_refusals().note(client, "Client", match.host, str(issue.check), match.rule_ref, issue.detail)
        except Exception:  # fail closed: a QUIC connection tlsgate could not judge is refused
            logger.exception("tlsgate: could not judge a QUIC connection; refusing it")
            data.establish_server_tls_first = False
            state.quic_refused = True
            decision = "refused"
            explain_refusals().note(client, "Client", "this QUIC connection", "quic", "-", "tlsgate could not judge it (see log)")
        quic_decided(self.sink, decision)

    def quic_start_client(self, data: QuicTlsData) -> None:
        if not isinstance(data.conn, connection.Client):  # a client hook: mitmproxy types the side as Connection
            return
        state = self.connections.peek(data.conn)
        if state is not None and state.quic_refused:
            refuse_handshake(data)
            refusals = explain_refusals()
            reason, connection_id = refusals.reason(data.conn, "Client"), quic_client_id(data.context, data.conn)
            if reason is not None and connection_id is not None:
                refusals.note_quic_id(connection_id, reason)

    def _first(self, client: connection.Client, host: str) -> bool:
        return self._said.first((client.peername[0] if client.peername else "?", host))
