"""What a text value decodes to, the ways apps encode binary blobs (base64, base64url, hex).

A value is tried as hex first (a hex string is also valid base64, and apps that
hex-encode never mean base64), then as standard, then URL-safe base64, with or
without padding. Whitespace inside (MIME line breaks) is dropped first.
"""

from __future__ import annotations

import base64
import binascii
import re

MIN_TEXT = 22  # base64 of 16 bytes without padding: shorter values cannot hold one cipher block
MAX_TEXT = 1 << 20

_HEX = re.compile(r"[0-9a-fA-F]+")  # with an even length: a repeated pair group costs 50x more per character
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_SPACE = re.compile(r"\s+")
# Blob-shaped runs inside free text (a text/plain body, a truncated JSON prefix). The lookbehind starts a try
# only where a run starts, so text of short words is read once, not once per character of each word.
TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{22,}={0,2}")


def decode(text: str) -> tuple[str, bytes] | None:
    """(encoding, bytes) for a hex or base64 value of at least one cipher block, else None."""
    if len(text) < MIN_TEXT or len(text) > MAX_TEXT:
        return None
    if len(text) > 4096 and text.count(" ") + text.count("\n") > len(text) // 32:
        return None  # words or lines, not a blob (a + turned space is 1 in 64): rejected before the passes below
    if " " in text.strip() and "\n" not in text:
        text = text.strip().replace(" ", "+")  # base64 posted in a form without URL-encoding: its + arrived as spaces
    value = _SPACE.sub("", text) if ("\n" in text or "\r" in text or "\t" in text or " " in text) else text
    if len(value) < MIN_TEXT:
        return None
    if len(value) % 2 == 0 and _HEX.fullmatch(value):
        return "hex", bytes.fromhex(value)
    if len(value) % 4 == 1:
        return None
    padded = value + "=" * (-len(value) % 4)
    try:
        if _B64.fullmatch(value):
            return ("base64", base64.b64decode(padded, validate=True))
        if _B64URL.fullmatch(value):
            return ("base64url", base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError):
        return None
    return None


_UPPER = re.compile(r"[A-Z]")
_LOWER = re.compile(r"[a-z]")
_HEX_LETTER = re.compile(r"[a-fA-F]")
_DIGIT = re.compile(r"[0-9]")


def random_text(text: str, encoding: str) -> bool:
    """Whether `text` could be `encoding` of random bytes (ciphertext), not a word, an ID or a number that happens
    to fit the alphabet: base64 of 16 or more random bytes has upper- and lower-case letters (missing one: about
    2 x 10^-5), hex of them a letter and a digit. A UUID or a trace ID (hex and dashes) decodes as base64url;
    `getUserProfileSettings` or an all-digit ID decodes as base64; none of them is ciphertext."""
    if encoding == "hex":
        return bool(_HEX_LETTER.search(text) and _DIGIT.search(text))
    if encoding in ("base64", "base64url"):
        return bool(_UPPER.search(text) and _LOWER.search(text))
    return True
