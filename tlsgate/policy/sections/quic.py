"""`quic:` what happens to QUIC (HTTP/3) connections to a host, in the modes that carry UDP.

Two values, no more: `refuse` (the default) fails the QUIC handshake before any
certificate is shown and before the server is contacted, so the app falls back
to TCP where every check runs; `inspect` lets mitmproxy terminate QUIC and runs
the same upstream checks and client audits as on TCP. There is deliberately no
"pass through": a QUIC connection tlsgate cannot judge is refused, never waved
through. In `mode: report` a refusal is only recorded (the connection is
inspected instead), like every other enforced check.
"""

from __future__ import annotations

import enum

from tlsgate.policy.sections.base import choice_section


class Quic(enum.StrEnum):
    REFUSE = "refuse"
    INSPECT = "inspect"


QUIC = choice_section(
    "quic",
    Quic,
    Quic.REFUSE,
    "QUIC/HTTP-3 connections: refuse (the app falls back to TCP; default) "
    "or inspect (terminate QUIC and run the same checks as on TCP).",
)
