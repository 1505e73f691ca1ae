"""Judges the apps themselves: what their ClientHello offers, why they refuse tlsgate, and whether they verify at all.

Per client connection, in mitmproxy's order of events:

- `tls_clienthello`: the hello is parsed and judged under the `client` rules of
  the host asked for (SNI, else the CONNECT/destination host). A client below
  `client.min_version` in enforce mode is to be refused; a connection under
  probe is to get an invalid certificate, or (a protocol probe) tlsgate's own
  with only old versions or weak suites on offer. All turn off the early upstream
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

QUIC connections that are inspected (see `tlsgate.addons.quic`) get the same
audits: the hello arrives in the Initial packet, the probe certificate (or a
refusal) is set in `quic_start_client`, and the client's verdict is read from
its CONNECTION_CLOSE (`tlsgate.checks.quic.quic_client_error`). Refused QUIC
connections are never shown a certificate, so they are not audited.

What each outcome means is decided in `tlsgate.checks.client_hello` and
`tlsgate.checks.probes`; this add-on only gathers and applies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import replace
from typing import Any

from mitmproxy import connection, http, tcp, tls
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layers.quic import QuicTlsData

from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.mitm_internals import client_connection, configured_floor, refuse_handshake, tlsconfig_addon
from tlsgate.addons.state import Audit, Connections, ConnState, credentials_in, is_quic, request_url, server_host
from tlsgate.addons.verdicts import block, fail_closed, record, record_once
from tlsgate.checks.campaign import NOT_APPLICABLE, NOT_ITS_TURN, QUIC_ONLY, Campaign, device_kinds, summary
from tlsgate.checks.client_hello import client_floor, judge_client_hello
from tlsgate.checks.faults import silent_close_excused
from tlsgate.checks.model import Action, Check, Effect, Issue, blocks, decide
from tlsgate.checks.probes import CLOSED_SILENTLY, ProbeRun, ProbeSchedule, trust_refused
from tlsgate.checks.protocol_probes import protocol_run
from tlsgate.checks.quic import quic_client_error
from tlsgate.policy import Match, Mode
from tlsgate.policy.hosts import is_address
from tlsgate.policy.sections.client import CLIENT, catalogue
from tlsgate.sinks import redact
from tlsgate.sinks.findings import Finding
from tlsgate.tls.clienthello import ClientHello, parse_client_hello
from tlsgate.tls.probes import ProbeMint
from tlsgate.tls.probes import applies as probe_applies
from tlsgate.tls.protocol_probes import PROTOCOL_PROBE_KINDS

logger = logging.getLogger("tlsgate.client")


class Hangup(layer.Layer):
    """Replaces any non-HTTP layer on an accepted probe connection: close both sides, relay nothing."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)


class ClientAudit:
    def __init__(self, connections: Connections, sink: FindingsSink, probe_pairs: int = 4096) -> None:
        self.connections = connections
        self.sink = sink
        self.schedule = ProbeSchedule(probe_pairs)
        self.campaign = Campaign()
        sink.before_close.append(self.write_campaigns)
        self._mint: ProbeMint | None = None
        self._mint_source: object | None = None
        # Reported hello findings describe the app's TLS stack, not one connection: each is written once per
        # (client address, fingerprint, host, kind) and then counted (`sink.repeats`), not written per connection.

    @staticmethod
    def _audit(state: ConnState | None) -> Audit | None:
        return state.audit if state is not None else None

    # -- the hello ---------------------------------------------------------------------------------

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        if data.ignore_connection or client.transport_protocol not in ("tcp", "udp"):
            return
        state = self.connections.of(client)
        if state is None or state.quic_refused:  # a refused QUIC connection is never shown a certificate
            return
        try:
            hello = parse_client_hello(data.client_hello.raw_bytes(wrap_in_record=False))
        except ValueError as exc:
            logger.info(f"tlsgate: cannot judge a ClientHello from {client.peername}: {exc}")
            return
        audit = self._judge(state, data.context.server, hello, is_quic(client))
        if audit.refuse or audit.run is not None:
            data.establish_server_tls_first = False  # the server is never involved in a refusal or a probe
        state.audit = audit

    def _judge(self, state: ConnState, server: connection.Server, hello: ClientHello, quic: bool = False) -> Audit:
        match = state.settle(hello.sni or server_host(server))
        enforce = match.settings.mode is Mode.ENFORCE
        rules = CLIENT.of(match.settings)
        audit = Audit(hello, server.address[1] if server.address else None, quic=quic)
        audit.pending = judge_client_hello(hello, rules, enforce, match.host)
        audit.refuse = blocks(audit.pending, match.settings.mode)
        # QUIC is TLS 1.3 only, and aioquic has no version floor to move.
        audit.floor = None if quic else client_floor(hello.best_version_word, rules, enforce, configured_floor())
        client = state.client
        # The rule's list, or the device's own (`devices:` entry), on every host intercepted for it.
        wanted = catalogue(match, state.policy.probes_of(state.device))
        if wanted.kinds and not audit.refuse and client.peername:
            address, device = client.peername[0], _device(state)
            kinds = [kind for kind in wanted.kinds if probe_applies(kind, match.host)]  # wildcards: names; ip_name_only: IPs
            self.campaign.skipped(device, [kind for kind in wanted.kinds if kind not in kinds], NOT_APPLICABLE)
            if quic:  # QUIC is TLS 1.3 only: a protocol probe cannot be served there, and waits for a TCP connection
                self.campaign.skipped(device, [kind for kind in kinds if kind in PROTOCOL_PROBE_KINDS], QUIC_ONLY)
                kinds = [kind for kind in kinds if kind not in PROTOCOL_PROBE_KINDS]
            untried = self.schedule.untried(address, match.host, kinds)
            kind = self.schedule.next_kind(address, match.host, kinds, wanted.fraction, match.rule_ref)
            # One kind per probed connection, and only probe_fraction of them probed: the rest wait their turn.
            self.campaign.skipped(device, [k for k in untried if k != kind], NOT_ITS_TURN)
            if kind in PROTOCOL_PROBE_KINDS:
                audit.run = protocol_run(kind, match.host)
            elif kind:
                audit.probe = self._mint_for().certificate(match.host, kind)
                audit.run = ProbeRun(kind, match.host, audit.probe.summary())
            if kind:
                self.campaign.offered(device, match.host, kind)
                audit.probes_from = wanted.source
        return audit

    def _mint_for(self) -> ProbeMint:
        """Probe certificates signed by the CA mitmproxy itself signs with (rebuilt if its store is reloaded)."""
        store = tlsconfig_addon().certstore
        if self._mint is None or self._mint_source is not store:
            self._mint = ProbeMint(store.default_privatekey, store.default_ca.to_cryptography())
            self._mint_source = store
        return self._mint

    def tls_start_client(self, tls_start: tls.TlsData) -> None:
        if not isinstance(tls_start.conn, connection.Client):  # a client hook: mitmproxy types the side as Connection
            return
        state = self.connections.peek(tls_start.conn)
        audit = self._audit(state)
        if state is None or audit is None or tls_start.ssl_conn is None or tls_start.is_dtls:
            return
        audit.waited = time.monotonic() - audit.hello_at  # tlsgate's upstream handshake came first
        if audit.probe is not None:
            probe = audit.probe
            try:
                tls_start.ssl_conn = client_connection(
                    tls_start, audit.floor, probe.cert, probe.key, probe.chain, weak_certificate=probe.weak
                )
                return
            except Exception as exc:  # noqa: BLE001 - judged on tlsgate's good certificate, the app would "accept" the probe
                self._drop_probe(state, audit, exc)
        elif audit.run is not None and (offer := audit.run.offer()) is not None:
            # a protocol probe: tlsgate's own certificate, this offer's versions and suites only
            tls_start.ssl_conn = client_connection(tls_start, offer.min_version, ceiling=offer.max_version, ciphers=offer.ciphers)
            return
        if audit.floor is not None:
            tls_start.ssl_conn = client_connection(tls_start, audit.floor)

    def _drop_probe(self, state: ConnState, audit: Audit, exc: Exception) -> None:
        """OpenSSL would not serve the probe certificate: the connection goes on as a normal one and nothing is judged
        (a client that then sent its request would have accepted tlsgate's good certificate, not the probe). The kind
        stays used up: it would fail the same way on every connection."""
        assert audit.run is not None
        logger.warning(f"tlsgate: cannot serve the {audit.run.kind} probe for {audit.run.host}, connection not probed: {exc}")
        self.campaign.withdrawn(_device(state), audit.run.kind)
        audit.probe = audit.run = None

    def quic_start_client(self, data: QuicTlsData) -> None:
        """The QUIC counterpart of `tls_start_client`: refuse the hello, or show the probe certificate."""
        if not isinstance(data.conn, connection.Client):
            return
        audit = self._audit(self.connections.peek(data.conn))
        if audit is None or data.settings is None:
            return
        if audit.refuse:
            refuse_handshake(data)
        elif audit.probe is not None:
            data.settings.certificate = audit.probe.cert
            data.settings.certificate_private_key = audit.probe.key
            data.settings.certificate_chain = list(audit.probe.chain)

    # -- handshake outcome -------------------------------------------------------------------------

    def tls_established_client(self, data: tls.TlsData) -> None:
        if not isinstance(data.conn, connection.Client):
            return
        audit = self._audit(self.connections.peek(data.conn))
        if audit is not None and audit.run is not None:
            audit.run.established(data.conn.tls_version, data.conn.cipher)

    def tls_failed_client(self, data: tls.TlsData) -> None:
        if not isinstance(data.conn, connection.Client):
            return
        state = self.connections.peek(data.conn)
        audit = self._audit(state)
        if state is None or audit is None:
            return
        error = quic_client_error(data.conn.error) if audit.quic else data.conn.error
        if audit.run is not None:
            passed = audit.run.handshake_failed(error)
            if passed is not None:
                self._record(state, audit, passed)
            elif data.conn.peername:  # failed for another reason: the probe proved nothing, so it is tried again
                self.schedule.retry(data.conn.peername[0], audit.run.host, audit.run.kind)
        elif not audit.refuse and (data.ssl_conn is not None or audit.quic):
            refused = trust_refused(state.match.host if state.match else "", error)
            if refused is not None and not _kept_waiting(state, audit, refused):
                self._record(state, audit, refused)
        self._flush(state, audit)

    # -- what the client sends ---------------------------------------------------------------------

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = self.connections.peek(flow.client_conn)
        audit = self._audit(state)
        if state is None or audit is None or flow.request.method == "CONNECT" or flow.response or not flow.live:
            return
        if audit.user_agent is None:
            audit.user_agent = redact.redact_user_agent(flow.request.headers.get("user-agent", ""))
        self._flush(state, audit)
        if audit.run is not None and flow.request.stream:
            # A streamed body would start flowing upstream right after this hook: no response can stop it, a kill can.
            self._probe_accepted(state, audit, _request_evidence(flow.request))
            flow.kill()

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        """Answer every request on an accepted probe connection here; by now the body is read, so leaks are named."""
        state = self.connections.peek(flow.client_conn)
        audit = self._audit(state)
        if state is None or audit is None or audit.run is None or flow.response or not flow.live:
            return
        block(flow, self._probe_accepted(state, audit, _request_evidence(flow.request)))

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Inside an accepted probe connection only HTTP may run (and every request is answered here)."""
        state = self.connections.peek(nextlayer.context.client)
        audit = self._audit(state)
        if state is None or audit is None or audit.run is None or not audit.run.handshake_done or nextlayer.layer is None:
            return
        if isinstance(nextlayer.layer, layers.HttpLayer):
            return
        self._probe_accepted(state, audit, {"protocol": "tcp", "bytes": len(nextlayer.data_client())})
        nextlayer.layer = Hangup(nextlayer.context)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        state = self.connections.peek(flow.client_conn)
        audit = self._audit(state)
        if state is not None and audit is not None:
            self._flush(state, audit)

    def _probe_accepted(self, state: ConnState, audit: Audit, sent: dict[str, Any]) -> Finding:
        """The critical finding, recorded once per connection whatever the client sends next."""
        assert audit.run is not None
        if audit.accepted is None:
            audit.accepted = self._record(state, audit, audit.run.sent(sent))
        assert audit.accepted is not None  # recorded without a key: never None
        return audit.accepted

    def client_disconnected(self, client: connection.Client) -> None:
        state = self.connections.peek(client)
        audit = self._audit(state)
        if state is None or audit is None:
            return
        if audit.run is not None:
            passed = audit.run.closed()
            if passed is not None:
                self._record(state, audit, passed)
        self._flush(state, audit)

    # -- the campaign ------------------------------------------------------------------------------

    def campaigns(self) -> list[Issue]:
        """Every device's campaign summary as of now (what `write_campaigns` records at stop); a device is its
        `devices:` or WireGuard name, else its address (the summary's evidence says which)."""
        policy = self.connections.store.policy
        if policy is None:
            return [summary(device, self.campaign.tallies(device), ()) for device in self.campaign.device_names()]
        return [
            summary(device, self.campaign.tallies(device), device_kinds(policy, device))
            for device in self.campaign.device_names()
        ]

    def write_campaigns(self) -> None:
        """At stop: one summary per device that was probed or could have been, against the policy's defaults block
        (a campaign spans hosts and rules; its evidence names the hosts)."""
        policy = self.connections.store.policy
        if policy is None:
            return
        match = Match("*", policy.defaults, None, None, policy.defaults_location)
        for issue in self.campaigns():
            device = issue.evidence["device"]  # a device's name, or its address: only a name may label metrics
            if is_address(device):
                record(self.sink, None, None, issue, match, None, address=device)
            else:
                record(self.sink, None, None, issue, match, None, device=device)

    # -- recording ---------------------------------------------------------------------------------

    def _flush(self, state: ConnState, audit: Audit) -> None:
        """Record the hello findings (once), with whatever is known about the app by now."""
        pending, audit.pending = audit.pending, []
        match = state.match
        assert match is not None  # an Audit exists only once `_judge` settled the match, and a match stays settled
        for issue in pending:
            reported = decide(issue, match.settings.mode) is not Action.BLOCKED
            key = self._said_key(state, audit, issue.kind) if reported else None  # a block is said every time
            self._record(state, audit, issue, key)

    @staticmethod
    def _said_key(state: ConnState, audit: Audit, kind: str) -> tuple[str, ...]:
        client = state.client
        address = client.peername[0] if client.peername else "?"
        return ("client_audit", address, audit.hello.ja3(), state.match.host if state.match else "", kind)

    def _record(self, state: ConnState, audit: Audit, issue: Issue, once: Hashable | None = None) -> Finding | None:
        """The finding; with `once`, only the first time that key is seen (then counted, `record_once`)."""
        assert state.match is not None
        run = audit.run
        if issue.check == Check.CLIENT_PROBE and run is not None:  # every probe outcome passes here, once per connection
            if not run.served:
                self.campaign.withdrawn(_device(state), run.kind)
            else:
                self.campaign.answered(_device(state), run.host, run.kind, accepted=issue.effect is not Effect.PASSED)
        evidence = {"kind": issue.kind, **issue.evidence, **audit.evidence()}
        match = state.match
        if issue.check == Check.CLIENT_PROBE and audit.probes_from is not None:  # the device's own list probed this host
            match = replace(match, source=audit.probes_from)
        return record_once(self.sink, once, state, state.client, issue, match, audit.port, evidence=evidence)


def _device(state: ConnState) -> str:
    """The campaign's key: the `devices:` name, else the client's address (as the other per-device memories)."""
    return state.who or "?"


def _kept_waiting(state: ConnState, audit: Audit, refused: Issue) -> bool:
    """A silent hang-up after tlsgate kept the app waiting for a failed or slow upstream is the app's own timeout
    as likely as distrust: the upstream's `fault` finding says what happened, a `client_trust` one would mislead."""
    if refused.evidence.get("rejection") != CLOSED_SILENTLY:
        return False
    upstream_failed = any(side.blocked is not None and side.blocked.check == Check.FAULT for side in state.servers.values())
    return silent_close_excused(upstream_failed, audit.waited)


def _request_evidence(request: http.Request) -> dict[str, Any]:
    """What the app sent to the impostor, redacted: method, URL without secrets, and which credentials."""
    return {
        "protocol": "http",
        "method": request.method,
        "url": redact.redact_url(request_url(request)),
        "credentials": [c.as_dict() for c in credentials_in(request)],
    }
