"""A connection about to reach the proxy host itself or its link: refused unless the host's rule allows it."""

from __future__ import annotations

from tlsgate.checks.model import Check, Effect, Issue, Severity, remedy_for
from tlsgate.policy.model import Match
from tlsgate.policy.sections.destinations import LOCAL_DESTINATIONS, LocalDestinations

WORDS = {
    "loopback": "the proxy host's loopback",
    "link_local": "a link-local address (cloud metadata lives at 169.254.169.254)",
    "unspecified": "the unspecified address (the proxy host itself)",
    "proxy_host": "one of the proxy host's own addresses",
}


def judge_destination(
    kind: str | None, address: str, port: int | None, match: Match, *, resolvable: bool = True, own_listener: bool = False
) -> Issue | None:
    """Blocks in every mode: this guards the proxy host, not the app, so report mode does not loosen it.

    `resolvable`: the client's mode lets tlsgate resolve names, so `--resolve`
    is advice that works (transparent and WireGuard refuse it). `own_listener`:
    a transparent listener's connection that was not redirected, whose
    destination is the listener itself: a device sending to tlsgate as to a
    proxy. Connecting there would loop, so no policy setting allows it.
    """
    if kind is None:
        return None
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    evidence = {"address": address, "port": port}
    if own_listener:
        return Issue(
            Check.DESTINATION,
            kind,
            Effect.ALWAYS,
            Severity.HIGH,
            f"the device sent this connection to tlsgate's transparent listener itself ({target}), as to a proxy, "
            "instead of to a server the gateway redirects",
            evidence,
            "in transparent mode the gateway redirects the device's traffic: remove the device's proxy setting; "
            "for devices that must keep one, add --mode regular@PORT and point their proxy setting at that port",
        )
    if LOCAL_DESTINATIONS.get(match.settings) is LocalDestinations.ALLOW:
        return None
    remedy = f"if this host really is served from the proxy host, {remedy_for(match, 'local_destinations: allow')}"
    if resolvable:
        remedy += f", or point the name at it with --resolve {match.host}:{port or '*'}:{address}"
    return Issue(
        Check.DESTINATION,
        kind,
        Effect.ALWAYS,
        Severity.HIGH,
        f"connection to {match.host} would reach {WORDS.get(kind, kind)} ({target})",
        evidence,
        remedy,
    )
