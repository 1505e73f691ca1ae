"""One pass over a message's fields: ECB and deterministic ciphertext, provider keys, unsigned JWTs, seeded identifiers.

Returns value-free items only (field path as the caller's `namer` shows it,
encoding, lengths, counts), so what it returns can be written anywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.payload.decode import decode
from proxy.payload.ecb import BlockMemory, analyse
from proxy.payload.fields import Field
from proxy.payload.identifiers import Form, find
from proxy.payload.secrets import jwt_claims, jwts, provider_keys

Namer = Callable[[tuple[str, ...]], str]
# Fields where one value legitimately repeats in every request: the same-value rule would only flag tokens there.
STATIC_PLACES = ("header", "cookie", "path")


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
    static_name: Callable[[str], bool],
    ecb: bool = True,
    secrets: bool = True,
    forms: list[Form] | None = None,
    memory: BlockMemory | None = None,
) -> ScanResult:
    """`static_name(name)`: a field name whose value may repeat by design (tokens, IDs): exempt from `same_value`."""
    result = ScanResult()
    texts: list[tuple[str, str, str]] = []
    candidates: list[tuple[int, str, str, bytes]] = []  # (index, shown path, encoding, bytes) of ciphertext-shaped values
    for index, item in enumerate(fields):
        shown = namer(item.path)
        decoded: tuple[str, bytes] | None = ("binary", item.raw) if item.raw is not None else decode(item.text)
        if ecb and decoded is not None:
            encoding, data = decoded
            report = analyse(data)
            if report is not None:
                candidates.append((index, shown, encoding, data))
                if report.ecb:
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
        _recall(fields, candidates, host, memory, static_name, result)
    return result


def _recall(
    fields: list[Field],
    candidates: list[tuple[int, str, str, bytes]],
    host: str,
    memory: BlockMemory,
    static_name: Callable[[str], bool],
    result: ScanResult,
) -> None:
    shown_ecb = {item["field"] for item in result.ecb}
    digests = [hashlib.blake2b(f"{f.path}\0{f.text}".encode(errors="replace"), digest_size=16).digest() for f in fields]
    for index, shown, encoding, data in candidates[:32]:
        context = b"".join(d for i, d in enumerate(digests) if i != index)
        recall = memory.observe(host, shown, data, context)
        if recall is None or shown in shown_ecb:
            continue
        path = fields[index].path
        item = {"field": shown, "encoding": encoding, "length": len(data), "basis": recall.kind, "matching_blocks": recall.blocks}
        if recall.kind == "moved_block":
            result.ecb.append(item)
        elif recall.kind != "same_value" or (path[0] not in STATIC_PLACES and not static_name(path[-1])):
            result.deterministic.append(item)
