"""STARTTLS stripping: the server's offer of TLS removed from what the client is shown, as a network attacker would.

nogotofail's `smtpstarttlsstrip` and its IMAP/XMPP siblings test whether an
app that could use STARTTLS goes on in the clear when the offer disappears.
`Stripper` rewrites the server's side of a cleartext stream while the client
negotiates: SMTP's `250-STARTTLS` line in the EHLO reply (fixing the reply's
last-line marker when STARTTLS was last), IMAP's `STARTTLS` (and
`LOGINDISABLED`, which an attacker drops too, or a careful client would not
log in at all) capability tokens in the greeting, `CAPABILITY` replies and
response codes, POP3's `STLS` line in the CAPA reply, and XMPP's `<starttls>`
stream feature. The protocol is read from the server's first bytes, as
`tlsgate.tls.plaintext` does: SMTP, IMAP and POP3 greet first; an XMPP server
answers the client's stream header with its own.

Pure and bounded: at most `HOLD_LIMIT` bytes are held back (a reply or line
not yet complete); past that the held bytes go out unchanged and stripping
stops (`gave_up`), so a hostile server cannot make tlsgate buffer without end.
`feed` never raises.
"""

from __future__ import annotations

import re
from typing import Final

HOLD_LIMIT: Final = 16 * 1024  # bytes of server output held back at most: every capability reply fits
STRIP_PROTOCOLS: Final = ("smtp", "imap", "pop3", "xmpp")

_SMTP_REPLY = re.compile(rb"^(\d{3})([- ]?)(.*)$", re.S)
_IMAP_TOKENS = re.compile(rb"[ \t]+(?:STARTTLS|LOGINDISABLED)(?=[ \t\]\r]|$)", re.I)
_XMPP_STARTTLS = re.compile(rb"<starttls\b[^>]*/>|<starttls\b[^>]*>.*?</starttls\s*>", re.S)
_XMPP_OPEN = b"<starttls"


def protocol_of(server: bytes) -> str | None:
    """The protocol a server's first bytes name, for stripping; None while too few bytes have arrived."""
    head = server.lstrip()[:16]
    if len(head) < 4:  # "* OK" is the longest prefix read; every banner is longer
        return None
    if head.startswith(b"220"):
        return "smtp"  # an FTP banner is 220 too: its replies never carry STARTTLS lines, so nothing is removed
    if head.startswith(b"+OK"):
        return "pop3"
    if head[:4].upper() in (b"* OK", b"* PR"):
        return "imap"
    if head.startswith((b"<?xml", b"<stream")) or head.startswith(b"<"):
        return "xmpp"
    return "unknown"


class Stripper:
    """Rewrites a server's output so the client is not offered STARTTLS; `removed` says whether an offer was cut."""

    def __init__(self) -> None:
        self.protocol: str | None = None
        self.removed = False  # an offer of TLS was cut from what the client was shown
        self.gave_up = False  # a line or reply passed HOLD_LIMIT: forwarded as it came, nothing more stripped
        self.active = True
        self._held = b""
        self._reply: list[bytes] = []  # SMTP: the lines of a multi-line reply so far

    def feed(self, data: bytes) -> bytes:
        """What of the server's bytes (held ones first) the client gets now."""
        if not self.active:
            return self._release() + data
        self._held += data
        try:
            if self.protocol is None:
                self.protocol = protocol_of(self._held)
                if self.protocol is None:
                    return b""
            if self.protocol == "unknown":
                self.active = False
                return self._release()
            out = self._xmpp() if self.protocol == "xmpp" else self._lines()
        except Exception:  # noqa: BLE001 - a rewriting slip forwards the bytes as they came, never crashes the proxy
            self.active = False
            return self._release()
        if len(self._held) + sum(len(line) for line in self._reply) > HOLD_LIMIT:
            self.gave_up, self.active = True, False
            return out + self._release()
        return out

    def stop(self) -> bytes:
        """Stop stripping (the negotiation is over): whatever is still held, unchanged."""
        self.active = False
        return self._release()

    def _release(self) -> bytes:
        out = b"".join(self._reply) + self._held
        self._reply, self._held = [], b""
        return out

    # -- line-based protocols ------------------------------------------------------------------

    def _lines(self) -> bytes:
        out = bytearray()
        while True:
            end = self._held.find(b"\n")
            if end < 0:
                return bytes(out)
            line, self._held = self._held[: end + 1], self._held[end + 1 :]
            out += self._line(line)

    def _line(self, line: bytes) -> bytes:
        body = line.rstrip(b"\r\n")
        if self.protocol == "pop3":
            if body.strip().upper() == b"STLS":
                self.removed = True
                return b""
            return line
        if self.protocol == "imap":
            if b"CAPABILITY" not in body.upper():
                return line
            cut = _IMAP_TOKENS.sub(b"", body)
            if cut != body:
                self.removed = self.removed or re.search(rb"STARTTLS", body, re.I) is not None
                return cut + line[len(body) :]
            return line
        return self._smtp_line(line, body)

    def _smtp_line(self, line: bytes, body: bytes) -> bytes:
        reply = _SMTP_REPLY.match(body)
        if reply is None:  # not a reply line: whatever was gathered goes out first, unchanged
            return self._release_reply() + line
        self._reply.append(line)
        if reply.group(2) == b"-":
            return b""
        return self._finish_reply()

    def _release_reply(self) -> bytes:
        out, self._reply = b"".join(self._reply), []
        return out

    def _finish_reply(self) -> bytes:
        lines, self._reply = self._reply, []
        kept = [line for line in lines if not _smtp_is_starttls(line)]
        if len(kept) == len(lines) or not kept:
            return b"".join(lines)
        self.removed = True
        last = kept[-1]
        if last[3:4] == b"-":  # STARTTLS was the last line: the one before it ends the reply now
            kept[-1] = last[:3] + b" " + last[4:]
        return b"".join(kept)

    # -- XMPP ----------------------------------------------------------------------------------

    def _xmpp(self) -> bytes:
        held = self._held
        cut = _XMPP_STARTTLS.sub(b"", held)
        if cut != held:
            self.removed = True
        start = cut.find(_XMPP_OPEN)
        if start < 0:  # a tail that may still become `<starttls` stays held
            start = next((i for i in range(max(0, len(cut) - len(_XMPP_OPEN)), len(cut)) if _XMPP_OPEN.startswith(cut[i:])), -1)
        if start < 0:
            self._held = b""
            return cut
        self._held = cut[start:]
        return cut[:start]


def _smtp_is_starttls(line: bytes) -> bool:
    return line[4:].strip().upper() == b"STARTTLS"


_NEGOTIATION: Final = frozenset(
    {b"EHLO", b"HELO", b"LHLO", b"NOOP", b"RSET", b"QUIT", b"STARTTLS", b"STLS", b"CAPA", b"CAPABILITY", b"ID", b"LOGOUT"}
)
_VERB = re.compile(rb"[A-Za-z]{1,16}")


def client_command(protocol: str, client: bytes) -> str:
    """The client's first command beyond greeting and capability commands: a verb only (`AUTH`, `LOGIN`,
    `USER`), never its arguments, so a finding can name it without carrying a credential."""
    if protocol == "xmpp":
        if b"<auth" in client:
            return "auth"
        return "iq:auth" if b"jabber:iq:auth" in client else "stanza"
    for line in client.split(b"\n")[:64]:
        words = line.split()
        if protocol == "imap":
            words = words[1:]  # the tag
        if not words:
            continue
        verb = _VERB.fullmatch(words[0])
        if verb is None:
            return "?"
        word = verb.group(0).upper()
        if word not in _NEGOTIATION:
            return word.decode("ascii")
    return "?"
