"""The `transport` word that findings' evidence and metrics' label give a connection: quic or tcp.

Said in one place so a finding and its metric never disagree about which
transport a connection used.
"""

from __future__ import annotations

from typing import Final, Protocol

TRANSPORT_TCP: Final = "tcp"
TRANSPORT_QUIC: Final = "quic"


class Carried(Protocol):
    """A connection as mitmproxy describes it (`mitmproxy.connection.Connection`), without importing mitmproxy."""

    @property
    def transport_protocol(self) -> str: ...


def transport_of(conn: Carried) -> str:
    """mitmproxy marks a QUIC connection (either side) as UDP with TLS; everything else it carries is TCP."""
    return TRANSPORT_QUIC if conn.transport_protocol == "udp" else TRANSPORT_TCP
