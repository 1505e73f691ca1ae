"""Protocol probes as verdicts: what a client's answer to an old version or a weak offer means.

The schedule is the certificate probes' (`tlsgate.checks.probes.ProbeSchedule`):
a protocol probe is one more kind in `client.probes`. A run moves through the
same states, read differently:

- the handshake failed with a `protocol_version`, `handshake_failure`,
  `insufficient_security` or `internal_error` alert, or because the client offered none of the
  probe's versions or suites (OpenSSL's `unsupported protocol`, `no shared
  cipher` on tlsgate's side): passed, the client does not negotiate it;
- it failed with a certificate alert: proved nothing (tlsgate's own
  certificate was refused, as on any connection of that client), the kind is
  given back;
- it completed, and the client sent data: accepted, the negotiated version
  and suite are the evidence; the client hung up without a byte: passed, as
  for the certificate probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.checks.probes import CERTIFICATE_ALERTS, CLOSED_SILENTLY, ProbeRun, silent_close
from tlsgate.tls import versions
from tlsgate.tls.protocol_probes import OFFERS, ProtocolOffer

# How bad it is that the app took the offer: anonymous suites authenticate nobody (anyone on the path is
# the server); TLS 1.0/1.1 are deprecated (RFC 8996) and an attacker can force them; RSA key exchange loses
# forward secrecy, a weakness for recorded traffic rather than an open door.
SEVERITIES: Final = {
    "tls_downgrade": Severity.HIGH,
    "weak_cipher": Severity.MEDIUM,
    "anon_cipher": Severity.CRITICAL,
}

# What accepting it exposes, said after what was negotiated.
CONSEQUENCES: Final = {
    "tls_downgrade": "an attacker who blocks the modern handshake gets the app onto a deprecated protocol (RFC 8996)",
    "weak_cipher": "no forward secrecy: whoever obtains the server's key later can decrypt recorded traffic",
    "anon_cipher": "no certificate at all: anyone on the network path can impersonate the server",
}

# tlsgate's side refused the hello because the client offered none of the probe's versions or suites (mitmproxy's
# words for OpenSSL's `unsupported protocol`, and OpenSSL's own `no shared cipher`).
NOT_OFFERED: Final = {
    "client and mitmproxy cannot agree on a tls version": "offered none of the probe's versions",
    "no shared cipher": "offered none of the probe's suites",
}
# The client's own alerts (RFC 8446 6.2) when it will not go on with what the server chose. mitmproxy rewords a
# received `protocol_version` alert as the server side's version disagreement, whichever side it came from.
REFUSAL_ALERTS: Final = {
    "remote server and mitmproxy cannot agree on a tls version": "protocol version",
    "alert protocol version": "protocol version",
    "handshake failure": "handshake failure",
    "insufficient security": "insufficient security",
    "illegal parameter": "illegal parameter",
    # OpenSSL 3.0 clients at security level 1 (curl's, s_client's defaults) still offer TLS 1.0/1.1, then find they
    # may not sign or verify that handshake (SHA-1/MD5) and abort with this alert: they did not take the offer.
    "alert internal error": "internal error",
}


def protocol_rejection(error: str | None) -> str | None:
    """How a client refused a protocol probe; None when the failure says nothing about versions or suites.

    A certificate alert is tlsgate's own certificate being refused, which any
    connection of that client would meet: it proves nothing here.
    """
    if not error:
        return None
    text = error.lower()
    if any(alert in text for alert in CERTIFICATE_ALERTS):
        return None
    for words, rejection in (*NOT_OFFERED.items(), *REFUSAL_ALERTS.items()):
        if words in text:
            return rejection
    return CLOSED_SILENTLY if silent_close(text) else None


@dataclass
class ProtocolProbeRun(ProbeRun):
    """A `ProbeRun` whose server changed what it negotiates, not what it presents; `certificate` is the offer."""

    REFUSAL_MEANS: ClassVar[str] = "it does not negotiate it"

    def rejection(self, error: str | None) -> str | None:
        return protocol_rejection(error)

    def offer(self) -> ProtocolOffer:
        return OFFERS[self.kind]

    def _severity(self) -> Severity:
        return SEVERITIES[self.kind]

    def _consequence(self) -> str:
        return CONSEQUENCES[self.kind]

    def _shown(self) -> dict[str, Any]:
        return {"offer": self.certificate, "negotiated": self.negotiated}

    def _negotiated_clause(self) -> str:
        return f", negotiated {self._negotiated_text()},"

    def _unserved(self, what: dict[str, Any], shown: str) -> Issue | None:
        """The connection negotiated something the probe does not offer: it tested nothing, so it accuses nobody.

        Only a tlsgate bug (or a mitmproxy or OpenSSL that builds the probe's
        context differently) gets here; the request is still answered by
        tlsgate, as on every probe connection, and the finding says so.
        """
        negotiated = self.negotiated or {}
        if self.offer().allows(negotiated.get("version"), negotiated.get("suite")):
            return None
        self.served = False
        return Issue(
            Check.CLIENT_PROBE,
            self.kind,
            Effect.ALWAYS,
            Severity.LOW,
            f"tlsgate's {self.kind} probe for {self.host} negotiated {self._negotiated_text()}, which it does not "
            f"offer: it tested nothing and says nothing about the client; tlsgate answered {shown} itself and "
            "forwarded nothing (a probe connection never is). Please report this as a tlsgate bug",
            {"kind": self.kind, **self._shown(), "sent": what, "served": False},
        )

    def _negotiated_text(self) -> str:
        negotiated = self.negotiated or {}
        version = negotiated.get("version")
        shown = versions.shown(version) if version else "an unknown version"
        return f"{shown} with {negotiated.get('suite') or 'an unknown suite'}"


def protocol_run(kind: str, host: str) -> ProtocolProbeRun:
    return ProtocolProbeRun(kind, host, OFFERS[kind].summary())
