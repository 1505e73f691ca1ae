"""One pass over a message's fields: ECB and fixed-IV/nonce ciphertext, provider keys, unsigned JWTs, seeded identifiers.

Returns value-free items only (field path as the caller's `namer` shows it,
encoding, lengths, counts), so what it returns can be written anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.payload.decode import decode, random_text
from proxy.payload.ecb import BLOCK, analyse, cipher_shaped
from proxy.payload.fields import Field
from proxy.payload.identifiers import Form, find
from proxy.payload.recall import BlockMemory
from proxy.payload.secrets import jwt_claims, jwts, provider_keys

Namer = Callable[[tuple[str, ...]], str]
MAX_RECALLED = 32  # cipher-shaped values per message compared with earlier ones


@dataclass
class ScanResult:
    ecb: list[dict[str, Any]] = field(default_factory=list)
    deterministic: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    unsigned_jwts: list[dict[str, Any]] = field(default_factory=list)
    identifiers: list[dict[str, Any]] = field(default_factory=list)


def _printable_text(data: bytes) -> str | None:
    """Decoded bytes worth searching for identifiers: text, not ciphertext."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text) else None


def scan(
    fields: list[Field],
    *,
    host: str,
    namer: Namer,
    ecb: bool = True,
    secrets: bool = True,
    forms: list[Form] | None = None,
    memory: BlockMemory | None = None,
    client: str = "",
    body_bytes: int | None = None,
) -> ScanResult:
    """`client` keys the memory (one device's values are compared with its own); `body_bytes` is the whole body's
    length when it is known (not content-encoded), which decides whether a cut binary body is whole blocks."""
    result = ScanResult()
    texts: list[tuple[str, str, str]] = []
    candidates: list[tuple[str, str, bytes, bool]] = []  # (shown path, encoding, bytes, whole blocks) of cipher-shaped values
    for item in fields:
        shown = namer(item.path)
        decoded: tuple[str, bytes] | None = ("binary", item.raw) if item.raw is not None else decode(item.text)
        if ecb and decoded is not None and random_text(item.text, decoded[0]) and cipher_shaped(decoded[1]):
            encoding, data = decoded
            aligned = _whole_blocks(item, data, body_bytes)
            candidates.append((shown, encoding, data, aligned))
            report = analyse(data[: len(data) // BLOCK * BLOCK]) if aligned else None
            if report is not None and report.ecb:
                result.ecb.append(
                    {
                        "field": shown,
                        "encoding": encoding,
                        "length": report.length,
                        "blocks": report.blocks,
                        "repeated_blocks": report.repeated,
                        "basis": "repeated_block",
                    }
                )
        if secrets and item.text:
            for hit in provider_keys(item.text):
                found = {"format": hit.format.name, "field": shown, "length": hit.length, "severity": hit.format.severity}
                result.keys.append(found)
            for token in jwts(item.text):
                if token.unsigned:
                    result.unsigned_jwts.append({"field": shown, "alg": token.alg, "length": token.length})
        if forms:
            if len(item.path) > 1 and item.path[0] in ("json", "form", "query", "cookie"):
                texts.append((shown, "", "\0".join(item.path[1:])))  # a key can be the identifier itself
            texts += [(shown, "jwt", claims) for claims in jwt_claims(item.text)]
            if item.text:
                texts.append((shown, "", item.text))
            if decoded is not None and decoded[0] != "binary":
                inner = _printable_text(decoded[1])
                if inner:
                    texts.append((shown, decoded[0], inner))
            elif item.raw is not None:
                texts.append((shown, "", item.raw.decode("latin-1")))
    if forms:
        result.identifiers = [hit.as_dict() for hit in find(forms, texts)]
    if memory is not None and candidates:
        _recall(candidates, client, host, memory, result)
    return result


def _whole_blocks(item: Field, data: bytes, body_bytes: int | None) -> bool:
    """Whether the whole value is a whole number of cipher blocks: a value cut at the limit is only by accident."""
    if not item.cut:
        return len(data) % BLOCK == 0
    return item.raw is not None and item.path[0] == "body" and body_bytes is not None and body_bytes % BLOCK == 0


def _recall(
    candidates: list[tuple[str, str, bytes, bool]], client: str, host: str, memory: BlockMemory, result: ScanResult
) -> None:
    reported = {item["field"] for item in result.ecb}
    for shown, encoding, data, aligned in candidates[:MAX_RECALLED]:
        recall = memory.observe(client, host, shown, data, aligned)
        if recall is None or shown in reported:
            continue
        item: dict[str, Any] = {"field": shown, "encoding": encoding, "length": len(data), "basis": recall.kind}
        if recall.kind == "keystream_reuse":
            item["evidence_bits"] = recall.bits
        elif recall.kind == "zero_iv":
            item["zero_bytes"] = recall.blocks
        else:
            item["matching_blocks"] = recall.blocks
        if recall.prefixes:
            item["prefix_blocks"] = list(recall.prefixes)
        (result.ecb if recall.kind == "moved_block" else result.deterministic).append(item)
