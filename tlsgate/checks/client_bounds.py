"""Verdicts on clients that would hold the proxy's time or memory: floods of hello records, huge or slow heads.

These bounds protect the proxy and every other device using it, not the app's
traffic from itself, so they refuse in every mode (like the destination
guard): report mode records policy verdicts, it does not lend the proxy out
to a client that never finishes a request. Evidence is counts and limits only.
"""

from __future__ import annotations

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.tls.hellometer import Hello, HelloMeter

HELLO_KINDS = {Hello.OVERSIZED: "oversized_hello", Hello.FRAGMENTED: "fragmented_hello", Hello.MALFORMED: "malformed_hello"}


def judge_hello(meter: HelloMeter, client: str, host: str) -> Issue | None:
    """The issue with a ClientHello the meter stopped on; None while it is partial or once complete."""
    kind = HELLO_KINDS.get(meter.state)
    if kind is None:
        return None
    if meter.state is Hello.MALFORMED:
        remedy = "nothing to change in the policy: the client did not send a TLS ClientHello"
    else:
        remedy = (
            "send the ClientHello in fewer, larger records; a lab client that really needs more can be let in with "
            "--set tlsgate_max_hello_bytes=N / tlsgate_max_hello_records=N"
        )
    return Issue(
        Check.CLIENT_HELLO,
        kind,
        Effect.ALWAYS,
        Severity.MEDIUM,
        f"client {client} sent a ClientHello for {host} that {meter.problem} "
        f"({meter.records} records, {meter.hello_bytes} handshake bytes); tlsgate closed the connection",
        dict(meter.evidence()),
        remedy,
    )


def judge_request_head(size: int, limit: int, client: str, host: str) -> Issue:
    """A request head (request line and headers) that passed `limit` bytes without ending."""
    return Issue(
        Check.REQUEST,
        "oversized_request_head",
        Effect.ALWAYS,
        Severity.MEDIUM,
        f"client {client} sent a request head to {host} of more than {limit} bytes without ending it; "
        "tlsgate answered 431 and closed the connection, nothing was forwarded",
        {"received_bytes": size, "max_bytes": limit},
        "send smaller headers (large cookies or tokens belong in the body); or raise --set tlsgate_max_request_head=N",
    )


def judge_slow_client(waited: float, limit: float, stage: str, client: str, host: str) -> Issue:
    """A client that did not finish its first request (or ClientHello) in time after the proxy last waited on it."""
    check = Check.CLIENT_HELLO if stage == "tls_hello" else Check.REQUEST
    return Issue(
        check,
        "slow_client",
        Effect.ALWAYS,
        Severity.LOW,
        f"client {client} had not completed its {STAGES.get(stage, stage)} to {host} {round(waited)} s after "
        f"it was expected; tlsgate closed the connection (and its upstream connection)",
        {"stage": stage, "timeout_seconds": limit},
        "send the request right after connecting; or raise --set tlsgate_client_head_timeout=N (0: off)",
    )


STAGES = {
    "request_head": "first request head",
    "tls_hello": "ClientHello",
    "tunnel_data": "first bytes inside the tunnel",
}
