"""mitmproxy's console lines for a handshake tlsgate failed on purpose, with tlsgate's check and rule in them.

A sink like the block page: the block page tells the device's user why, these
lines tell the operator. Below the add-ons (it reads log records and client
addresses, never a mitmproxy object), so the add-ons that refuse a handshake
(`UpstreamTls`, `QuicGuard`) share it without importing each other.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Protocol

from tlsgate.tls.recent import Recent


class Peer(Protocol):
    """A client connection as far as this module cares: mitmproxy's `connection.Client` is one."""

    @property
    def peername(self) -> tuple[str, int] | None: ...


# -- mitmproxy's handshake-failure lines, with tlsgate's reason ------------------------------------------

# What mitmproxy's TLS and QUIC layers log (through its proxy server's logger, with the client's address attached)
# when a handshake fails: "Server TLS handshake failed. Certificate verify failed: ...", "Client QUIC handshake
# failed. ...", and then, on the client's side, "Unable to establish TLS connection with server (<the same>). ...".
HANDSHAKE_FAILED = re.compile(r"^(?P<side>Server|Client) (?:TLS|QUIC) handshake failed\b.*", re.S)
SERVER_UNREACHED = re.compile(r"^(?P<head>Unable to establish (?:TLS|QUIC) connection with server )\((?P<error>.*?)\)\. ", re.S)
# mitmproxy, when the quic_start_client hook left no settings (a refused client that offered no ALPN at all).
NO_QUIC_CONTEXT = re.compile(r"^No QUIC context was provided, failing connection\.")
# aioquic's own warning for the same handshake ("[<original destination CID>] Error: 296, reason: No common ALPN
# protocols, frame_type: 6"), on its "quic" logger, which knows the connection by that ID only.
AIOQUIC_ERROR = re.compile(r"^\[(?P<id>[0-9a-f]+)\] Error: ")


class RefusalReasons(logging.Filter):
    """Rewrites mitmproxy's lines for a handshake tlsgate made fail, so the console names tlsgate's check and rule.

    tlsgate refuses a pinned server by failing OpenSSL's verify callback, and a
    QUIC connection by offering an ALPN no client asks for; mitmproxy then logs
    "unspecified certificate verification error" or aioquic's "No common ALPN
    protocols", which send the operator after the wrong problem. The add-on
    that refuses notes the reason here, keyed by the client's address and the
    side; mitmproxy's failure lines for that key carry it instead. A reason is
    dropped once the client's side has logged it, when the client disconnects
    (`forget`), or after `capacity` newer ones: bounded, and never applied to a
    later connection.
    """

    def __init__(self, capacity: int = 1024) -> None:
        super().__init__()
        self.capacity = capacity
        self._pending: Recent[tuple[str, int, str], str] = Recent(capacity)
        self._quic_ids: OrderedDict[str, str] = OrderedDict()

    def note(self, client: Peer, side: str, host: str, check: str, rule: str, detail: str) -> None:
        """`side` is "Server" (the upstream handshake) or "Client" (the device's)."""
        if not client.peername:
            return
        key = (str(client.peername[0]), int(client.peername[1]), side)
        self._pending.put(key, f"tlsgate refused {host}: {check} (rule {rule}): {detail}")

    def reason(self, client: Peer, side: str) -> str | None:
        return self._pending.peek((str(client.peername[0]), int(client.peername[1]), side)) if client.peername else None

    def note_quic_id(self, connection_id: str, reason: str) -> None:
        """aioquic's lines name a connection by its original destination connection ID (hex), not by client."""
        self._quic_ids[connection_id] = reason
        while len(self._quic_ids) > self.capacity:
            self._quic_ids.popitem(last=False)

    def forget(self, client: Peer) -> None:
        if self._pending and client.peername:
            for side in ("Server", "Client"):
                self._pending.pop((str(client.peername[0]), int(client.peername[1]), side))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "quic":
            return self._filter_aioquic(record)
        peer = getattr(record, "client", None)
        if not self._pending or not peer or not isinstance(record.msg, str):
            return True
        address = (str(peer[0]), int(peer[1]))
        failed = HANDSHAKE_FAILED.match(record.msg)
        if failed is not None:
            side = failed["side"]
            # The server's reason is kept for the client side's "Unable to establish ... with server" line.
            reason = self._pending.peek((*address, side)) if side == "Server" else self._pending.pop((*address, side))
            if reason is not None:
                record.msg, record.args = f"{side} {record.msg.split(' ', 2)[1]} handshake failed: {reason}", ()
            return True
        unreached = SERVER_UNREACHED.match(record.msg)
        if unreached is not None:
            reason = self._pending.pop((*address, "Server"))
            if reason is not None:
                rest = record.msg[unreached.end() :]
                record.msg, record.args = f"{unreached['head']}({reason}). {rest}", ()
            return True
        if NO_QUIC_CONTEXT.match(record.msg):
            reason = self._pending.pop((*address, "Client"))
            if reason is not None:
                record.msg, record.args = f"Client QUIC handshake failed: {reason}", ()
        return True

    def _filter_aioquic(self, record: logging.LogRecord) -> bool:
        """aioquic's warning for a handshake tlsgate failed on purpose: said again, with the reason, at debug level
        (mitmproxy's "Client QUIC handshake failed" line that follows carries the reason at warning level)."""
        if not self._quic_ids or not isinstance(record.msg, str):
            return True
        found = AIOQUIC_ERROR.match(record.msg)
        reason = self._quic_ids.pop(found["id"], None) if found else None
        if found is not None and reason is not None:
            record.msg, record.args = f"[{found['id']}] QUIC handshake closed on purpose: {reason}", ()
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


REFUSALS = RefusalReasons()


def explain_refusals() -> RefusalReasons:
    """Install the filter on the loggers of mitmproxy's proxy server (layer messages) and of aioquic (once)."""
    for name in ("mitmproxy.proxy.server", "quic"):
        found = logging.getLogger(name)
        if REFUSALS not in found.filters:
            found.addFilter(REFUSALS)
    return REFUSALS
