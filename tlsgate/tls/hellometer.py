"""How much of a ClientHello has arrived, counted once per byte however the client splits it into records.

mitmproxy re-parses everything received so far each time more arrives, so a
hello split into 200,000 one-byte TLS records cost ~6 s of event loop for
every client of the proxy. This meter walks each byte once, keeps only the
five-byte record header it is inside, and says when the hello is complete or
when the client has gone past a bound (bytes or records) before finishing it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

HANDSHAKE = 0x16
CLIENT_HELLO = 0x01
RECORD_HEADER = 5
MAX_RECORD = 16384 + 2048  # TLSCiphertext limit (RFC 8446 5.2); a plaintext hello record is at most 2^14


class Hello(enum.Enum):
    PARTIAL = "more records are needed"
    COMPLETE = "the whole ClientHello has arrived"
    OVERSIZED = "the hello is (or declares itself) larger than the byte bound"
    FRAGMENTED = "the hello is spread over more records than the record bound"
    MALFORMED = "not a TLS handshake record carrying a ClientHello"


@dataclass
class HelloMeter:
    """Feed it the client's bytes as they arrive; `state` says where the hello stands.

    `max_bytes` bounds the handshake bytes (and the size the hello declares);
    `max_records` the records it may take. 0 means no bound.
    """

    max_bytes: int
    max_records: int
    state: Hello = Hello.PARTIAL
    records: int = 0
    hello_bytes: int = 0  # handshake payload received so far (without record headers)
    wire_bytes: int = 0  # everything fed, record headers included
    declared: int | None = None  # the hello's own length field, plus its 4-byte header, once known
    problem: str = ""
    _header: bytes = b""
    _left: int = 0  # payload bytes still to come in the current record
    _prefix: bytes = b""  # the first four handshake bytes (type and length)

    def feed(self, data: bytes) -> Hello:
        if self.state is not Hello.PARTIAL:
            return self.state
        view = memoryview(data)
        self.wire_bytes += len(data)
        at = 0
        while at < len(view) and self.state is Hello.PARTIAL:
            if self._left == 0:
                need = RECORD_HEADER - len(self._header)
                self._header += bytes(view[at : at + need])
                at += need
                if len(self._header) == RECORD_HEADER:
                    self._start_record()
                continue
            take = min(self._left, len(view) - at)
            self._payload(bytes(view[at : at + min(take, 4 - len(self._prefix))]) if len(self._prefix) < 4 else b"")
            self._left -= take
            self.hello_bytes += take
            at += take
            self._check_progress()
        return self.state

    def _start_record(self) -> None:
        header, self._header = self._header, b""
        length = int.from_bytes(header[3:5], "big")
        if header[0] != HANDSHAKE or header[1] != 3 or header[2] > 4:
            self._stop(
                Hello.MALFORMED, f"was not a TLS handshake (record type {header[0]:#04x}, version {header[1]}.{header[2]})"
            )
        elif length == 0 or length > MAX_RECORD:
            self._stop(Hello.MALFORMED, f"came in a handshake record of {length} bytes")
        else:
            self.records += 1
            self._left = length
            if self.max_records and self.records > self.max_records:
                self._stop(Hello.FRAGMENTED, f"was split into more than {self.max_records} records before it ended")

    def _payload(self, first: bytes) -> None:
        if not first:
            return
        self._prefix += first
        if len(self._prefix) >= 1 and self._prefix[0] != CLIENT_HELLO:
            self._stop(Hello.MALFORMED, f"was handshake message type {self._prefix[0]}, not a ClientHello")
        elif len(self._prefix) == 4:
            self.declared = int.from_bytes(self._prefix[1:4], "big") + 4
            if self.max_bytes and self.declared > self.max_bytes:
                self._stop(Hello.OVERSIZED, f"declares {self.declared} bytes, over the bound of {self.max_bytes}")

    def _check_progress(self) -> None:
        if self.state is not Hello.PARTIAL:
            return
        if self.declared is not None and self.hello_bytes >= self.declared:
            self.state = Hello.COMPLETE
        elif self.max_bytes and self.hello_bytes > self.max_bytes:
            self._stop(Hello.OVERSIZED, f"ran past {self.max_bytes} handshake bytes without ending")

    def _stop(self, state: Hello, problem: str) -> None:
        self.state, self.problem = state, problem

    def evidence(self) -> dict[str, int | str | None]:
        """Counts only: never the hello's bytes."""
        return {
            "records": self.records,
            "hello_bytes": self.hello_bytes,
            "wire_bytes": self.wire_bytes,
            "declared_bytes": self.declared,
            "max_bytes": self.max_bytes,
            "max_records": self.max_records,
        }
