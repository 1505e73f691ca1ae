"""Seeded personal identifiers: the tester declares a device's email, phone, IMEI, ad ID...; these are their wire forms.

Trackers rarely send an identifier as typed: they lower-case and hash it
(MD5, SHA-1, SHA-256, as the ad networks' "advanced matching" documents ask),
URL-encode or base64 it. `SeedIndex` precomputes every form once per policy
load, so a request costs one substring search per form. The plain values live
only in the policy file and in this index; a hit carries the kind, the
encoding and the length, never the value.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

KINDS = ("email", "phone", "imei", "advertising_id", "android_id", "username", "name", "serial", "mac", "other")
MIN_LENGTH = 5  # shorter values would be found by chance in any body
ANY_DEVICE = "*"


@dataclass(frozen=True)
class Form:
    kind: str
    encoding: str
    needle: str
    folded: bool  # compared lower-cased (hex digests, emails, IDs): the needle is lower-case already


@dataclass(frozen=True)
class Hit:
    kind: str
    encoding: str
    field: str
    length: int

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "encoding": self.encoding, "field": self.field, "length": self.length}


def variants(kind: str, value: str) -> list[str]:
    """The spellings an app or SDK may normalise a value to before encoding it."""
    text = value.strip()
    if kind == "phone":
        digits = re.sub(r"\D", "", text)
        out = [text, digits, f"+{digits}"]
    elif kind == "email":
        out = [text, text.lower()]
    elif kind in ("advertising_id", "android_id", "imei", "serial", "mac"):
        out = [text, text.lower(), text.upper()]
        if kind == "mac":
            bare = re.sub(r"[^0-9A-Fa-f]", "", text)
            out += [bare.lower(), bare.upper()]
    else:
        out = [text, text.lower()]
    return list(dict.fromkeys(v for v in out if len(v) >= MIN_LENGTH))


def forms_of(kind: str, value: str) -> list[Form]:
    """Plain, URL-encoded, base64/base64url and MD5/SHA-1/SHA-256 (hex and base64) of every variant."""
    forms: dict[tuple[str, bool], Form] = {}

    def add(encoding: str, needle: str, folded: bool) -> None:
        needle = needle.lower() if folded else needle
        if len(needle) >= MIN_LENGTH:
            forms.setdefault((needle, folded), Form(kind, encoding, needle, folded))

    for variant in variants(kind, value):
        raw = variant.encode()
        add("plain", variant, True)
        encoded = quote(variant, safe="")
        if encoded != variant:
            add("urlencoded", encoded, True)
        add("base64", base64.b64encode(raw).decode().rstrip("="), False)
        add("base64url", base64.urlsafe_b64encode(raw).decode().rstrip("="), False)
        for name in ("md5", "sha1", "sha256"):
            digest = hashlib.new(name, raw).digest()
            add(f"{name}-hex", digest.hex(), True)
            add(f"{name}-base64", base64.b64encode(digest).decode().rstrip("="), False)
    return list(forms.values())


class SeedIndex:
    """Device name -> the wire forms of its identifiers (`*` applies to every device)."""

    def __init__(self, seeds: dict[str, dict[str, tuple[str, ...]]]) -> None:
        self.devices = {
            device: [form for kind, values in kinds.items() for value in values for form in forms_of(kind, value)]
            for device, kinds in seeds.items()
        }
        self.kinds = {device: tuple(sorted(kinds)) for device, kinds in seeds.items()}
        # every device's forms: what findings and logs mask, whichever device sent the request
        self.all_forms = list({form.needle: form for forms in self.devices.values() for form in forms}.values())

    def __bool__(self) -> bool:
        return any(self.devices.values())

    def forms_for(self, device: str | None) -> list[Form]:
        forms = list(self.devices.get(ANY_DEVICE, []))
        if device is not None and device != ANY_DEVICE:
            forms += self.devices.get(device, [])
        return forms


def find(forms: list[Form], texts: Iterable[tuple[str, str, str]]) -> list[Hit]:
    """Every (kind, encoding, field) where a form occurs; `texts` are (field path, outer encoding, text).

    One hit per kind and field: a SHA-256 found also as its upper-case spelling is one finding item.
    """
    hits: dict[tuple[str, str], Hit] = {}
    for _ in find_steps(forms, list(texts), hits):
        pass
    return list(hits.values())


def find_steps(forms: list[Form], items: list[tuple[str, str, str]], hits: dict[tuple[str, str], Hit]) -> Iterator[None]:
    """`find` into `hits` (kept across calls, so a message is searched batch by batch), a `None` after each
    search over the batch: one C-speed substring search per form over the joined batch, then per field only
    for the forms present. A kind already found in every field of the batch is not searched for again."""
    if not forms or not items:
        return
    if hits:
        paths = {path for path, _, _ in items}
        wanted = [f for f in forms if any((f.kind, path) not in hits for path in paths)]
        if not wanted:
            return
    else:
        wanted = forms
    joined = "\0".join(text for _, _, text in items)
    big = len(joined) > STEP  # small batches are searched at once: a step per form would cost more than the search
    if big:
        yield None
    joined_folded = joined.lower() if any(f.folded for f in wanted) else joined
    present = []
    for form in wanted:
        if form.needle in (joined_folded if form.folded else joined):
            present.append(form)
        if big:
            yield None
    for path, outer, text in items if present else ():
        folded = joined_folded if len(items) == 1 else text.lower() if any(f.folded for f in present) else text
        for form in present:
            if (form.kind, path) in hits:
                continue
            if form.needle in (folded if form.folded else text):
                encoding = form.encoding if not outer else f"{outer}+{form.encoding}"
                hits[(form.kind, path)] = Hit(form.kind, encoding, path, len(form.needle))
        if big:
            yield None


STEP = 1 << 16  # characters searched at once before `find_steps` yields


def mask(text: str, forms: list[Form], replacement: str = "[REDACTED]") -> str:
    """`text` with every form of every seeded value replaced: for URLs and names a finding shows."""
    for form in forms:
        if form.folded:
            if form.needle in text.lower():
                text = re.sub(re.escape(form.needle), replacement, text, flags=re.IGNORECASE)
        elif form.needle in text:
            text = text.replace(form.needle, replacement)
    return text
