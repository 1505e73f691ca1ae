"""A connection about to reach the proxy host itself or its link: refused unless the host's rule allows it."""

from __future__ import annotations

from proxy.checks.model import Check, Effect, Issue, Severity, remedy_for
from proxy.policy.model import Match
from proxy.policy.sections.destinations import LocalDestinations

WORDS = {
    "loopback": "the proxy host's loopback",
    "link_local": "a link-local address (cloud metadata lives at 169.254.169.254)",
    "unspecified": "the unspecified address (the proxy host itself)",
    "proxy_host": "one of the proxy host's own addresses",
}


def judge_destination(kind: str | None, address: str, port: int | None, match: Match) -> Issue | None:
    """Blocks in every mode: this guards the proxy host, not the app, so report mode does not loosen it."""
    if kind is None or match.settings.get("local_destinations") is LocalDestinations.ALLOW:
        return None
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return Issue(
        Check.DESTINATION,
        kind,
        Effect.ALWAYS,
        Severity.HIGH,
        f"connection to {match.host} would reach {WORDS.get(kind, kind)} ({target})",
        {"address": address, "port": port},
        f"if this host really is served from the proxy host, {remedy_for(match, 'local_destinations: allow')}, "
        f"or point the name at it with --resolve {match.host}:{port or '*'}:{address}",
    )
