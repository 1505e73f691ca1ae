"""Looks inside every decrypted request (and response) for what TLS hides from the network but not from tlsgate.

AES-ECB and deterministic ciphertext, credentials in URLs, unsigned JWTs,
Basic auth to hosts no rule names, provider API keys, and the device's seeded
identifiers in any of their wire forms: judged by `proxy.checks.payload` under
the host's `payload:` settings, in every mode and transport that ends in an
HTTP flow (regular, socks5, transparent, WireGuard, HTTP/2, HTTP/3).

Cost is bounded by `payload.max_bytes` (64 KiB by default):

* a body mitmproxy buffers (up to its 1 MiB streaming threshold) is judged in
  the `request` hook, before any byte of it goes upstream, on its first
  `max_bytes` bytes (gzip/deflate bodies are inflated up to that many bytes);
* a request whose body may stream (large or chunked) has its URL and headers
  judged at `requestheaders`, where a block refuses it before the body is
  read; a body mitmproxy streams by its Content-Length is tapped as it passes
  (`Tap`): its first `max_bytes` bytes are copied, nothing is held back, and
  what they show is recorded (it can no longer be blocked). A chunked body
  that outgrows the threshold is streamed by mitmproxy before tlsgate sees it,
  and only its URL and headers are judged.

Responses are looked at for ECB only, and recorded: the request has already
reached the server, and what must change is the app's crypto.

Reported findings are recorded once per (device, host, kind, detail) until
8192 distinct ones were seen; blocked ones every time, since each block must
say why.
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from urllib.parse import parse_qsl, urlsplit

from mitmproxy import http

from proxy.addons.findings import FindingsSink
from proxy.addons.state import Connections, ConnState, request_host, request_url
from proxy.addons.verdicts import block, block_at_headers, body_may_stream, fail_closed, mark, record
from proxy.checks.model import Action, Issue, decide
from proxy.checks.payload import PayloadFacts, judge_payload, rules_of
from proxy.payload.fields import Field, body_fields, header_fields, url_fields
from proxy.payload.identifiers import Form, mask
from proxy.payload.recall import BlockMemory
from proxy.payload.scan import scan
from proxy.policy import Match, Policy
from proxy.policy.sections.payload import PayloadAction, PayloadRules
from proxy.sinks import redact

logger = logging.getLogger("tlsgate.payload")
HEADS_JUDGED = "tlsgate_payload_heads"
TAP = "tlsgate_payload_tap"
SAID_LIMIT = 8192
# OAuth 2.0 puts these in redirect URLs by design (RFC 6749 4.1, RFC 7636, OIDC Session Management); an access
# token there is still a finding. Options and indexes the identity providers add (Google's `authuser`, `hd`,
# `prompt`; Microsoft's `client_info`; Facebook's `auth_type`, `granted_scopes`; Auth0's `auth0Client`) are not
# credentials by name (`redact.is_credential_name`), so they need no entry here.
OAUTH_URL_PARAMS = frozenset({"code", "state", "nonce", "code_challenge", "code_challenge_method", "session_state"})


def signed_url_params(url: str) -> frozenset[str]:
    """Parameters that belong in the URL by design, because a signature binds them to this one request: signed
    URLs (S3 and GCS, V4 and V2; CloudFront; Azure SAS) carry a short-lived signature, and OAuth 1.0a callbacks and
    signed requests carry a token that is useless without the secret it was signed with."""
    keys = {key.lower() for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    exempt = {key for key in keys if key.startswith(("x-amz-", "x-goog-"))}
    if "key-pair-id" in keys:  # CloudFront
        exempt |= {"signature", "policy", "key-pair-id"}
    if "sv" in keys and "sig" in keys:  # Azure shared access signature
        exempt.add("sig")
    if "signature" in keys and "expires" in keys and keys & {"awsaccesskeyid", "googleaccessid"}:  # S3 and GCS V2
        exempt |= {"signature", "awsaccesskeyid", "googleaccessid"}
    if "oauth_verifier" in keys:  # OAuth 1.0a callback (RFC 5849 2.2): the request token and its verifier
        exempt |= {"oauth_token", "oauth_verifier"}
    if "oauth_signature_method" in keys:  # OAuth 1.0a request signed in the query string (RFC 5849 3.5.3)
        exempt |= {"oauth_token", "oauth_signature", "oauth_consumer_key", "oauth_nonce"}
    return frozenset(exempt)


class Tap:
    """`request.stream` for a body mitmproxy streams: every chunk passes unchanged; the first `limit` bytes are copied."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def __call__(self, chunk: bytes) -> bytes:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.total += len(chunk)
        return chunk


def bounded_body(raw: bytes, encoding: str, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body as the app wrote it (gzip/deflate inflated, never past `limit`), and
    whether that is all of it."""
    if encoding.strip().lower() in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, by the header
        try:
            out = inflater.decompress(raw, limit)
            return out, inflater.eof and not inflater.unconsumed_tail
        except zlib.error:
            pass  # not what it says it is: judged as the bytes it is
    return raw[:limit], len(raw) <= limit


class PayloadInspector:
    def __init__(self, connections: Connections, sink: FindingsSink) -> None:
        self.connections = connections
        self.sink = sink
        self.memory = BlockMemory()
        self._said: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()
        self._masked: object | None = None  # the seed index whose wire forms the console and logs mask
        connections.store.subscribe(self._on_reload)

    def _on_reload(self, result: str, policy: Policy | None) -> None:
        """A new policy's seeded identifiers are masked in console and log lines from the moment it is in force."""
        if policy is not None:
            self._mask_seeded(rules_of_settings(policy.defaults.get("payload")))

    # -- requests -----------------------------------------------------------------------------------

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A body that may stream is not waited for: URL and headers are judged now, and a Content-Length body
        mitmproxy streams is tapped up to `max_bytes` on its way."""
        context = self._context(flow)
        if context is None or not body_may_stream(flow.request):
            return
        state, match, rules = context
        flow.metadata[HEADS_JUDGED] = True
        if self._judge(flow, state, match, rules, heads=True, body=None, at_headers=True):
            return
        if flow.request.stream is True:  # mitmproxy decided (by Content-Length) to stream: look at what passes
            tap = Tap(rules.max_bytes)
            flow.request.stream = tap
            flow.metadata[TAP] = tap

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        """Everything not judged yet; a buffered body is judged before any byte of it goes upstream."""
        heads_judged = bool(flow.metadata.pop(HEADS_JUDGED, False))
        tap = flow.metadata.pop(TAP, None)
        context = self._context(flow)
        if context is None:
            return
        state, match, rules = context
        if isinstance(tap, Tap):
            body: tuple[bytes, bool, int | None, bool] | None = (bytes(tap.data), tap.total <= rules.max_bytes, tap.total, True)
        elif flow.request.stream:
            body = (b"", True, None, True)  # streamed by mitmproxy before any hook saw it (a large chunked body)
        else:
            raw = flow.request.raw_content or b""
            data, complete = bounded_body(raw, flow.request.headers.get("content-encoding", ""), rules.max_bytes)
            body = (data, complete, len(raw), False)
        self._judge(flow, state, match, rules, heads=not heads_judged, body=body, at_headers=False)

    def _context(self, flow: http.HTTPFlow) -> tuple[ConnState, Match, PayloadRules] | None:
        if flow.response or flow.error or not flow.live or flow.request.method == "CONNECT":
            return None
        state = self.connections.of(flow.client_conn)
        if state is None:
            return None
        match = state.match_for(request_host(flow.request), self.connections.store.policy)
        rules = rules_of(match)
        self._mask_seeded(rules)
        return None if rules.off else (state, match, rules)

    def _mask_seeded(self, rules: PayloadRules) -> None:
        """Before mitmproxy's flow line for this request is printed, the console knows what to hide."""
        if rules.seeds is None or rules.seeds is self._masked:
            return
        self._masked = rules.seeds
        redact.mask_seeded(form.needle for form in rules.seeds.all_forms)

    def _judge(
        self,
        flow: http.HTTPFlow,
        state: ConnState,
        match: Match,
        rules: PayloadRules,
        heads: bool,
        body: tuple[bytes, bool, int | None, bool] | None,
        at_headers: bool,
    ) -> bool:
        """Record what the request shows; True when it was refused."""
        request = flow.request
        wants = {check: rules.action(check) is not PayloadAction.IGNORE for check in ("ecb", "secrets", "identifiers")}
        forms = rules.seeds.forms_for(state.device) if wants["identifiers"] and rules.seeds else []
        hidden = rules.seeds.all_forms if rules.seeds else []  # masked in names and URLs even where not searched for
        url = request_url(request)
        fields: list[Field] = []
        if heads:
            fields += url_fields(url) + header_fields(request.headers.items(multi=True))
        data, complete, total, streamed = body if body is not None else (b"", True, None, False)
        if data:
            fields += body_fields(request.headers.get("content-type", ""), data, complete)
        if not fields:
            return False
        names: dict[str, str] = {}  # field names repeat (event batches): each is vetted once per request
        found = scan(
            fields,
            host=match.host,
            namer=lambda path: shown_path(path, hidden, names),
            ecb=wants["ecb"],
            secrets=wants["secrets"],
            forms=forms,
            memory=self.memory,
            client=client_key(state),
            body_bytes=total if not request.headers.get("content-encoding") else None,
        )
        credentials: list[dict[str, str]] = []
        basic = False
        keys = found.keys
        if heads and wants["secrets"]:
            exempt = OAUTH_URL_PARAMS | signed_url_params(url)
            # a presigned URL names its access key ID (AKIA...) by design; the secret key never travels
            keys = [k for k in keys if not (k["field"].startswith("query.") and k["field"][6:].lower() in exempt)]
            credentials = [
                {"kind": c.kind, "name": shown_name(c.name, hidden)}
                for c in redact.dedupe(redact.url_credentials(url))
                if c.name.lower() not in exempt
            ]
            basic = match.rule is None and any(
                v.strip().lower().startswith("basic ") for v in request.headers.get_all("authorization")
            )
        facts = PayloadFacts(
            method=request.method[:16],
            url=mask(redact.redact_url(url), hidden),
            streamed=streamed and body is not None,
            inspected_bytes=len(data),
            body_bytes=total,
            ecb=found.ecb,
            deterministic=found.deterministic,
            url_credentials=credentials,
            unsigned_jwts=found.unsigned_jwts,
            basic_auth=basic,
            keys=keys,
            identifiers=found.identifiers,
        )
        return self._verdict(flow, state, match, judge_payload(facts, match), at_headers)

    def _verdict(self, flow: http.HTTPFlow, state: ConnState, match: Match, issues: list[Issue], at_headers: bool) -> bool:
        refused = None
        for issue in issues:
            action = decide(issue, match.settings.mode)
            if action is not Action.BLOCKED and self._said_before(state, match, issue):
                continue
            finding = record(self.sink, state, flow.client_conn, issue, match, flow.request.port)
            if action is Action.BLOCKED and refused is None:
                refused = finding
            elif "tlsgate" not in flow.metadata:
                mark(flow, finding)
        if refused is None:
            return False
        if at_headers:
            block_at_headers(flow, refused)
        else:
            block(flow, refused)
        return True

    def _said_before(self, state: ConnState, match: Match, issue: Issue) -> bool:
        key = (state.device or "", match.host, issue.kind, issue.detail)
        if key in self._said:
            return True
        if len(self._said) >= SAID_LIMIT:
            self._said.clear()
        self._said[key] = None
        return False

    # -- responses ----------------------------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        """ECB in what the server sends back: recorded, never blocked (the request already reached it)."""
        try:
            self._response(flow)
        except Exception:  # noqa: BLE001 - a failed look at a response must not break it; it was never a verdict
            logger.exception("tlsgate: inspecting a response for ECB failed; the response is passed unjudged")

    def _response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or response.stream or not response.raw_content:
            return
        if flow.metadata.get("tlsgate", {}).get("action") == "blocked":
            return  # tlsgate's own block page
        state = self.connections.peek(flow.client_conn)
        if state is None:
            return
        match = state.match_for(request_host(flow.request), self.connections.store.policy)
        rules = rules_of(match)
        if rules.action("ecb") is PayloadAction.IGNORE:
            return
        data, complete = bounded_body(response.raw_content, response.headers.get("content-encoding", ""), rules.max_bytes)
        fields = body_fields(response.headers.get("content-type", ""), data, complete)
        hidden = rules.seeds.all_forms if rules.seeds else []
        found = scan(fields, host=match.host, namer=lambda path: shown_path(path, hidden), secrets=False)
        if not found.ecb:
            return
        facts = PayloadFacts(
            method=flow.request.method[:16],
            url=mask(redact.redact_url(request_url(flow.request)), hidden),
            direction="response",
            streamed=True,  # the exchange has happened: recorded only
            inspected_bytes=len(data),
            body_bytes=len(response.raw_content),
            ecb=found.ecb,
        )
        for issue in judge_payload(facts, match):
            if not self._said_before(state, match, issue):
                record(self.sink, state, flow.client_conn, issue, match, flow.request.port)


def client_key(state: ConnState) -> str:
    """Whose values are compared with each other: the device, else the client's address (a device farm's phones
    each have their own device IDs and keys in front of their ciphertext)."""
    if state.device:
        return state.device
    peer = state.client.peername
    return str(peer[0]) if peer else ""


def rules_of_settings(value: object) -> PayloadRules:
    return value if isinstance(value, PayloadRules) else PayloadRules()


def shown_name(name: str, forms: list[Form]) -> str:
    """A field name as findings may show it: names that could be secrets or identifiers themselves are withheld."""
    if not redact.PLAIN_NAME.fullmatch(name) or redact.looks_like_token(name) or redact.TOKEN_SEGMENT.fullmatch(name):
        return redact.REDACTED
    return mask(name, forms) if forms else name


def shown_path(path: tuple[str, ...], forms: list[Form], cache: dict[str, str] | None = None) -> str:
    if cache is None:
        return ".".join(shown_name(part, forms) for part in path)[:200]
    parts = []
    for part in path:
        shown = cache.get(part)
        if shown is None:
            shown = cache[part] = shown_name(part, forms)
        parts.append(shown)
    return ".".join(parts)[:200]
