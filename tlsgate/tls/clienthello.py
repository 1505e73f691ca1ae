"""What a client's ClientHello says about the app: versions, suites, SNI, and its JA3/JA4 fingerprints.

The hello is parsed here from its raw bytes rather than from mitmproxy's
object, so a captured hello is a complete unit test and the fingerprints are
computed from exactly the bytes on the wire (JA3 needs the legacy version and
the extension order, which a higher-level view may normalise away).

JA3 (Salesforce): `version,ciphers,extensions,groups,point_formats`, decimal
values joined by `-`, GREASE removed, MD5 of that string. JA4 (FoxIO, TLS over
TCP): `t` + best version + `d`/`i` (SNI or not) + cipher and extension counts +
first/last character of the first ALPN value, `_`, truncated SHA-256 of the
sorted cipher list, `_`, truncated SHA-256 of the sorted extensions (without
SNI and ALPN) and the signature algorithms in order.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Final

from tlsgate.tls import versions
from tlsgate.tls.ciphers import by_iana_code, describe, is_grease, is_signalling

EXT_SERVER_NAME: Final = 0x0000
EXT_SUPPORTED_GROUPS: Final = 0x000A
EXT_EC_POINT_FORMATS: Final = 0x000B
EXT_SIGNATURE_ALGORITHMS: Final = 0x000D
EXT_ALPN: Final = 0x0010
EXT_SUPPORTED_VERSIONS: Final = 0x002B

_JA4_VERSIONS: Final = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0200: "s2", 0x0100: "s1"}


@dataclass(frozen=True)
class ClientHello:
    """The fields of a TLS ClientHello that say something about the client (GREASE still in)."""

    legacy_version: int
    cipher_suites: tuple[int, ...]
    extensions: tuple[tuple[int, bytes], ...]

    def extension(self, ext_type: int) -> bytes | None:
        return next((body for t, body in self.extensions if t == ext_type), None)

    @property
    def sni(self) -> str | None:
        body = self.extension(EXT_SERVER_NAME)
        if not body or len(body) < 5 or body[2] != 0:  # list length (2), then type 0 = host_name
            return None
        length = int.from_bytes(body[3:5])
        return body[5 : 5 + length].decode("ascii", "replace") or None

    @property
    def alpn(self) -> tuple[bytes, ...]:
        body = self.extension(EXT_ALPN)
        return tuple(_length_prefixed(body[2:])) if body and len(body) >= 2 else ()

    @property
    def supported_versions(self) -> tuple[int, ...]:
        body = self.extension(EXT_SUPPORTED_VERSIONS)
        return _u16s(body[1 : 1 + body[0]]) if body else ()

    @property
    def groups(self) -> tuple[int, ...]:
        body = self.extension(EXT_SUPPORTED_GROUPS)
        return _u16s(body[2:]) if body and len(body) >= 2 else ()

    @property
    def point_formats(self) -> tuple[int, ...]:
        body = self.extension(EXT_EC_POINT_FORMATS)
        return tuple(body[1 : 1 + body[0]]) if body else ()

    @property
    def signature_algorithms(self) -> tuple[int, ...]:
        body = self.extension(EXT_SIGNATURE_ALGORITHMS)
        return _u16s(body[2:]) if body and len(body) >= 2 else ()

    @property
    def best_version(self) -> int:
        """The highest version offered: supported_versions when present (TLS 1.3 hellos), else the legacy field."""
        known = [v for v in self.supported_versions if versions.from_wire(v)]
        return max(known) if known else self.legacy_version

    @property
    def best_version_word(self) -> str | None:
        return versions.from_wire(self.best_version)

    # -- fingerprints --------------------------------------------------------------------------------

    def ja3_string(self) -> str:
        fields = (
            [self.legacy_version],
            _no_grease(self.cipher_suites),
            _no_grease(t for t, _ in self.extensions),
            _no_grease(self.groups),
            list(self.point_formats),
        )
        return ",".join("-".join(str(v) for v in values) for values in fields)

    def ja3(self) -> str:
        return hashlib.md5(self.ja3_string().encode(), usedforsecurity=False).hexdigest()

    def ja4(self, transport: str = "t") -> str:
        """JA4; `transport` is its first character: "t" for TLS over TCP, "q" for QUIC."""
        ciphers = _no_grease(self.cipher_suites)
        extensions = _no_grease(t for t, _ in self.extensions)
        versions = _no_grease(self.supported_versions)
        version = _JA4_VERSIONS.get(max(versions) if versions else self.legacy_version, "00")
        sni = "d" if EXT_SERVER_NAME in extensions else "i"
        head = f"{transport}{version}{sni}{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{_ja4_alpn(self.alpn)}"
        cipher_hash = _ja4_hash(",".join(f"{c:04x}" for c in sorted(ciphers))) if ciphers else "0" * 12
        listed = ",".join(f"{e:04x}" for e in sorted(extensions) if e not in (EXT_SERVER_NAME, EXT_ALPN))
        algorithms = ",".join(f"{a:04x}" for a in _no_grease(self.signature_algorithms))
        ext_hash = _ja4_hash(f"{listed}_{algorithms}" if algorithms else listed) if extensions else "0" * 12
        return f"{head}_{cipher_hash}_{ext_hash}"

    def fingerprint(self, quic: bool = False) -> dict[str, Any]:
        """What findings carry so a tester can tell which app or TLS stack made the connection."""
        return {"ja3": self.ja3(), "ja3_string": self.ja3_string(), "ja4": self.ja4("q" if quic else "t")}


def parse_client_hello(body: bytes) -> ClientHello:
    """Parse a ClientHello handshake body (from the version field on, as mitmproxy keeps it).

    Raises ValueError on anything truncated or malformed: a hello tlsgate cannot
    read is not judged rather than judged wrongly.
    """
    reader = _Reader(body)
    legacy_version = reader.u16()
    reader.take(32)  # random
    reader.take(reader.u8())  # legacy_session_id
    cipher_suites = _u16s(reader.take(reader.u16()))
    reader.take(reader.u8())  # legacy_compression_methods
    extensions: list[tuple[int, bytes]] = []
    if reader.remaining:
        block = _Reader(reader.take(reader.u16()))
        while block.remaining:
            ext_type = block.u16()
            extensions.append((ext_type, block.take(block.u16())))
    return ClientHello(legacy_version, cipher_suites, tuple(extensions))


def parse_record(data: bytes) -> ClientHello:
    """Parse a ClientHello as captured on the wire: one TLS record holding the handshake message."""
    if len(data) < 9 or data[0] != 0x16 or data[5] != 0x01:
        raise ValueError("not a TLS handshake record holding a ClientHello")
    length = int.from_bytes(data[6:9])
    return parse_client_hello(data[9 : 9 + length])


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int) -> bytes:
        if count > self.remaining:
            raise ValueError(f"ClientHello truncated: wanted {count} bytes at offset {self.pos}, {self.remaining} left")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2))


def _u16s(data: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(data[i : i + 2]) for i in range(0, len(data) - 1, 2))


def _length_prefixed(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        length = data[pos]
        out.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return out


def _no_grease(values: Any) -> list[int]:
    return [v for v in values if not is_grease(v)]


def _ja4_alpn(alpn: tuple[bytes, ...]) -> str:
    """First and last character of the first ALPN value; hex digits when those are not alphanumeric."""
    if not alpn or not alpn[0]:
        return "00"
    first, last = chr(alpn[0][0]), chr(alpn[0][-1])
    if first.isascii() and first.isalnum() and last.isascii() and last.isalnum():
        return first + last
    text = alpn[0].hex()
    return text[0] + text[-1]


def _ja4_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- what was offered ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferedSuite:
    """A suite the client offered, with what is wrong with it (nothing, for a strong one)."""

    code: int
    name: str
    weaknesses: tuple[str, ...]
    broken: bool
    known: bool = True  # False for a code missing from the catalogue: neither weak nor strong

    def as_dict(self) -> dict[str, Any]:
        return {"suite": self.name, "weaknesses": list(self.weaknesses)}


@functools.lru_cache(maxsize=512)
def offered_suites(codes: tuple[int, ...]) -> tuple[OfferedSuite, ...]:
    """Every real suite offered (signalling values left out); unknown codes are kept as unjudged.

    Cached: an app's TLS stack offers the same list on every connection (the
    random, session id and key shares differ; the suites do not).
    """
    out = []
    for code in codes:
        if is_signalling(code):
            continue
        suite = by_iana_code(code)
        if suite is None:
            out.append(OfferedSuite(code, describe(code), (), False, known=False))
        else:
            out.append(OfferedSuite(code, suite.iana_name, suite.weaknesses, suite.broken))
    return tuple(out)
