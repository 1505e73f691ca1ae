"""What the first bytes of a TCP stream that is not TLS say: the cleartext protocol, and which credentials it carries.

It lives beside the ClientHello parser because it answers the same question
for the other half of the traffic: given the bytes a client (and, for
protocols where the server greets first, the server) sent before anything was
decided, what is this connection? Facts only, and only kinds and lengths: a
`Sighting` never holds a user name, a password or a token, so nothing built
from it can leak one.

`classify(client, server)` is pure and total: it takes everything seen so far
in each direction (the caller keeps at most `INSPECT_LIMIT` bytes of each) and
never raises, whatever the bytes, because it runs inside the proxy on traffic
anyone can send. It is called again as bytes arrive, so its answers grow:
`complete` says the protocol is known well enough to judge, `negotiation_only`
that the client has so far only asked for capabilities or for STARTTLS (which
must pass for STARTTLS to work at all), `upgraded` that a TLS handshake
follows the client's STARTTLS (at `tls_offset` in the client's bytes: where the
caller hands the stream to its TLS layers), `starttls_accepted` that the
server's last reply said yes to it, and `settled` that no credential can
appear any more.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

# The fixed vocabulary: policy keys, finding evidence and metric labels all use these words.
PROTOCOLS = ("http", "mqtt", "smtp", "imap", "pop3", "ftp", "xmpp", "redis", "unknown")
STREAM_PROTOCOLS = PROTOCOLS[1:]  # what `classify` can name (http is judged request by request elsewhere)
INSPECT_LIMIT = 16 * 1024  # bytes of each direction worth keeping: every login phase here fits, and memory stays bounded
_LINE_LIMIT = 64  # client lines looked at in line-based protocols


@dataclass(frozen=True)
class Sighting:
    protocol: str  # one of PROTOCOLS, or "tls" when the client's bytes are a TLS handshake
    credentials: tuple[str, ...] = ()  # kinds, sorted: username, password, sasl, password_digest, auth_data
    lengths: dict[str, int] = field(default_factory=dict)  # kind -> length in bytes of what was sent, when known
    starttls_offered: bool = False  # the server advertised an upgrade (EHLO, CAPABILITY, CAPA, FEAT, stream features)
    starttls_requested: bool = False  # the client sent the upgrade command
    upgraded: bool = False  # TLS bytes follow the client's upgrade command: the rest is not cleartext
    tls_offset: int | None = None  # where in the client's bytes the TLS handshake starts, when `upgraded`
    starttls_accepted: bool = False  # the server's last reply accepted the upgrade (220, OK, +OK, 234, <proceed/>)
    negotiation_only: bool = False  # the client sent nothing but greeting/capability/upgrade commands so far
    complete: bool = True  # enough bytes to name the protocol; False: the caller should wait for more
    settled: bool = False  # the login phase is over: no credential kind can still appear
    details: dict[str, Any] = field(default_factory=dict)  # protocol facts: mqtt protocol level, SASL mechanism, ...

    @property
    def starttls_offered_unused(self) -> bool:
        return self.starttls_offered and not self.starttls_requested

    def evidence(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "credentials": list(self.credentials),
            "credential_lengths": dict(self.lengths),
            "starttls_offered": self.starttls_offered,
            "starttls_offered_unused": self.starttls_offered_unused,
            **self.details,
        }


def starts_like_tls(data: bytes) -> bool:
    """A TLS handshake record (SSL 3.0 to TLS 1.3 all use record version 3.x)."""
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03 and data[2] <= 0x04


def classify(client: bytes, server: bytes = b"") -> Sighting:
    """The protocol and credential kinds in the bytes seen so far; never raises."""
    client, server = bytes(client[:INSPECT_LIMIT]), bytes(server[:INSPECT_LIMIT])
    try:
        return _classify(client, server)
    except Exception:  # noqa: BLE001 - a parser slip must not crash the proxy; unknown is judged strictest
        return Sighting("unknown", settled=True, details={"parse_error": True})


def _classify(client: bytes, server: bytes) -> Sighting:
    if starts_like_tls(client):
        return Sighting("tls", upgraded=True, tls_offset=0, settled=True)
    banner = server.lstrip()[:512]
    if banner.startswith(b"220"):
        return _smtp_or_ftp(client, server)
    if banner.startswith(b"+OK"):
        return _pop3(client, server)
    if banner[:4].upper() in (b"* OK", b"* PR"):
        return _imap(client, server)
    if not client:
        return Sighting("unknown", complete=False)
    if client[0] == 0x10:
        return _mqtt(client)
    if client[:1] == b"*":
        return _redis_resp(client)
    stripped = client.lstrip()
    if stripped.startswith((b"<?xml", b"<stream")) or b"<stream:stream" in stripped[:512]:
        return _xmpp(client, server)
    if _HTTP_REQUEST.match(client):
        return Sighting("http", settled=True)
    inline = _redis_inline(client)
    if inline is not None:
        return inline
    if not server and _maybe_prefix(client):
        return Sighting("unknown", complete=False)
    return Sighting("unknown", settled=True)


_HTTP_REQUEST = re.compile(rb"[A-Z]{3,10} \S+ HTTP/\d")
_KNOWN_PREFIXES = (b"<?xml", b"<stream:stream", b"AUTH ", b"HELLO ", b"PING")


def _maybe_prefix(client: bytes) -> bool:
    """A few bytes that could still become something known: worth waiting for the rest of the line."""
    if len(client) >= 32 or b"\n" in client:
        return False
    upper = client.upper()
    return any(p.upper().startswith(upper) or upper.startswith(p.upper()) for p in _KNOWN_PREFIXES)


# -- MQTT -----------------------------------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at `pos`: (value, next position), or None if truncated or over 4 bytes."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    return None


def _u16(data: bytes, pos: int) -> int | None:
    return int.from_bytes(data[pos : pos + 2], "big") if pos + 2 <= len(data) else None


def _mqtt(client: bytes) -> Sighting:
    """An MQTT CONNECT (3.1, 3.1.1, 5): the flags byte already says whether user name and password follow."""
    head = _varint(client, 1)
    if head is None:
        return Sighting("mqtt", complete=len(client) >= 5, settled=len(client) >= 5)
    remaining, pos = head
    name_len = _u16(client, pos)
    if name_len is None or pos + 2 + name_len + 2 > len(client):
        complete = len(client) >= INSPECT_LIMIT
        if name_len is not None and name_len not in (4, 6):
            return Sighting("unknown", settled=True)
        return Sighting("mqtt", complete=complete, settled=complete)
    name = client[pos + 2 : pos + 2 + name_len]
    if name not in (b"MQTT", b"MQIsdp"):
        return Sighting("unknown", settled=True)
    pos += 2 + name_len
    level, flags = client[pos], client[pos + 1]
    pos += 4  # level, flags, keep alive
    kinds: list[str] = []
    if flags & 0x80:
        kinds.append("username")
    if flags & 0x40:
        kinds.append("password")
    details: dict[str, Any] = {"mqtt_protocol_level": level, "mqtt_packet_length": remaining}
    lengths: dict[str, int] = {}
    if level == 5:
        props = _varint(client, pos)
        if props is None:
            return Sighting("mqtt", tuple(sorted(kinds)), complete=True, settled=True, details=details)
        props_len, pos = props
        if _mqtt5_has_auth(client[pos : pos + props_len]):
            kinds.append("auth_data")
        pos += props_len
    fields = ["client_id"]
    if flags & 0x04:  # will flag: (v5 will properties), will topic, will payload
        fields += ["will_properties" if level == 5 else "", "will_topic", "will_payload"]
    fields += [k for k in ("username", "password") if k in kinds]
    for name_ in (f for f in fields if f):
        if name_ == "will_properties":
            props = _varint(client, pos)
            if props is None:
                break
            pos = props[1] + props[0]
            continue
        size = _u16(client, pos)
        if size is None or pos + 2 + size > len(client):
            break
        if name_ in ("client_id", "username", "password"):
            lengths[name_] = size
        pos += 2 + size
    return Sighting("mqtt", tuple(sorted(kinds)), lengths, complete=True, settled=True, details=details)


_MQTT5_PROPERTY_SIZES = {0x11: 4, 0x21: 2, 0x27: 4, 0x22: 2, 0x19: 1, 0x17: 1}  # fixed-size CONNECT properties


def _mqtt5_has_auth(props: bytes) -> bool:
    """Authentication Method (0x15) or Data (0x16) among the CONNECT properties: enhanced authentication."""
    pos = 0
    for _ in range(64):
        if pos >= len(props):
            return False
        ident = props[pos]
        pos += 1
        if ident in (0x15, 0x16):
            return True
        if ident in _MQTT5_PROPERTY_SIZES:
            pos += _MQTT5_PROPERTY_SIZES[ident]
        elif ident == 0x26:  # user property: two strings
            for _pair in range(2):
                size = _u16(props, pos)
                if size is None:
                    return False
                pos += 2 + size
        else:
            return False
    return False


# -- line-based protocols -------------------------------------------------------------------------


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their ends) and what follows the last line end."""
    parts = data.split(b"\n")
    rest = parts.pop()
    return [p.rstrip(b"\r") for p in parts[:_LINE_LIMIT]], rest


def _word(line: bytes, index: int = 0) -> bytes:
    words = line.split()
    return words[index].upper() if len(words) > index else b""


def _b64_len(text: bytes) -> int | None:
    try:
        return len(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        return None


def _sasl_plain(text: bytes) -> dict[str, int]:
    """SASL PLAIN is authzid NUL authcid NUL password: lengths of the last two, never the values."""
    try:
        decoded = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return {}
    parts = decoded.split(b"\x00")
    if len(parts) != 3:
        return {}
    return {"username": len(parts[1]), "password": len(parts[2])}


@dataclass
class _Login:
    """Credentials and progress gathered while walking a line-based protocol's client commands."""

    kinds: set[str] = field(default_factory=set)
    lengths: dict[str, int] = field(default_factory=dict)
    negotiation_only: bool = True
    requested: bool = False
    upgraded: bool = False
    tls_offset: int | None = None
    accepted: bool = False
    partial: bool = False  # 1-2 bytes after the upgrade command that may still become a TLS record: wait for more
    settled: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    expect: list[str] = field(default_factory=list)  # what the next client lines are (SASL continuation)

    def add(self, kind: str, length: int | None = None) -> None:
        self.kinds.add(kind)
        if length is not None:
            self.lengths[kind] = length

    def sasl(self, mechanism: bytes, initial: bytes | None) -> None:
        mech = mechanism.decode("ascii", "replace")[:32]
        self.details["sasl_mechanism"] = mech
        if mech == "PLAIN":
            if initial is not None and initial != b"=":
                self.kinds |= {"username", "password"}
                self.lengths.update(_sasl_plain(initial))
                self.settled = True
            else:
                self.expect = ["plain"]
        elif mech == "LOGIN":
            if initial is not None:
                self.add("username", _b64_len(initial))
                self.expect = ["password"]
            else:
                self.expect = ["username", "password"]
        else:
            self.add("sasl")
            self.settled = True

    def continuation(self, line: bytes) -> None:
        what = self.expect.pop(0)
        if line.strip() == b"*":  # the client cancelled the exchange
            self.expect = []
            return
        if what == "plain":
            self.kinds |= {"username", "password"}
            self.lengths.update(_sasl_plain(line))
            self.settled = True
        else:
            self.add(what, _b64_len(line))
            self.settled = self.settled or what == "password"

    def upgrade(self, client: bytes, line_end: int) -> None:
        """The client asked for TLS; whatever it sends after that line decides whether it got it."""
        self.requested = True
        after = client[line_end:]
        self.upgraded = starts_like_tls(after)
        self.tls_offset = line_end if self.upgraded else None
        self.partial = 0 < len(after) < 3 and after[:1] == b"\x16" and after[1:2] in (b"", b"\x03")

    def sighting(self, protocol: str, starttls_offered: bool, complete: bool = True) -> Sighting:
        return Sighting(
            protocol,
            tuple(sorted(self.kinds)),
            dict(self.lengths),
            starttls_offered=starttls_offered,
            starttls_requested=self.requested,
            upgraded=self.upgraded,
            tls_offset=self.tls_offset,
            starttls_accepted=self.requested and self.accepted,
            negotiation_only=self.negotiation_only and not self.kinds,
            complete=complete and not self.partial,
            settled=self.settled,
            details=self.details,
        )


def _walk(client: bytes, handle: Any) -> _Login:
    """Feed each complete client line to `handle(login, line, end)` until TLS starts or the lines run out."""
    login = _Login()
    pos = 0
    for _ in range(_LINE_LIMIT):
        end = client.find(b"\n", pos)
        if end < 0:
            break
        line = client[pos:end].rstrip(b"\r")
        pos = end + 1
        if login.expect:
            login.continuation(line)
        else:
            handle(login, line, pos)
        if login.upgraded or login.requested and pos >= len(client):
            break
    return login


def _offers(server: bytes, pattern: bytes) -> bool:
    return re.search(pattern, server, re.IGNORECASE | re.MULTILINE) is not None


def _replies(server: bytes, pattern: bytes) -> list[bytes]:
    """The server's complete lines that are final replies (`pattern` matches their start), in order."""
    lines = [line.rstrip(b"\r") for line in server.split(b"\n")[:-1]]  # the caller keeps at most INSPECT_LIMIT bytes
    return [line for line in lines if re.match(pattern, line)]


def _accepted(server: bytes, final: bytes, yes: bytes) -> bool:
    """The server's last final reply says yes, and it is not the greeting (which is a final reply too)."""
    replies = _replies(server, final)
    return len(replies) >= 2 and re.match(yes, replies[-1]) is not None


_SMTP_NEGOTIATION = {b"EHLO", b"HELO", b"LHLO", b"NOOP", b"RSET", b"QUIT", b"STARTTLS"}
_FTP_NEGOTIATION = {b"FEAT", b"SYST", b"NOOP", b"QUIT", b"HELP", b"OPTS", b"CLNT"}


def _smtp_or_ftp(client: bytes, server: bytes) -> Sighting:
    first = _word(client.split(b"\n", 1)[0]) if client else b""
    if first in (b"EHLO", b"HELO", b"LHLO", b"MAIL"):
        return _smtp(client, server)
    if first in (b"USER", b"PASS", b"FEAT", b"SYST", b"OPTS", b"PBSZ", b"PROT", b"CLNT"):
        return _ftp(client, server)
    banner = server.split(b"\n", 1)[0].upper()
    if b"FTP" in banner and b"SMTP" not in banner:
        return _ftp(client, server)
    if b"SMTP" in banner or b"MAIL" in banner:
        return _smtp(client, server)
    if first == b"AUTH":  # AUTH TLS is FTP's upgrade; SMTP would have said EHLO first
        return _ftp(client, server)
    if not client or b"\n" not in client:
        return Sighting("unknown", complete=False, negotiation_only=True)
    return Sighting("unknown", settled=True)


def _smtp(client: bytes, server: bytes) -> Sighting:
    def handle(login: _Login, line: bytes, end: int) -> None:
        command = _word(line)
        if command == b"STARTTLS":
            login.upgrade(client, end)
        elif command == b"AUTH":
            login.negotiation_only = False
            words = line.split()
            login.sasl(words[1].upper() if len(words) > 1 else b"", words[2] if len(words) > 2 else None)
        elif command not in _SMTP_NEGOTIATION:
            login.negotiation_only = False
            login.settled = True  # MAIL, RCPT, DATA, ...: mail is flowing; any later AUTH is still caught while inspected

    login = _walk(client, handle)
    login.accepted = _accepted(server, rb"\d{3}(?: |$)", rb"220\b")
    return login.sighting("smtp", _offers(server, rb"^250[- ]STARTTLS\b"), complete=bool(client) and b"\n" in client)


def _ftp(client: bytes, server: bytes) -> Sighting:
    def handle(login: _Login, line: bytes, end: int) -> None:
        command = _word(line)
        if command == b"AUTH" and _word(line, 1) in (b"TLS", b"SSL", b"TLS-C"):
            login.upgrade(client, end)
        elif command == b"USER":
            login.negotiation_only = False
            login.add("username", len(line[5:]))
        elif command in (b"PASS", b"ACCT"):
            login.negotiation_only = False
            login.add("password" if command == b"PASS" else "account", len(line[5:]))
            login.settled = True
        elif command not in _FTP_NEGOTIATION:
            login.negotiation_only = False
            login.settled = login.settled or command not in (b"PBSZ", b"PROT")

    login = _walk(client, handle)
    login.accepted = _accepted(server, rb"\d{3}(?: |$)", rb"234\b")
    return login.sighting("ftp", _offers(server, rb"^\s*AUTH\s+TLS\b"), complete=bool(client) and b"\n" in client)


def _pop3(client: bytes, server: bytes) -> Sighting:
    def handle(login: _Login, line: bytes, end: int) -> None:
        command = _word(line)
        if command == b"STLS":
            login.upgrade(client, end)
        elif command == b"USER":
            login.negotiation_only = False
            login.add("username", len(line[5:]))
        elif command == b"PASS":
            login.negotiation_only = False
            login.add("password", len(line[5:]))
            login.settled = True
        elif command == b"APOP":
            login.negotiation_only = False
            login.add("username", len(_word(line, 1)))
            login.add("password_digest")
            login.settled = True
        elif command == b"AUTH":
            login.negotiation_only = False
            words = line.split()
            login.sasl(words[1].upper() if len(words) > 1 else b"", words[2] if len(words) > 2 else None)
        elif command not in (b"CAPA", b"NOOP", b"QUIT"):
            login.negotiation_only = False
            login.settled = True

    login = _walk(client, handle)
    login.accepted = _accepted(server, rb"(?:\+OK|-ERR)\b", rb"\+OK\b")
    return login.sighting("pop3", _offers(server, rb"^STLS\b"), complete=b"\n" in client)


def _imap(client: bytes, server: bytes) -> Sighting:
    def handle(login: _Login, line: bytes, end: int) -> None:
        command = _word(line, 1)
        if command == b"STARTTLS":
            login.details["imap_starttls_tag"] = line.split()[0][:32].decode("ascii", "replace")
            login.upgrade(client, end)
        elif command == b"LOGIN":
            login.negotiation_only = False
            words = line.split(None, 3)
            login.add("username", len(words[2].strip(b'"')) if len(words) > 2 else None)
            login.add("password", len(words[3].strip(b'"')) if len(words) > 3 else None)
            login.settled = True
        elif command == b"AUTHENTICATE":
            login.negotiation_only = False
            words = line.split()
            login.sasl(words[2].upper() if len(words) > 2 else b"", words[3] if len(words) > 3 else None)
        elif command not in (b"CAPABILITY", b"NOOP", b"LOGOUT", b"ID"):
            login.negotiation_only = False
            login.settled = True

    login = _walk(client, handle)
    tag = login.details.pop("imap_starttls_tag", None)
    if tag is not None:
        login.accepted = re.search(rb"^" + re.escape(tag.encode()) + rb" OK\b", server, re.MULTILINE | re.IGNORECASE) is not None
    return login.sighting("imap", _offers(server, rb"CAPABILITY[^\r\n]*\bSTARTTLS\b"), complete=b"\n" in client)


# -- XMPP -----------------------------------------------------------------------------------------

_XMPP_AUTH = re.compile(rb"<auth\b[^>]*\bmechanism\s*=\s*['\"]([A-Za-z0-9_-]{1,32})['\"][^>]*?(/>|>([^<]*)</auth>)", re.S)
_XMPP_STARTTLS = re.compile(rb"<starttls\b[^>]*/>|<starttls\b[^>]*>\s*</starttls>")


def _xmpp(client: bytes, server: bytes) -> Sighting:
    """An XMPP client stream: the stream header, then STARTTLS or SASL (`<auth mechanism=...>`) or legacy iq auth."""
    login = _Login()
    offered = b"<starttls" in server
    if b"<stream" not in client:
        return login.sighting("xmpp", offered, complete=len(client) >= 512)
    tls = _XMPP_STARTTLS.search(client)
    if tls is not None:
        login.upgrade(client, tls.end())
        login.accepted = b"<proceed" in server
        if login.upgraded:
            return login.sighting("xmpp", offered)
    auth = _XMPP_AUTH.search(client)
    if auth is not None:
        login.negotiation_only = False
        mech = auth.group(1).upper()
        login.details["sasl_mechanism"] = mech.decode("ascii", "replace")
        if mech == b"PLAIN" and auth.group(3):
            login.kinds |= {"username", "password"}
            login.lengths.update(_sasl_plain(auth.group(3)))
        else:
            login.add("sasl")
        login.settled = True
    elif b"jabber:iq:auth" in client:
        login.negotiation_only = False
        for kind, tag in (("username", b"username"), ("password", b"password"), ("password_digest", b"digest")):
            found = re.search(rb"<" + tag + rb">([^<]*)</" + tag + rb">", client)
            if found:
                login.add(kind, len(found.group(1)))
        login.settled = "password" in login.kinds or "password_digest" in login.kinds
    elif re.search(rb"<(iq|message|presence)\b", client):
        login.negotiation_only = False
        login.settled = True
    return login.sighting("xmpp", offered)


# -- Redis ----------------------------------------------------------------------------------------


def _redis_resp(client: bytes) -> Sighting:
    """RESP: `*N` then N bulk strings `$len` + data. The first command says whether this is a login."""
    args: list[bytes] = []
    pos = 0
    end = client.find(b"\r\n", pos)
    if end < 0:
        return (
            Sighting("redis", complete=len(client) >= 16, settled=len(client) >= 16)
            if client[1:].isdigit()
            else (Sighting("unknown", settled=True))
        )
    count_text = client[1:end]
    if not count_text.isdigit() or not 0 < int(count_text) <= 1024:
        return Sighting("unknown", settled=True)
    count = int(count_text)
    pos = end + 2
    for _ in range(min(count, 8)):
        if pos >= len(client):
            break
        if client[pos : pos + 1] != b"$":
            return Sighting("unknown", settled=True)
        end = client.find(b"\r\n", pos)
        if end < 0 or not client[pos + 1 : end].isdigit():
            break
        size = int(client[pos + 1 : end])
        if end + 2 + size > len(client):
            args.append(b"\x00" * size)  # length known, bytes still on their way
            break
        args.append(client[end + 2 : end + 2 + size])
        pos = end + 4 + size
    if not args:
        return Sighting("redis", complete=False)
    return _redis_command(args, count)


def _redis_inline(client: bytes) -> Sighting | None:
    """Redis' inline form (`AUTH secret\\r\\n`) for the commands that carry credentials."""
    line = client.split(b"\n", 1)[0].rstrip(b"\r")
    words = line.split()
    if not words or words[0].upper() not in (b"AUTH", b"HELLO") or b"\n" not in client:
        return None
    return _redis_command(words, len(words))


def _redis_command(args: list[bytes], count: int) -> Sighting:
    command = args[0].upper()
    kinds: dict[str, int] = {}
    if command == b"AUTH":  # AUTH password | AUTH username password
        names = ("username", "password") if count >= 3 else ("password",) if count == 2 else ()
        kinds = {name: len(args[i + 1]) if i + 1 < len(args) else 0 for i, name in enumerate(names)}
    elif command == b"HELLO":
        upper = [a.upper() for a in args]
        if b"AUTH" in upper:
            at = upper.index(b"AUTH")
            for kind, offset in (("username", 1), ("password", 2)):
                kinds[kind] = len(args[at + offset]) if at + offset < len(args) else 0
    elif not command.isalpha() or len(command) > 32:
        return Sighting("unknown", settled=True)
    lengths = {k: v for k, v in kinds.items() if v}
    details = {"redis_command": command.decode("ascii", "replace")} if command in (b"AUTH", b"HELLO") else {}
    return Sighting("redis", tuple(sorted(kinds)), lengths, complete=True, settled=True, details=details)
