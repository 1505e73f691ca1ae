"""Verdicts on what an app's ClientHello offers: protocol versions, cipher suites and SNI."""

from __future__ import annotations

import ipaddress
from typing import Final

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.policy.sections.client import ClientRules
from tlsgate.tls import versions
from tlsgate.tls.ciphers import WEAKNESS_LABELS
from tlsgate.tls.clienthello import ClientHello, offered_suites

NAMED_SUITES: Final = 6  # a finding's sentence names this many; the evidence lists all


def judge_client_hello(hello: ClientHello, rules: ClientRules, enforce: bool, asked_for: str) -> list[Issue]:
    """Every client_* issue in this hello under the rules; a blocked one means the handshake must be refused."""
    return [
        *judge_client_version(hello, rules, enforce),
        *judge_client_suites(hello, rules),
        *judge_client_sni(hello, rules, asked_for),
    ]


def judge_client_version(hello: ClientHello, rules: ClientRules, enforce: bool) -> list[Issue]:
    best = hello.best_version_word
    if best is None or not versions.below(best, rules.min_version):
        return []
    refused = "refused the handshake" if enforce else "recorded it (report mode)"
    return [
        Issue(
            Check.CLIENT_PROTOCOL,
            "version_too_low",
            Effect.ENFORCED,
            Severity.HIGH,
            f"the client offers at best {versions.shown(best)}, below the policy minimum TLS {rules.min_version}; "
            f"tlsgate {refused}",
            {"best_offered_version": best, "min_version": rules.min_version},
            f"update the app's TLS stack (or its minimum version) to offer TLS {rules.min_version} or newer, "
            "or lower client.min_version for this host",
        )
    ]


def judge_client_suites(hello: ClientHello, rules: ClientRules) -> list[Issue]:
    """Broken suites offered are always named; weak ones when nothing better is offered, or in `strict`."""
    if rules.weak_suites == "ignore":
        return []
    suites = offered_suites(hello.cipher_suites)
    weak = sorted((s for s in suites if s.weaknesses), key=lambda s: not s.broken)  # broken ones first
    broken = [s for s in weak if s.broken]
    strong = [s for s in suites if s.known and not s.weaknesses]
    if not weak or (not broken and strong and rules.weak_suites != "strict"):
        return []
    if broken:
        kind, severity, lead = "broken_suites_offered", Severity.HIGH, f"the client offers {len(broken)} broken cipher suite(s)"
    elif not strong:
        kind, severity, lead = "only_weak_suites", Severity.MEDIUM, "the client offers only weak cipher suites"
    else:
        kind, severity, lead = "weak_suites_offered", Severity.LOW, f"the client offers {len(weak)} weak cipher suite(s)"
    named = "; ".join(f"{s.name} ({', '.join(WEAKNESS_LABELS.get(w, w) for w in s.weaknesses)})" for s in weak[:NAMED_SUITES])
    if len(weak) > NAMED_SUITES:
        named += f"; and {len(weak) - NAMED_SUITES} more (see evidence)"
    return [
        Issue(
            Check.CLIENT_CIPHERS,
            kind,
            Effect.RECORD,
            severity,
            f"{lead}: {named}",
            {"weak_suites": [s.as_dict() for s in weak], "strong_suites_offered": len(strong)},
            "configure the app's TLS stack for forward-secret AEAD suites only (ECDHE with AES-GCM or "
            "ChaCha20-Poly1305) and TLS 1.3; or set client.weak_suites: ignore for this host",
        )
    ]


def judge_client_sni(hello: ClientHello, rules: ClientRules, asked_for: str) -> list[Issue]:
    """No SNI for a name is an app bug (servers with many names pick the wrong one); for an IP address it is correct."""
    if not rules.require_sni or hello.sni is not None or _is_ip(asked_for):
        return []
    return [
        Issue(
            Check.CLIENT_SNI,
            "no_sni",
            Effect.RECORD,
            Severity.LOW,
            f"the client connected to {asked_for} without sending SNI (server_name) in its ClientHello",
            {},
            "set the server name on the app's TLS socket (SSLParameters.setServerNames, server_hostname=...); "
            "or set client.require_sni: false for this host",
        )
    ]


def client_floor(best: str | None, rules: ClientRules, enforce: bool, current: str) -> str | None:
    """The TLS version floor the client side of this connection needs, when it differs from mitmproxy's `current`.

    Enforce mode refuses a client below `client.min_version` by raising the floor
    above what it offers (OpenSSL then refuses the hello before sending any
    certificate), and lets an explicitly allowed old client in by lowering it.
    Report mode lets the client in whatever it offers (down to TLS 1.0) so its
    traffic can be watched.
    """
    if best is None:
        return None
    # Report mode lowers the floor to what the client offers; enforce holds it at the policy's minimum.
    wanted = best if not enforce and versions.below(best, rules.min_version) else rules.min_version
    if wanted not in versions.TLS_VERSIONS:  # SSL 3.0: nothing below TLS 1.0 can be negotiated anyway
        wanted = versions.TLS_VERSIONS[0]
    needed = versions.below(best, current) or versions.below(best, wanted)
    return wanted if needed and wanted != current else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
