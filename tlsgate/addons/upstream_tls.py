"""Checks the proxy's connection to each upstream server with the judges of `tlsgate.checks.registry`.

This add-on gathers the facts and runs each phase's judges when they exist:
the chain phase (protocol, suite, certificates, pins, ...) inside OpenSSL's
certificate verify callback, where the version and suite are already
negotiated and the validated chain is at hand; the stapled phase inside
OpenSSL's OCSP status callback (only where a judge of it applies); the
established phase (the app's declaration, ...) once the handshake is done.
Refusing in a callback aborts the handshake, so a blocked server never
receives a request byte. mitmproxy's own validation runs first and is never
loosened; the callbacks can only add refusals. The client's request on such a
connection is then answered by tlsgate with a block page naming the reason.

QUIC upstreams (aioquic, no verify callback) are judged by the same checks in
`tls_established_server`, which mitmproxy runs before aioquic sends its last
handshake flight; a refused one is closed there, so it never gets a stream.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable

from cryptography import x509
from mitmproxy import connection, ctx, exceptions, http, tcp, tls
from mitmproxy.proxy.layers.quic import QuicTlsData
from OpenSSL import SSL

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.mitm_internals import (
    close_quic,
    correct_connection_advice,
    corrected_advice,
    legacy_connection,
    request_staple,
    verify_result,
)
from tlsgate.addons.state import Connections, ConnState, ServerSide, is_quic, server_host
from tlsgate.addons.verdicts import block, chain_seen, fail_closed, pin_set_checked, record_once, upstream_decided
from tlsgate.checks import registry
from tlsgate.checks.model import Action, Check, Effect, Issue, Severity, blocks, decide, remedy_for
from tlsgate.checks.quic import quic_facts, quic_failure_text
from tlsgate.checks.registry import Found, HandshakeFacts, Phase
from tlsgate.checks.upstream import evidence_for, handshake_floor, judge_failure
from tlsgate.policy import Mode
from tlsgate.policy.sections.pins import PINS
from tlsgate.policy.sections.tls import TLS
from tlsgate.sinks.findings import Finding
from tlsgate.sinks.refusals import explain_refusals
from tlsgate.tls.transport import TRANSPORT_TCP, transport_of

logger = logging.getLogger("tlsgate.tls")


def presented_chain(data: tls.TlsData) -> list[x509.Certificate]:
    """The chain as the server sent it (no trust anchor), for when the verify callback never saw it."""
    if data.ssl_conn is None:  # QUIC: mitmproxy copies aioquic's peer chain onto the connection
        return [c.to_cryptography() for c in data.conn.certificate_list]
    return [c.to_cryptography() for c in (data.ssl_conn.get_peer_cert_chain() or [])]


# mitmproxy 12.3 options that swap the interception CA for a public chain and drop revocation lookups to it
EMUDHRA_OPTIONS = ("emudhra", "emudhra_old")


class UpstreamTls:
    def __init__(self, connections: Connections, sink: FindingsSink) -> None:
        self.connections = connections
        self.sink = sink

    def load(self, loader) -> None:
        # mitmproxy's console advice after a refused server is `connection_strategy=lazy`, which configure refuses.
        correct_connection_advice()
        explain_refusals()

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """The 502 for a CONNECT whose server could not be reached carries the same advice; correct it too."""
        if flow.response is not None and flow.response.raw_content and b"connection_strategy" in flow.response.raw_content:
            flow.response.text = corrected_advice(flow.response.text or "")

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "eager":
            raise exceptions.OptionsError(
                "tlsgate needs connection_strategy=eager: upstream TLS is judged before the client's request is read, "
                "so a refused server never receives it"
            )
        for name in EMUDHRA_OPTIONS:
            if name in updated and getattr(ctx.options, name, False):
                raise exceptions.OptionsError(
                    f"tlsgate refuses {name}: it signs interception certificates with a compromised public "
                    "intermediate instead of tlsgate's CA (so probes, the CA tlsgate prints and its audits would "
                    "name a CA that is not the one signing) and silently drops the apps' OCSP and CRL requests "
                    "to that chain's hosts; install tlsgate's CA on the device instead (`tlsgate ca export`)"
                )

    def client_disconnected(self, client: connection.Client) -> None:
        explain_refusals().forget(client)  # a reason mitmproxy never logged must not name a later connection

    # -- gather ---------------------------------------------------------------------------------

    def tls_start_server(self, tls_start: tls.TlsData) -> None:
        # A server hook always carries the Server; mitmproxy's TlsData types it as Connection.
        if not isinstance(tls_start.conn, connection.Server) or tls_start.ssl_conn is None or tls_start.is_dtls:
            return
        state = self.connections.of(tls_start.context.client)
        if state is None:
            return
        host = server_host(tls_start.conn)
        match = state.settle(host) if state.match is None else state.match_for(host, state.policy)
        side = ServerSide(match, HandshakeFacts())
        floor = handshake_floor(TLS.of(match.settings), match.settings.mode is Mode.REPORT)
        if floor is not None:
            tls_start.ssl_conn = legacy_connection(tls_start, floor)
        ssl_conn = tls_start.ssl_conn
        client = tls_start.context.client
        ssl_conn.set_verify(ssl_conn.get_verify_mode() or SSL.VERIFY_NONE, self._verify_callback(side, client))
        if registry.wanted(Phase.STAPLED, match):  # only then: asking changes the hello every upstream sees
            request_staple(ssl_conn, self._staple_callback(side, client))
        state.servers[tls_start.conn.id] = side

    def quic_start_server(self, data: QuicTlsData) -> None:
        """A QUIC upstream (`quic: inspect`, or report mode): aioquic has no verify callback to refuse in.

        aioquic validates with the trust settings tlsconfig gave it; tlsgate's own
        verdict is taken in `tls_established_server`, which mitmproxy runs before
        aioquic's last handshake flight is sent, so a refused server still never
        receives a stream frame.
        """
        if not isinstance(data.conn, connection.Server):
            return
        state = self.connections.of(data.context.client)
        if state is None:
            return
        host = server_host(data.conn)
        match = state.settle(host) if state.match is None else state.match_for(host, state.policy)
        state.servers[data.conn.id] = ServerSide(match, HandshakeFacts())

    def _verify_callback(self, side: ServerSide, client: connection.Client | None = None):
        def callback(conn: SSL.Connection, cert, errno: int, depth: int, ok: int) -> bool:
            try:
                # OpenSSL walks the chain from the trust anchor down to the leaf (depth 0).
                side.facts.chain.insert(0, cert.to_cryptography())
                if depth != 0 or not ok or Phase.CHAIN in side.phases:
                    return bool(ok)
                side.facts.protocol = conn.get_protocol_version_name()
                side.facts.cipher = conn.get_cipher_name()
                refused = self._judge(side, Phase.CHAIN, dt.datetime.now(dt.UTC))
            except Exception:  # an exception here would surface as a crash mid-handshake: fail closed instead
                logger.exception("tlsgate: upstream certificate check failed; refusing the connection")
                side.found = [_check_failed()]
                refused = True
            if refused and client is not None:  # OpenSSL's own words: "unspecified certificate verification error"
                self._explain(side, client)
            return not refused

        return callback

    def _staple_callback(self, side: ServerSide, client: connection.Client) -> Callable[[bytes], bool]:
        def on_staple(der: bytes) -> bool:
            try:
                side.facts.stapled_ocsp = bytes(der)
                refused = self._judge(side, Phase.STAPLED, dt.datetime.now(dt.UTC))
            except Exception:  # as in the verify callback: a check that cannot run refuses the server
                logger.exception("tlsgate: upstream OCSP check failed; refusing the connection")
                side.found = [*side.found, _check_failed()]
                refused = True
            if refused:
                self._explain(side, client)
            return not refused

        return on_staple

    @staticmethod
    def _judge(side: ServerSide, phase: Phase, now: dt.datetime) -> bool:
        """Run `phase`'s judges on what the handshake has shown; True when the connection must be refused now."""
        judged = registry.run(phase, side.facts, side.match, now)
        side.phases.add(phase)
        side.found += judged.found
        side.deferred += judged.deferred
        return blocks(side.issues, side.match.settings.mode)

    @staticmethod
    def _explain(side: ServerSide, client: connection.Client) -> None:
        """Give mitmproxy's coming handshake-failure lines tlsgate's reason; never raises (it runs inside OpenSSL)."""
        try:
            mode = side.match.settings.mode
            issue = next((i for i in side.issues if decide(i, mode) in (Action.BLOCKED, Action.FAILED)), None)
            if issue is not None:
                explain_refusals().note(client, "Server", side.match.host, str(issue.check), side.match.rule_ref, issue.detail)
        except Exception:  # the console line stays mitmproxy's own; the refusal and its finding are unaffected
            logger.exception("tlsgate: could not note the reason for a refused server on the console")

    # -- decide ---------------------------------------------------------------------------------

    def tls_established_server(self, data: tls.TlsData) -> None:
        if not isinstance(data.conn, connection.Server):  # as in tls_start_server: a server hook's side is a Server
            return
        if is_quic(data.conn):
            state = self.connections.peek(data.context.client)
            if state is not None and data.conn.id not in state.servers:
                self.quic_start_server(data)  # type: ignore[arg-type]  # a QUIC upstream is never left unjudged
        state, side = self._side(data)
        if state is None or side is None:
            return
        quic = is_quic(data.conn)
        now = dt.datetime.now(dt.UTC)
        try:
            if quic:  # judged only now: aioquic has no callback to judge in
                side.facts = quic_facts(data.conn.cipher, presented_chain(data))
            elif Phase.CHAIN not in side.phases:  # no verify callback ran (resumed session, verification off)
                facts = side.facts
                facts.chain, facts.protocol, facts.cipher = presented_chain(data), data.conn.tls_version, data.conn.cipher
            elif side.facts.cipher is None:
                side.facts.cipher = data.conn.cipher  # TLS 1.2 names its suite only now
            self._judge_the_rest(side, now)
        except Exception:  # as in the verify callback: a check that cannot run refuses the server
            logger.exception("tlsgate: upstream check failed; refusing the connection")
            side.found = [_check_failed()]
        side.blocked = self._record(state, side, side.found, data.conn)
        side.blocked_in = Phase.CHAIN if side.blocked is not None else None
        self._observe(side, side.issues, side.blocked, pins_checked=True, transport=transport_of(data.conn))
        if side.blocked is not None and quic:
            # aioquic still holds the client Finished: after this it sends only CONNECTION_CLOSE, so the server
            # never completes the handshake; requests on this connection are answered by `request` below.
            if not close_quic(data.context, data.conn, f"tlsgate refused this server ({side.blocked.check})"):
                logger.warning("tlsgate: could not close a refused QUIC server connection; its requests are still refused")
        elif side.blocked is not None and data.ssl_conn is not None:  # TCP: `tls_start_server` saw an ssl_conn
            # Close our side now: with connection_strategy=eager no request has been read yet, and a shut
            # down session refuses to write, so even a request routed here later cannot leave.
            with contextlib.suppress(SSL.Error):
                data.ssl_conn.shutdown()
        if side.blocked is None:
            self._judge_established(state, side, data.conn, now)

    def _judge_the_rest(self, side: ServerSide, now: dt.datetime) -> None:
        """The handshake phases no callback judged (QUIC, resumed sessions, no staple asked for), then the judges that
        waited for the established connection (listed first: what they find is about the handshake's start)."""
        for phase in (Phase.CHAIN, Phase.STAPLED):
            if phase not in side.phases:
                self._judge(side, phase, now)
        if side.deferred:
            again = registry.run_judges(side.deferred, side.facts, side.match, now)
            side.deferred = []
            side.found = [*again.found, *side.found]

    def _judge_established(self, state: ConnState, side: ServerSide, server: connection.Server, now: dt.datetime) -> None:
        """The established phase: the connection stays up, and a block refuses its requests at their headers."""
        judged = registry.run(Phase.ESTABLISHED, side.facts, side.match, now)
        side.phases.add(Phase.ESTABLISHED)
        side.found += judged.found
        blocked = self._record(state, side, judged.found, server)
        if blocked is not None:
            side.blocked, side.blocked_in = blocked, Phase.ESTABLISHED

    def tls_failed_server(self, data: tls.TlsData) -> None:
        if not isinstance(data.conn, connection.Server):
            return
        state, side = self._side(data)
        if state is None or side is None:
            return
        if side.issues and any(i.blocking for i in side.issues):
            side.blocked = self._record(state, side, side.found, data.conn)  # our own refusal from a handshake callback
            side.blocked_in = Phase.CHAIN if side.blocked is not None else None
            self._observe(side, side.issues, side.blocked, pins_checked=True, transport=transport_of(data.conn))
            return
        presented = presented_chain(data)
        error = quic_failure_text(data.conn.error) if is_quic(data.conn) else data.conn.error or "handshake failed"
        chain = presented or side.facts.chain
        issues = [judge_failure(error, verify_result(data.ssl_conn), chain, TLS.of(side.match.settings))]
        side.facts.chain = presented or side.facts.chain
        # Validation failures block in every mode: report mode never loosens mitmproxy's own checks.
        side.blocked = self._record(state, side, [Found(None, issue) for issue in issues], data.conn)
        side.blocked_in = Phase.CHAIN if side.blocked is not None else None
        self._observe(side, issues, side.blocked, pins_checked=False, transport=transport_of(data.conn))

    def _side(self, data: tls.TlsData) -> tuple[ConnState | None, ServerSide | None]:
        state = self.connections.peek(data.context.client)
        side = state.servers.get(data.conn.id) if state is not None else None
        if side is None or side.done:
            return state, None
        side.done = True
        return state, side

    def _record(self, state: ConnState, side: ServerSide, found: list[Found], server: connection.Server) -> Finding | None:
        """Findings for every issue; returns the first blocking one when requests must be refused."""
        first_block: Finding | None = None
        if not found:
            return None  # the common case: no evidence to build
        match = side.match
        base = evidence_for(side.facts.protocol, side.facts.cipher, side.facts.chain)
        base["transport"] = transport_of(server)
        for judge, issue in ((f.judge, f.issue) for f in found):
            remedy = issue.remedy
            if issue.effect is Effect.ENFORCED:
                to_report = remedy_for(match, "mode: report")
                remedy = f"{remedy}; or {to_report}" if remedy else to_report
            once = judge is not None and issue.kind in judge.once and issue.effect is Effect.RECORD
            key = (judge.name if judge else "", _device(state), match.host, issue.kind) if once else None
            with_connection = judge is None or judge.connection_evidence
            finding = record_once(
                self.sink,
                key,
                state,
                state.client,
                issue,
                match,
                server.address[1] if server.address else None,
                evidence={"kind": issue.kind, **base, **issue.evidence} if with_connection else None,
                remedy=remedy,
            )
            if finding is None:
                continue  # said before for this device and host: counted (`Repeats`)
            if decide(issue, match.settings.mode) in (Action.BLOCKED, Action.FAILED) and first_block is None:
                first_block = finding
        return first_block

    def _observe(
        self, side: ServerSide, issues: list[Issue], block: Finding | None, pins_checked: bool, transport: str = TRANSPORT_TCP
    ) -> None:
        upstream_decided(self.sink, block, issues, transport)
        if pins_checked and PINS.get(side.match.settings) is not None:
            pin_set_checked(self.sink, issues)
        pattern = side.match.pattern.text if side.match.pattern else None
        chain_seen(self.sink, pattern, (c.not_valid_after_utc.timestamp() for c in side.facts.chain))

    # -- apply ----------------------------------------------------------------------------------

    def _blocked(self, client: connection.Client, server: connection.Server | None) -> Finding | None:
        state = self.connections.peek(client)
        if state is None or server is None:
            return None
        side = state.servers.get(server.id)
        return side.blocked if side is not None else None

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or not flow.live or flow.server_conn is None:
            return
        finding = self._blocked(flow.client_conn, flow.server_conn)
        if finding is not None:
            block(flow, finding)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        if self._blocked(flow.client_conn, flow.server_conn) is not None:
            flow.kill()


def _check_failed() -> Found:
    detail = "tlsgate could not check this server (see log)"
    return Found(None, Issue(Check.TLS, "check_failed", Effect.ALWAYS, Severity.HIGH, detail))


def _device(state: ConnState) -> str:
    """Whose standing problem a `once` kind is: the device's name, else the client's address."""
    if state.device:
        return state.device
    return state.client.peername[0] if state.client.peername else "?"
