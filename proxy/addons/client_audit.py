"""Judges the apps themselves: what their ClientHello offers, why they refuse tlsgate, and whether they verify at all.

Per client connection, in mitmproxy's order of events:

- `tls_clienthello`: the hello is parsed and judged under the `client` rules of
  the host asked for (SNI, else the CONNECT/destination host). A client below
  `client.min_version` in enforce mode is to be refused; a connection under
  probe is to get an invalid certificate. Both turn off the early upstream
  handshake (`establish_server_tls_first`), so the server sees nothing beyond
  mitmproxy's eager TCP connect.
- `tls_start_client`: runs after tlsconfig built the client-side connection,
  which is rebuilt with the probe certificate or another version floor. A floor
  above the client's best version makes OpenSSL refuse the hello before any
  certificate is sent (mitmproxy 12 then closes the connection without flushing
  OpenSSL's protocol_version alert, so the client sees it closed mid-handshake).
- the first request: its User-Agent becomes evidence and the hello findings are
  recorded. On a connection whose client accepted a probe certificate nothing is
  forwarded, ever: each request gets a 403, and anything but HTTP gets a layer
  that hangs up (mitmproxy 12 relays a raw TCP flow even after `flow.kill()`).
- `tls_failed_client`: a probe the client refused has passed; a normal
  connection it refused is explained (CA not installed, or pinning).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import connection, http, tcp, tls
from mitmproxy.proxy import commands, events, layer, layers

from proxy import redact
from proxy.addons.cleartext import credentials_in
from proxy.addons.client_tls import client_connection, configured_floor, tlsconfig_addon
from proxy.addons.findings import FindingsSink
from proxy.addons.policy import PolicyStore
from proxy.addons.verdicts import block_response, enforced, report
from proxy.findings import Finding
from proxy.policy import Match, Policy
from proxy.policy.sections import ClientRules
from proxy.tls.clienthello import ClientHello, client_floor, judge_client_hello, parse_client_hello
from proxy.tls.judge import Issue
from proxy.tls.probes import (
    PROBE_REMEDIES,
    PROBE_WORDS,
    ProbeCertificate,
    ProbeMint,
    ProbeSchedule,
    client_rejection,
    likely_cause,
)

logger = logging.getLogger("tlsgate.client")

CLOSED_AFTER_HANDSHAKE = "closed after the handshake without sending a request"
TRUST_REMEDY = (
    "if the CA is missing: install it on the device (open http://mitm.it through the proxy, or `tlsgate ca export`; "
    "for apps that ignore user CAs on Android 7+, `tlsgate ca export --format android` into the system store of a test "
    "device). If the CA is installed and other apps work through tlsgate, the app pins its certificates: good for the "
    "app; to inspect it anyway, test a debug build whose network security config trusts the tlsgate CA"
)


@dataclass
class _Connection:
    """What one client connection has shown so far; dropped when the client disconnects."""

    match: Match
    hello: ClientHello
    asked_for: str
    port: int | None
    pending: list[Issue] = field(default_factory=list)  # hello findings, recorded once the User-Agent is known
    refuse: bool = False
    floor: str | None = None  # client-side TLS floor, when it differs from mitmproxy's
    probe: ProbeCertificate | None = None
    handshake_done: bool = False
    accepted: Finding | None = None  # the critical finding, once the client used a probe connection
    user_agent: str | None = None

    def evidence(self) -> dict[str, Any]:
        return {
            "sni": self.hello.sni,
            "best_offered_version": self.hello.best_version_word,
            **self.hello.fingerprint(),
            "user_agent": self.user_agent,
        }


class Hangup(layer.Layer):
    """Replaces any non-HTTP layer on an accepted probe connection: close both sides, relay nothing."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)


def sni_host(sni: str | None) -> str | None:
    """Some clients (Go's hey, for one) put `host:port` in SNI; rules match the host."""
    if sni and sni.count(":") == 1:
        host, _, port = sni.partition(":")
        return host if port.isdigit() else sni
    return sni


class ClientAudit:
    def __init__(self, store: PolicyStore, sink: FindingsSink, probe_pairs: int = 4096) -> None:
        self.store = store
        self.sink = sink
        self.schedule = ProbeSchedule(probe_pairs)
        self._mint: ProbeMint | None = None
        self._mint_source: object | None = None
        self._open: dict[str, _Connection] = {}  # client connection id -> state, until it disconnects
        # Reported hello findings describe the app's TLS stack, not one connection: say each once per
        # (client address, fingerprint, host, kind) instead of on every connection an app opens.
        self._said: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()
        self._said_limit = probe_pairs

    # -- the hello ---------------------------------------------------------------------------------

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        policy = self.store.policy
        client = data.context.client
        if policy is None or data.ignore_connection or client.transport_protocol != "tcp":
            return
        try:
            hello = parse_client_hello(data.client_hello.raw_bytes(wrap_in_record=False))
        except ValueError as exc:
            logger.info(f"tlsgate: cannot judge a ClientHello from {client.peername}: {exc}")
            return
        state = self._judge(policy, data.context.client, data.context.server, hello)
        if state.refuse or state.probe:
            data.establish_server_tls_first = False  # the server is never involved in a refusal or a probe
        self._open[client.id] = state

    def _judge(self, policy: Policy, client: connection.Client, server: connection.Server, hello: ClientHello) -> _Connection:
        asked_for = sni_host(hello.sni) or server.sni or (server.address[0] if server.address else "")
        match = policy.match(asked_for)
        rules: ClientRules = match.settings.get("client") or ClientRules()
        state = _Connection(match, hello, asked_for, server.address[1] if server.address else None)
        state.pending = judge_client_hello(hello, rules, enforced(match), asked_for)
        state.refuse = any(issue.blocking for issue in state.pending)
        state.floor = client_floor(hello.best_version_word, rules, enforced(match), configured_floor())
        if rules.probes and not state.refuse and client.peername:
            kind = self.schedule.next_kind(client.peername[0], match.host, rules.probes)
            state.probe = self._mint_for().certificate(match.host, kind) if kind else None
        return state

    def _mint_for(self) -> ProbeMint:
        """Probe certificates signed by the CA mitmproxy itself signs with (rebuilt if its store is reloaded)."""
        store = tlsconfig_addon().certstore
        if self._mint is None or self._mint_source is not store:
            self._mint = ProbeMint(store.default_privatekey, store.default_ca.to_cryptography())
            self._mint_source = store
        return self._mint

    def tls_start_client(self, tls_start: tls.TlsData) -> None:
        state = self._open.get(tls_start.conn.id)
        if state is None or tls_start.ssl_conn is None or tls_start.is_dtls:
            return
        if state.probe is not None:
            probe = state.probe
            tls_start.ssl_conn = client_connection(tls_start, state.floor, probe.cert, probe.key, probe.chain)
        elif state.floor is not None:
            tls_start.ssl_conn = client_connection(tls_start, state.floor)

    # -- handshake outcome -------------------------------------------------------------------------

    def tls_established_client(self, data: tls.TlsData) -> None:
        state = self._open.get(data.conn.id)
        if state is not None:
            state.handshake_done = True

    def tls_failed_client(self, data: tls.TlsData) -> None:
        state = self._open.get(data.conn.id)
        if state is None:
            return
        rejection = client_rejection(data.conn.error)
        if state.probe is not None:
            self._probe_refused(state, data.conn, rejection)
        elif rejection is not None and not state.refuse and data.ssl_conn is not None:
            self._trust_refused(state, data.conn, rejection)
        self._flush(state, data.conn)

    def _probe_refused(self, state: _Connection, client: connection.Client, rejection: str | None) -> None:
        probe = state.probe
        assert probe is not None
        if rejection is not None:
            self._probe_passed(state, client, rejection)
        elif client.peername:  # failed for another reason: the probe proved nothing, so it is tried again
            self.schedule.retry(client.peername[0], state.match.host, probe.kind)

    def _probe_passed(self, state: _Connection, client: connection.Client, rejection: str) -> None:
        probe = state.probe
        assert probe is not None
        self._record(
            state,
            client,
            check="client_probe",
            action="passed",
            severity="info",
            detail=f"the client refused {PROBE_WORDS[probe.kind]} for {state.asked_for} ({rejection}): "
            "it verifies this part of the certificate",
            remedy="",
            evidence={"kind": probe.kind, "rejection": rejection, "certificate": probe.summary()},
        )

    def _trust_refused(self, state: _Connection, client: connection.Client, rejection: str) -> None:
        self._record(
            state,
            client,
            check="client_trust",
            action="reported",
            severity="info",
            detail=f"the client refused tlsgate's certificate for {state.asked_for} ({rejection}): {likely_cause(rejection)}",
            remedy=TRUST_REMEDY,
            evidence={"kind": "certificate_refused", "rejection": rejection, "error": (client.error or "")[:300]},
        )

    # -- what the client sends ---------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = self._open.get(flow.client_conn.id)
        if state is None or flow.request.method == "CONNECT" or flow.response or not flow.live:
            return
        if state.user_agent is None:
            state.user_agent = flow.request.headers.get("user-agent", "")[:200]
        self._flush(state, flow.client_conn)
        if state.probe is not None and flow.request.stream:
            # A streamed body would start flowing upstream right after this hook: no response can stop it, a kill can.
            self._probe_accepted(state, flow.client_conn, _request_evidence(flow.request))
            flow.kill()

    def request(self, flow: http.HTTPFlow) -> None:
        """Answer every request on an accepted probe connection here; by now the body is read, so leaks are named."""
        state = self._open.get(flow.client_conn.id)
        if state is None or state.probe is None or flow.response or not flow.live:
            return
        finding = self._probe_accepted(state, flow.client_conn, _request_evidence(flow.request))
        flow.metadata["tlsgate"] = {"check": "client_probe", "action": "blocked", "rule": finding.rule}
        flow.response = block_response(finding, flow.request.headers.get("accept", ""))

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Inside an accepted probe connection only HTTP may run (and every request is answered here)."""
        state = self._open.get(nextlayer.context.client.id)
        if state is None or state.probe is None or not state.handshake_done or nextlayer.layer is None:
            return
        if isinstance(nextlayer.layer, layers.HttpLayer):
            return
        sent = {"protocol": "tcp", "bytes": len(nextlayer.data_client())}
        self._probe_accepted(state, nextlayer.context.client, sent)
        nextlayer.layer = Hangup(nextlayer.context)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        state = self._open.get(flow.client_conn.id)
        if state is not None:
            self._flush(state, flow.client_conn)

    def _probe_accepted(self, state: _Connection, client: connection.Client, sent: dict[str, Any]) -> Finding:
        """The critical finding, recorded once per connection whatever the client sends next."""
        probe = state.probe
        assert probe is not None
        if state.accepted is None:
            what = f"{sent['method']} {sent['url']}" if sent.get("protocol") == "http" else "raw TCP data"
            state.accepted = self._record(
                state,
                client,
                check="client_probe",
                action="blocked",
                severity="critical",
                detail=f"the client accepted {PROBE_WORDS[probe.kind]} for {state.asked_for} and sent {what} over it: "
                "it would talk to any impostor on the network; tlsgate answered itself and forwarded nothing",
                remedy=PROBE_REMEDIES[probe.kind],
                evidence={"kind": probe.kind, "certificate": probe.summary(), "sent": sent},
            )
        return state.accepted

    def client_disconnected(self, client: connection.Client) -> None:
        state = self._open.pop(client.id, None)
        if state is None:
            return
        if state.probe is not None and state.handshake_done and state.accepted is None:
            # Host name checks (curl, OkHttp's HostnameVerifier, Java's HttpsURLConnection) and pinning often run
            # after the handshake: a client that then hangs up without a byte of data refused the probe too.
            self._probe_passed(state, client, CLOSED_AFTER_HANDSHAKE)
        self._flush(state, client)

    # -- recording ---------------------------------------------------------------------------------

    def _flush(self, state: _Connection, client: connection.Client) -> None:
        """Record the hello findings (once), with whatever is known about the app by now."""
        pending, state.pending = state.pending, []
        for issue in pending:
            if not issue.blocking and self._already_said(state, client, issue.kind):
                continue
            self._record(
                state,
                client,
                check=issue.check,
                action="blocked" if issue.blocking else "reported",
                severity=issue.severity,
                detail=issue.detail,
                remedy=issue.remedy,
                evidence={"kind": issue.kind, **issue.evidence},
            )

    def _already_said(self, state: _Connection, client: connection.Client, kind: str) -> bool:
        address = client.peername[0] if client.peername else "?"
        key = (address, state.hello.ja3(), state.match.host, kind)
        if key in self._said:
            self._said.move_to_end(key)
            return True
        self._said[key] = None
        if len(self._said) > self._said_limit:
            self._said.popitem(last=False)
        return False

    def _record(
        self,
        state: _Connection,
        client: connection.Client,
        *,
        check: str,
        action: str,
        severity: str,
        detail: str,
        remedy: str,
        evidence: dict[str, Any],
    ) -> Finding:
        return report(
            self.sink,
            self.store.policy,
            client,
            check=check,
            match=state.match,
            port=state.port,
            severity=severity,
            detail=detail,
            remedy=remedy,
            evidence={**evidence, **state.evidence()},
            action=action,
        )


def _request_evidence(request: http.Request) -> dict[str, Any]:
    """What the app sent to the impostor, redacted: method, URL without secrets, and which credentials."""
    return {
        "protocol": "http",
        "method": request.method,
        "url": redact.redact_url(request.url),
        "credentials": [c.as_dict() for c in credentials_in(request)],
    }
