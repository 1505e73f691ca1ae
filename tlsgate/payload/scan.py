"""One pass over a message's fields: ECB and fixed-IV/nonce ciphertext, provider keys, unsigned JWTs, seeded identifiers.

Returns value-free items only (field path as the caller's `namer` shows it,
encoding, lengths, counts), so what it returns can be written anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tlsgate.payload.bounds import MAX_ANALYSED, MAX_ITEMS, WINDOW, Budget, Steps, drain
from tlsgate.payload.decode import decode, random_text
from tlsgate.payload.ecb import BLOCK, analyse, cipher_shaped
from tlsgate.payload.fields import Field
from tlsgate.payload.identifiers import Form, Hit, find_steps
from tlsgate.payload.recall import BlockMemory
from tlsgate.payload.secrets import jwt_steps, provider_key_steps, provider_keys

Namer = Callable[[tuple[str, ...]], str]
MAX_RECALLED = 32  # cipher-shaped values per message compared with earlier ones


@dataclass
class ScanResult:
    ecb: list[dict[str, Any]] = field(default_factory=list)
    deterministic: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    unsigned_jwts: list[dict[str, Any]] = field(default_factory=list)
    identifiers: list[dict[str, Any]] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)  # the limits of `tlsgate.payload.bounds` this scan reached


def _printable_text(data: bytes) -> str | None:
    """Decoded bytes worth searching for identifiers: text, not ciphertext (line breaks and tabs allowed)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() or text.replace("\r", "").replace("\n", "").replace("\t", "").isprintable() else None


def scan(
    fields: Iterable[Field | None],
    *,
    host: str,
    namer: Namer,
    ecb: bool = True,
    secrets: bool = True,
    forms: list[Form] | None = None,
    memory: BlockMemory | None = None,
    budget: Budget | None = None,
    client: str = "",
    body_bytes: int | None = None,
) -> ScanResult:
    """`client` keys the memory (one device's values are compared with its own); `body_bytes` is the whole body's
    length when it is known (not content-encoded), which decides whether a cut binary body is whole blocks."""
    steps = scan_steps(
        fields, host=host, namer=namer, ecb=ecb, secrets=secrets, forms=forms, memory=memory, budget=budget,
        client=client, body_bytes=body_bytes,
    )  # fmt: skip
    return drain(steps)


IDENTIFIER_BATCH = 1 << 18  # characters searched for identifiers per step


def scan_steps(
    fields: Iterable[Field | None],
    *,
    host: str,
    namer: Namer,
    ecb: bool = True,
    secrets: bool = True,
    forms: list[Form] | None = None,
    memory: BlockMemory | None = None,
    budget: Budget | None = None,
    client: str = "",
    body_bytes: int | None = None,
) -> Steps[ScanResult]:
    """`scan`, yielding `None` after each bounded piece of work (see `tlsgate.payload.bounds`).

    `fields` may be a generator that yields `None` between its own pieces of
    work; each field is judged as it arrives and then dropped, so a large body
    is never held as fields. Every evidence list stops at `MAX_ITEMS` and the
    result names each limit reached (`capped`).
    """
    result = ScanResult()
    budget = budget if budget is not None else Budget()
    texts: list[tuple[str, str, str]] = []
    batched = 0  # characters of values in `texts` (names and claims are short)
    hits: dict[tuple[str, str], Hit] = {}
    candidates: list[tuple[str, str, bytes, bool]] = []  # (shown path, encoding, bytes, whole blocks) of cipher-shaped values
    for item in fields:
        if item is None:
            yield None
            continue
        big = len(item.text) > WINDOW or (item.raw is not None and len(item.raw) > WINDOW)  # a step per pass over it
        shown = namer(item.path)
        decoded: tuple[str, bytes] | None = ("binary", item.raw) if item.raw is not None else decode(item.text)
        if big:
            yield None
        if (
            ecb
            and decoded is not None
            and item.segment == 0
            and budget.decode(len(decoded[1]))
            and random_text(item.text, decoded[0])
            and cipher_shaped(decoded[1])
        ):
            encoding, data = decoded
            aligned = _whole_blocks(item, data, body_bytes)
            if len(candidates) < MAX_RECALLED:
                candidates.append((shown, encoding, data, aligned))
            report = analyse(data[: min(len(data), MAX_ANALYSED) // BLOCK * BLOCK]) if aligned else None
            if report is not None and report.ecb:
                budget.keep(
                    result.ecb,
                    {
                        "field": shown,
                        "encoding": encoding,
                        "length": len(data),
                        "blocks": report.blocks,
                        "repeated_blocks": report.repeated,
                        "basis": "repeated_block",
                    },
                    "ecb",
                )
            yield None
        claims: list[str] = []
        if item.text and secrets and len(result.keys) < MAX_ITEMS:  # a full list is not searched further
            keys = (yield from provider_key_steps(item.text, budget)) if big else provider_keys(item.text, budget)
            for key in keys:
                found = {"format": key.format.name, "field": shown, "length": key.length, "severity": key.format.severity}
                budget.keep(result.keys, found, "keys")
        if item.text and (secrets or forms) and "eyJ" in item.text:
            tokens, claims = yield from jwt_steps(item.text, budget, facts=secrets, claims=bool(forms))
            for token in tokens:
                if token.unsigned:
                    budget.keep(result.unsigned_jwts, {"field": shown, "alg": token.alg, "length": token.length}, "tokens")
        if forms:
            if len(item.path) > 1 and item.path[0] in ("json", "form", "query", "cookie"):
                texts.append((shown, "", "\0".join(item.path[1:])))  # a key can be the identifier itself
            texts += [(shown, "jwt", text) for text in claims]
            if item.text:
                texts.append((shown, "", item.text))
                batched += len(item.text)
            if decoded is not None and decoded[0] != "binary":
                inner = _printable_text(decoded[1])
                if inner:
                    texts.append((shown, decoded[0], inner))
                    batched += len(inner)
            elif item.raw is not None:
                texts.append((shown, "", item.raw.decode("latin-1")))
                batched += len(item.raw)
            if big:
                yield None
            if batched >= IDENTIFIER_BATCH:
                yield from find_steps(forms, texts, hits)
                texts, batched = [], 0
    if forms and texts:
        yield from find_steps(forms, texts, hits)
    if forms:
        for hit in hits.values():
            budget.keep(result.identifiers, hit.as_dict(), "identifiers")
    if memory is not None and candidates:
        _recall(candidates, client, host, memory, result)
    result.capped = sorted(budget.capped)
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
