"""The one place addons turn a decision into a finding and, when enforced, a block response.

Keeping this shared means every check reports the same fields and every block
page names check, host, rule and remedy the same way.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from mitmproxy import connection, http, version

from proxy import __version__
from proxy.addons.findings import FindingsSink
from proxy.blockpage import Block, render
from proxy.findings import Finding
from proxy.policy import Match, Mode, Policy


def client_label(client: connection.Client | None) -> str | None:
    if client is None or not client.peername:
        return None
    host, port = client.peername[0], client.peername[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def device_of(policy: Policy | None, client: connection.Client | None) -> str | None:
    if policy is None or client is None or not client.peername:
        return None
    return policy.device_for(client.peername[0])


def request_host(request: http.Request) -> str:
    """The name the app asked for: in transparent mode the target is an IP and the Host header has the name."""
    host = request.host
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    header = request.host_header
    return header.rsplit(":", 1)[0] if header and not header.startswith("[") else host


def enforced(match: Match) -> bool:
    return match.settings.mode is Mode.ENFORCE


def report(
    sink: FindingsSink,
    policy: Policy | None,
    client: connection.Client | None,
    *,
    check: str,
    match: Match,
    port: int | None,
    severity: str,
    detail: str,
    remedy: str,
    evidence: dict[str, Any],
    action: str | None = None,
) -> Finding:
    """Record the finding against the rule that matched the host (or the defaults block)."""
    finding = Finding(
        check=check,
        action=action or ("blocked" if enforced(match) else "reported"),
        severity=severity,
        host=match.host,
        port=port,
        client=client_label(client),
        device=device_of(policy, client),
        rule=match.rule_ref,
        detail=detail,
        remedy=remedy,
        evidence=evidence,
    )
    sink.record(finding)
    return finding


def remedy_for(match: Match, setting: str) -> str:
    """Where to write `setting` so this host is treated differently: the rule that matched, or a new one."""
    if match.rule is not None:
        return f"set '{setting}' in the rule at {match.rule_ref}"
    return f"add a rule with hosts: [{match.host}] and '{setting}' (the defaults at {match.rule_ref} apply now)"


def block_response(finding: Finding, accept: str) -> http.Response:
    block = Block(finding.check, finding.host, finding.rule, finding.detail, finding.remedy, finding.evidence)
    body, content_type = render(block, accept)
    headers = {"Content-Type": content_type, "Server": f"tlsgate/{__version__} ({version.MITMPROXY})", **block.headers()}
    return http.Response.make(403, body, headers)
