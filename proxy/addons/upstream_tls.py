"""Checks the proxy's connection to each upstream server: protocol, suite, certificates, pins.

The verdict is taken inside OpenSSL's certificate verify callback, where the
version and suite are already negotiated and the validated chain is at hand:
refusing there aborts the handshake, so a blocked server never receives a
request byte. mitmproxy's own validation runs first and is never loosened;
the callback can only add refusals. The client's request on such a
connection is then answered by tlsgate with a block page naming the reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field

from cryptography import x509
from mitmproxy import connection, ctx, exceptions, http, tcp, tls
from OpenSSL import SSL

from proxy.addons.findings import FindingsSink
from proxy.addons.legacy_tls import legacy_connection
from proxy.addons.policy import PolicyStore
from proxy.addons.verdicts import block_response, enforced, remedy_for, report
from proxy.findings import Finding
from proxy.metrics import Metrics
from proxy.policy import Match, Mode
from proxy.tls.judge import Issue, evidence_for, handshake_floor, judge_cipher, judge_failure, judge_handshake

logger = logging.getLogger("tlsgate.tls")


@dataclass
class _Upstream:
    """What one upstream TLS connection has shown so far."""

    match: Match
    client: connection.Client
    chain: list[x509.Certificate] = field(default_factory=list)
    issues: list[Issue] | None = None  # set once the leaf has been judged
    protocol: str | None = None
    cipher: str | None = None

    def judge(self) -> None:
        settings = self.match.settings
        self.issues = judge_handshake(
            self.protocol,
            self.cipher,
            self.chain,
            settings.get("tls"),
            settings.get("certificates"),
            settings.get("pins"),
            dt.datetime.now(dt.UTC),
        )


def presented_chain(data: tls.TlsData) -> list[x509.Certificate]:
    """The chain as the server sent it (no trust anchor), for when the verify callback never saw it."""
    return [c.to_cryptography() for c in (data.ssl_conn.get_peer_cert_chain() or [])] if data.ssl_conn else []


class UpstreamTls:
    def __init__(self, store: PolicyStore, sink: FindingsSink, metrics: Metrics | None = None) -> None:
        self.store = store
        self.sink = sink
        self.metrics = metrics
        self._open: dict[str, _Upstream] = {}  # server connection id -> state, until the handshake ends
        self._blocked: dict[str, Finding] = {}  # server connection id -> why requests on it are refused
        self._by_client: dict[str, list[str]] = {}

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "eager":
            raise exceptions.OptionsError(
                "tlsgate needs connection_strategy=eager: upstream TLS is judged before the client's request is read, "
                "so a refused server never receives it"
            )

    # -- gather ---------------------------------------------------------------------------------

    def tls_start_server(self, tls_start: tls.TlsData) -> None:
        policy = self.store.policy
        if policy is None or tls_start.ssl_conn is None or tls_start.is_dtls:
            return
        server = tls_start.conn
        match = policy.match(server.sni or server.address[0])
        state = _Upstream(match, tls_start.context.client)
        floor = handshake_floor(match.settings.get("tls"), match.settings.mode is Mode.REPORT)
        if floor is not None:
            tls_start.ssl_conn = legacy_connection(tls_start, floor)
        ssl_conn = tls_start.ssl_conn
        ssl_conn.set_verify(ssl_conn.get_verify_mode() or SSL.VERIFY_NONE, self._verify_callback(state))
        self._open[server.id] = state
        self._by_client.setdefault(tls_start.context.client.id, []).append(server.id)

    def _verify_callback(self, state: _Upstream):
        def callback(conn: SSL.Connection, cert, errno: int, depth: int, ok: int) -> bool:
            try:
                # OpenSSL walks the chain from the trust anchor down to the leaf (depth 0).
                state.chain.insert(0, cert.to_cryptography())
                if depth != 0 or not ok:
                    return bool(ok)
                state.protocol = conn.get_protocol_version_name()
                state.cipher = conn.get_cipher_name()
                state.judge()
                refuse = enforced(state.match) and any(i.blocking for i in state.issues)
                return not refuse
            except Exception:  # an exception here would surface as a crash mid-handshake: fail closed instead
                logger.exception("tlsgate: upstream certificate check failed; refusing the connection")
                state.issues = [Issue("tls", "check_failed", True, "high", "tlsgate could not check this server (see log)")]
                return False

        return callback

    # -- decide ---------------------------------------------------------------------------------

    def tls_established_server(self, data: tls.TlsData) -> None:
        state = self._open.pop(data.conn.id, None)
        if state is None:
            return
        if state.issues is None:  # no verify callback ran (resumed session, verification off): judge now
            state.chain, state.protocol, state.cipher = presented_chain(data), data.conn.tls_version, data.conn.cipher
            state.judge()
        elif state.cipher is None:
            # TLS 1.2 only reveals the suite once the handshake is done (pyOpenSSL has no SSL_get_pending_cipher).
            state.cipher = data.conn.cipher
            state.issues = [*judge_cipher(state.cipher, state.match.settings.get("tls")), *state.issues]
        block = self._record(state, state.issues, data.conn)
        self._observe(state, state.issues, block, pins_checked=True)
        if block is not None:
            self._blocked[data.conn.id] = block
            # Close our side now: with connection_strategy=eager no request has been read yet, and a shut
            # down session refuses to write, so even a request routed here later cannot leave.
            with contextlib.suppress(SSL.Error):
                data.ssl_conn.shutdown()

    def tls_failed_server(self, data: tls.TlsData) -> None:
        state = self._open.pop(data.conn.id, None)
        if state is None:
            return
        if state.issues and any(i.blocking for i in state.issues):
            block = self._record(state, state.issues, data.conn)  # our own refusal from the verify callback
            self._observe(state, state.issues, block, pins_checked=True)
        else:
            presented = presented_chain(data)
            code = SSL._lib.SSL_get_verify_result(data.ssl_conn._ssl) if data.ssl_conn else None  # type: ignore[attr-defined]
            error = data.conn.error or "handshake failed"
            issues = [judge_failure(error, code, presented or state.chain, state.match.settings.get("tls"))]
            state.chain = presented or state.chain
            # Validation failures block in every mode: report mode never loosens mitmproxy's own checks.
            block = self._record(state, issues, data.conn, validation_failure=True)
            self._observe(state, issues, block, pins_checked=False)
        if block is not None:
            self._blocked[data.conn.id] = block

    def _record(
        self, state: _Upstream, issues: list[Issue], server: connection.Server, validation_failure: bool = False
    ) -> Finding | None:
        """Findings for every issue; returns the first blocking one when requests must be refused."""
        first_block: Finding | None = None
        if not issues:
            return None  # the common case: no evidence to build
        base = evidence_for(state.protocol, state.cipher, state.chain)
        for issue in issues:
            blocks = issue.blocking and (validation_failure or enforced(state.match))
            action = "blocked" if blocks else "reported"
            remedy = issue.remedy
            if issue.blocking and not validation_failure:
                to_report = remedy_for(state.match, "mode: report")
                remedy = f"{remedy}; or {to_report}" if remedy else to_report
            finding = report(
                self.sink,
                self.store.policy,
                state.client,
                check=issue.check,
                match=state.match,
                port=server.address[1] if server.address else None,
                severity=issue.severity,
                detail=issue.detail,
                remedy=remedy,
                evidence={"kind": issue.kind, **base, **issue.evidence},
                action=action,
            )
            if blocks and first_block is None:
                first_block = finding
        return first_block

    def _observe(self, state: _Upstream, issues: list[Issue], block: Finding | None, pins_checked: bool) -> None:
        if self.metrics is None:
            return
        objection = block.check if block else next((i.check for i in issues), None)
        decision = "blocked" if block else "reported" if issues else "allowed"
        self.metrics.upstream_connection(decision, objection)
        if pins_checked and state.match.settings.get("pins") is not None:
            kinds = {i.kind for i in issues}
            self.metrics.pin_check(
                "mismatch" if "pin_mismatch" in kinds else "expired" if "pin_set_expired" in kinds else "match"
            )
        pattern = state.match.pattern.text if state.match.pattern else None
        self.metrics.certificate_expiry(pattern, (c.not_valid_after_utc.timestamp() for c in state.chain))

    # -- apply ----------------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or not flow.live or flow.server_conn is None:
            return
        finding = self._blocked.get(flow.server_conn.id)
        if finding is not None:
            flow.metadata["tlsgate"] = {"check": finding.check, "action": "blocked", "rule": finding.rule}
            flow.response = block_response(finding, flow.request.headers.get("accept", ""))

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        if flow.server_conn is not None and flow.server_conn.id in self._blocked:
            flow.kill()

    def client_disconnected(self, client: connection.Client) -> None:
        for server_id in self._by_client.pop(client.id, []):
            self._blocked.pop(server_id, None)
            self._open.pop(server_id, None)
