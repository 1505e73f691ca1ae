"""One pass over a message's fields: ECB and deterministic ciphertext, provider keys, unsigned JWTs, seeded identifiers.

Returns value-free items only (field path as the caller's `namer` shows it,
encoding, lengths, counts), so what it returns can be written anywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from proxy.payload.bounds import MAX_ANALYSED, MAX_ITEMS, WINDOW, Budget, Steps, drain
from proxy.payload.decode import decode
from proxy.payload.ecb import BlockMemory, analyse
from proxy.payload.fields import Field
from proxy.payload.identifiers import Form, Hit, find_steps
from proxy.payload.secrets import jwt_steps, provider_key_steps, provider_keys

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
    capped: list[str] = field(default_factory=list)  # the limits of `proxy.payload.bounds` this scan reached


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
    static_name: Callable[[str], bool],
    ecb: bool = True,
    secrets: bool = True,
    forms: list[Form] | None = None,
    memory: BlockMemory | None = None,
    budget: Budget | None = None,
) -> ScanResult:
    """`static_name(name)`: a field name whose value may repeat by design (tokens, IDs): exempt from `same_value`."""
    steps = scan_steps(
        fields, host=host, namer=namer, static_name=static_name, ecb=ecb, secrets=secrets, forms=forms, memory=memory,
        budget=budget,
    )  # fmt: skip
    return drain(steps)


IDENTIFIER_BATCH = 1 << 18  # characters searched for identifiers per step


def scan_steps(
    fields: Iterable[Field | None],
    *,
    host: str,
    namer: Namer,
    static_name: Callable[[str], bool],
    ecb: bool = True,
    secrets: bool = True,
    forms: list[Form] | None = None,
    memory: BlockMemory | None = None,
    budget: Budget | None = None,
) -> Steps[ScanResult]:
    """`scan`, yielding `None` after each bounded piece of work (see `proxy.payload.bounds`).

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
    paths: list[tuple[str, ...]] = []
    digests: list[bytes | Field] = []  # per field, for `_recall`'s "the request's other fields" context
    candidates: list[tuple[int, str, str, bytes]] = []  # (index, shown path, encoding, bytes) of ciphertext-shaped values
    for item in fields:
        if item is None:
            yield None
            continue
        index = len(paths)
        big = len(item.text) > WINDOW or (item.raw is not None and len(item.raw) > WINDOW)  # a step per pass over it
        paths.append(item.path)
        digests.append(_digest(item) if big else item)  # small ones only if some value is compared (`_recall`)
        shown = namer(item.path)
        decoded: tuple[str, bytes] | None = ("binary", item.raw) if item.raw is not None else decode(item.text)
        if big:
            yield None
        if ecb and decoded is not None and item.segment == 0:
            encoding, data = decoded
            report = analyse(data[:MAX_ANALYSED]) if budget.decode(len(data)) else None
            if report is not None:
                if len(candidates) < MAX_CANDIDATE_VALUES:
                    candidates.append((index, shown, encoding, data))
                if report.ecb:
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
        context = [d if isinstance(d, bytes) else _digest(d) for d in digests]
        _recall(paths, context, candidates, host, memory, static_name, result)
    result.capped = sorted(budget.capped)
    return result


MAX_CANDIDATE_VALUES = 32  # ciphertext-shaped values per message compared with earlier ones


def _digest(item: Field) -> bytes:
    """What `_recall` compares a request's other fields by: the path and the value, 16 bytes."""
    value = hashlib.blake2b(digest_size=16)
    value.update(f"{item.path}\0{item.text}".encode(errors="replace"))
    return value.digest()


def _recall(
    paths: list[tuple[str, ...]],
    digests: list[bytes],
    candidates: list[tuple[int, str, str, bytes]],
    host: str,
    memory: BlockMemory,
    static_name: Callable[[str], bool],
    result: ScanResult,
) -> None:
    shown_ecb = {item["field"] for item in result.ecb}
    for index, shown, encoding, data in candidates[:MAX_CANDIDATE_VALUES]:
        context = b"".join(d for i, d in enumerate(digests) if i != index)
        recall = memory.observe(host, shown, data, context)
        if recall is None or shown in shown_ecb:
            continue
        path = paths[index]
        item = {"field": shown, "encoding": encoding, "length": len(data), "basis": recall.kind, "matching_blocks": recall.blocks}
        if recall.kind == "moved_block":
            result.ecb.append(item)
        elif recall.kind != "same_value" or (path[0] not in STATIC_PLACES and not static_name(path[-1])):
            result.deterministic.append(item)
