"""iOS: App Transport Security (`NSAppTransportSecurity`) from an Info.plist (XML or binary) or an IPA.

Semantics follow Apple's Information Property List reference:

- ATS defaults for every host: HTTPS only, TLS 1.2 or newer, forward-secret suites.
- `NSAllowsArbitraryLoads` turns ATS off for every host *not* in
  `NSExceptionDomains`; listed domains keep the defaults plus their own
  exceptions. From iOS 10 it is ignored (treated as NO) when
  `NSAllowsArbitraryLoadsForMedia`, `...InWebContent` or `NSAllowsLocalNetworking`
  is present.
- exception domains: `NSIncludesSubdomains`, `NSExceptionAllowsInsecureHTTPLoads`,
  `NSExceptionMinimumTLSVersion`, `NSExceptionRequiresForwardSecrecy` (default
  YES), `NSRequiresCertificateTransparency`, and their `NSThirdParty...` twins.
- `NSPinnedDomains` (iOS 14): `NSPinnedCAIdentities` must match a CA above the
  leaf, `NSPinnedLeafIdentities` the leaf; when both are given, both must match.

Plist has no line numbers in its binary form, so an origin is the key path
(`NSAppTransportSecurity.NSExceptionDomains["api.example.com"].NSIncludesSubdomains`).
"""

from __future__ import annotations

import base64
import binascii
import plistlib
import struct
from pathlib import Path
from typing import Any
from xml.parsers import expat

from tlsgate.apps.files import read_file
from tlsgate.apps.model import (
    MAX_DOMAINS,
    AppConfig,
    AppFormatError,
    Declared,
    Origin,
    PinDeclaration,
    Warning_,
    app_identifier,
    clip,
    host_name,
    host_patterns,
    short,
)
from tlsgate.apps.xmltext import parse_xml_text
from tlsgate.apps.ziparchive import Archive, Entry

ATS = "NSAppTransportSecurity"
VERSIONS = {"TLSv1.0": "1.0", "TLSv1.1": "1.1", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}
ARBITRARY_OVERRIDES = ("NSAllowsArbitraryLoadsForMedia", "NSAllowsArbitraryLoadsInWebContent", "NSAllowsLocalNetworking")
EXCEPTION_KEYS = {
    "NSIncludesSubdomains",
    "NSExceptionAllowsInsecureHTTPLoads",
    "NSThirdPartyExceptionAllowsInsecureHTTPLoads",
    "NSExceptionMinimumTLSVersion",
    "NSThirdPartyExceptionMinimumTLSVersion",
    "NSExceptionRequiresForwardSecrecy",
    "NSThirdPartyExceptionRequiresForwardSecrecy",
    "NSRequiresCertificateTransparency",
}
PINNED_KEYS = {"NSIncludesSubdomains", "NSPinnedCAIdentities", "NSPinnedLeafIdentities"}
TOP_KEYS = {"NSAllowsArbitraryLoads", *ARBITRARY_OVERRIDES, "NSExceptionDomains", "NSPinnedDomains"}
MAX_PLIST = 8 << 20  # bytes; a real Info.plist is a few KiB to a few hundred
MAX_OBJECTS = 1 << 20  # plist objects (XML elements, binary objects); a real Info.plist has hundreds to thousands
MAX_PLIST_DEPTH = 128  # XML nesting; a real Info.plist nests under ten deep
MAX_VISITS = 1_000_000  # ATS keys and items read; a binary plist can name one entry from every domain


class _Visits:
    """ATS keys and items read so far: a binary plist shares objects, so one entry of a million keys can be named by
    ten thousand domains, and reading it per domain is quadratic in the file; this bounds it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.left = MAX_VISITS

    def take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise AppFormatError(
                f"{self.name}: NSAppTransportSecurity takes more than {MAX_VISITS} keys and items to read "
                "(entries shared between domains count once per domain); not an app's ATS"
            )


class AtsReader:
    def __init__(self, ats: dict[str, Any], name: str) -> None:
        self.ats = ats
        self.name = name
        self.warnings: list[Warning_] = []
        self.visits = _Visits(name)

    def at(self, *path: str) -> Origin:
        shown = ATS + "".join(f'["{clip(p)}"]' if "." in p or not p.startswith("NS") else f".{clip(p)}" for p in map(_key, path))
        return Origin(self.name, None, shown)

    def warn(self, origin: Origin, message: str) -> None:
        self.warnings.append(Warning_(origin, message))

    def flag(self, table: dict[str, Any], key: str, *path: str) -> bool | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.warn(self.at(*path, key), f"{key} must be a Boolean, not {type(value).__name__}; ATS ignores it")
            return None
        return value

    def read(self) -> tuple[Declared, list[Declared]]:
        self.visits.take(len(self.ats))
        for key in self.ats:
            if key not in TOP_KEYS:
                self.warn(self.at(key), f"unknown ATS key {clip(_key(key))}; not read")
        arbitrary = bool(self.flag(self.ats, "NSAllowsArbitraryLoads"))
        overrides = [k for k in ARBITRARY_OVERRIDES if k in self.ats]
        if arbitrary and overrides:
            self.warn(
                self.at("NSAllowsArbitraryLoads"),
                f"ignored since iOS 10 because {', '.join(overrides)} is present: ATS stays on for every host",
            )
            arbitrary = False
        for key in ("NSAllowsArbitraryLoadsForMedia", "NSAllowsArbitraryLoadsInWebContent"):
            if self.flag(self.ats, key):
                self.warn(
                    self.at(key),
                    "tlsgate cannot tell media or web-view loads from the app's own: cleartext it sees from them is "
                    "still reported as cleartext_forbidden where the app otherwise forbids it",
                )
        if self.flag(self.ats, "NSAllowsLocalNetworking"):
            self.warn(
                self.at("NSAllowsLocalNetworking"),
                "loads to unqualified names, .local and IP addresses are exempt from ATS; tlsgate holds only named hosts",
            )
        if arbitrary:
            origin = self.at("NSAllowsArbitraryLoads")
            base = Declared([], origin)
            base.values["cleartext"] = ("permit", origin)
            self.warn(origin, "ATS is off for every host not listed in NSExceptionDomains")
        else:
            origin = Origin(self.name, None, "ATS defaults (NSAllowsArbitraryLoads absent or NO)")
            base = self._defaults(origin)
        return base, self._domains(base)

    def _defaults(self, origin: Origin) -> Declared:
        declared = Declared([], origin)
        declared.values["cleartext"] = ("forbid", origin)
        declared.values["min_version"] = ("1.2", origin)
        declared.values["forward_secrecy"] = (True, origin)
        return declared

    def _table(self, key: str) -> dict[str, dict[str, Any]]:
        value = self.ats.get(key, {})
        if not isinstance(value, dict):
            self.warn(self.at(key), f"{key} must be a dictionary; not read")
            return {}
        self.visits.take(len(value))
        out = {}
        for domain, entry in value.items():
            if not isinstance(domain, str):
                self.warn(self.at(key, _key(domain)), "a key that is not a string; not read")
                continue
            if not isinstance(entry, dict):
                self.warn(self.at(key, domain), "must be a dictionary; not read")
                continue
            name = host_name(domain)
            if name is None:
                self.warn(self.at(key, short(domain)), "not a host name (ATS takes no wildcards); not read")
                continue
            if name != domain:
                self.warn(self.at(key, domain), f"ATS expects lower-case names without a trailing dot; read as {name}")
            out[name] = entry
        return out

    def _domains(self, base: Declared) -> list[Declared]:
        exceptions = self._table("NSExceptionDomains")
        pinned = self._table("NSPinnedDomains")
        patterns: dict[str, None] = {}  # ordered and O(1) to test: a list's `in` made 100,000 domains quadratic
        for table in (exceptions, pinned):
            for name, entry in table.items():
                for pattern in host_patterns(name, entry.get("NSIncludesSubdomains") is True):
                    patterns[pattern] = None
        if len(patterns) > MAX_DOMAINS:
            raise AppFormatError(
                f"{self.name}: NSAppTransportSecurity names {len(patterns)} host patterns; tlsgate writes at most "
                f"{MAX_DOMAINS} per app (a real app names tens)"
            )
        groups: dict[tuple[str | None, str | None], list[str]] = {}
        for pattern in patterns:
            key = (_governing(exceptions, pattern), _governing(pinned, pattern))
            groups.setdefault(key, []).append(pattern)
        pin_cache: dict[str, PinDeclaration | None] = {}
        out = []
        for (exception, pin), hosts in groups.items():
            if exception is None and pin is None:
                continue
            declared = self._exception(exception, exceptions[exception]) if exception else self._inherit(base)
            if pin is not None:
                if pin not in pin_cache:
                    pin_cache[pin] = self._pins(pin, pinned[pin])
                pins = pin_cache[pin]
                if pins is not None:
                    declared.pins = pins
                    declared.values["pins"] = (True, pins.origin)
                    declared.values["must_pin"] = (True, pins.origin)
                if exception is None:
                    declared.origin = self.at("NSPinnedDomains", pin)
            declared.hosts = hosts
            declared.host_origins = [
                self.at(table, name) for table, name in (("NSExceptionDomains", exception), ("NSPinnedDomains", pin)) if name
            ]
            out.append(declared)
        return out

    def _inherit(self, base: Declared) -> Declared:
        return Declared([], base.origin, dict(base.values))

    def _exception(self, name: str, entry: dict[str, Any]) -> Declared:
        path = ("NSExceptionDomains", name)
        self.visits.take(len(entry))
        for key in entry:
            if key not in EXCEPTION_KEYS:
                self.warn(self.at(*path, _key(key)), f"unknown exception-domain key {clip(_key(key))}; not read")
        declared = self._defaults(Origin(self.name, None, f"{self.at(*path).element} (ATS defaults where it sets nothing)"))
        declared.origin = self.at(*path)
        for key in ("NSExceptionAllowsInsecureHTTPLoads", "NSThirdPartyExceptionAllowsInsecureHTTPLoads"):
            if self.flag(entry, key, *path):
                declared.values["cleartext"] = ("permit", self.at(*path, key))
        for key in ("NSExceptionMinimumTLSVersion", "NSThirdPartyExceptionMinimumTLSVersion"):
            if key in entry:
                version = VERSIONS.get(entry[key]) if isinstance(entry[key], str) else None
                if version is None:
                    self.warn(self.at(*path, key), f"{_shown(entry[key])} is not one of {', '.join(VERSIONS)}; ATS keeps TLS 1.2")
                else:
                    declared.values["min_version"] = (version, self.at(*path, key))
        for key in ("NSExceptionRequiresForwardSecrecy", "NSThirdPartyExceptionRequiresForwardSecrecy"):
            value = self.flag(entry, key, *path)
            if value is not None:
                declared.values["forward_secrecy"] = (value, self.at(*path, key))
        if self.flag(entry, "NSRequiresCertificateTransparency", *path):
            self.warn(
                self.at(*path, "NSRequiresCertificateTransparency"),
                "tlsgate does not check certificate transparency (SCTs); this requirement is not held to",
            )
        return declared

    def _pins(self, name: str, entry: dict[str, Any]) -> PinDeclaration | None:
        path = ("NSPinnedDomains", name)
        self.visits.take(len(entry))
        for key in entry:
            if key not in PINNED_KEYS:
                self.warn(self.at(*path, _key(key)), f"unknown pinned-domain key {clip(_key(key))}; not read")
        pins: list[str] = []
        scopes: list[Any] = []
        origins: list[Origin] = []
        for key, scope in (("NSPinnedLeafIdentities", "leaf"), ("NSPinnedCAIdentities", "ca")):
            if key not in entry:
                continue
            items = entry[key] if isinstance(entry[key], list) else None
            self.visits.take(len(items or []))
            read = [pin for i, item in enumerate(items or []) if (pin := self._spki(item, (*path, key, str(i))))]
            if not read:
                self.warn(
                    self.at(*path, key), "no usable SPKI-SHA256-BASE64 identities: ATS refuses every connection to this domain"
                )
                return None
            pins += read
            scopes += [scope] * len(read)
            origins += [self.at(*path, key)] * len(read)
        if not pins:
            self.warn(self.at(*path), "needs NSPinnedCAIdentities or NSPinnedLeafIdentities; not read")
            return None
        return PinDeclaration(pins, scopes, self.at(*path), None, origins)

    def _spki(self, item: Any, path: tuple[str, ...]) -> str | None:
        value = item.get("SPKI-SHA256-BASE64") if isinstance(item, dict) else None
        try:
            digest = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 32:
            self.warn(self.at(*path), "not a dictionary with a base64 SHA-256 SPKI-SHA256-BASE64; identity not read")
            return None
        return "sha256/" + base64.b64encode(digest).decode("ascii")


def _shown(value: Any) -> str:
    """A plist value in a message: short, whatever the file put there."""
    if isinstance(value, str):
        return short(value, 60)
    return repr(value)[:60] if isinstance(value, int | float | bool) and abs(value) < 1e60 else type(value).__name__


def _key(key: object) -> str:
    """A dictionary key in a message or origin: binary plists allow keys of any scalar type."""
    return key if isinstance(key, str) else f"<{type(key).__name__}>"


def _governing(table: dict[str, dict[str, Any]], pattern: str) -> str | None:
    """The entry ATS applies to the hosts `pattern` stands for: the exact name, else the longest including parent."""
    wildcard = pattern.startswith("*.")
    name = pattern[2:] if wildcard else pattern
    if not wildcard and name in table:
        return name
    labels = name.split(".")
    for i in range(0 if wildcard else 1, len(labels)):
        parent = ".".join(labels[i:])
        if parent in table and table[parent].get("NSIncludesSubdomains") is True:
            return parent
    return None


def read_plist(data: bytes, name: str) -> AppConfig:
    plist = load_plist(data, name)
    if not isinstance(plist, dict):
        raise AppFormatError(f"{name}: the top level is not a dictionary")
    ats = plist.get(ATS)
    reader = AtsReader(ats if isinstance(ats, dict) else {}, name)
    declared = plist.get("CFBundleIdentifier")
    app_id = app_identifier(declared) or "app"
    if declared is not None and app_id != declared:
        shown = short(declared) if isinstance(declared, str) else f"a {type(declared).__name__}"
        reader.warn(
            Origin(name, None, "CFBundleIdentifier"), f"{shown} is not a bundle identifier; the policy calls the app 'app'"
        )
    if ats is None:
        reader.warn(Origin(name, None, ATS), "absent: the ATS defaults apply to every host")
    elif not isinstance(ats, dict):
        reader.warn(Origin(name, None, ATS), "is not a dictionary; the ATS defaults apply")
    base, domains = reader.read()
    fmt = "binary" if data.startswith(b"bplist") else "XML"
    version = plist.get("CFBundleShortVersionString")
    shown_version = f", version {clip(version, 40)}" if isinstance(version, str) else ""
    facts = [f"bundle {app_id} ({fmt} plist){shown_version}"]
    return AppConfig("ios", app_id, "release", [name], base, domains, reader.warnings, facts)


def load_plist(data: bytes, name: str) -> Any:
    """plistlib's reading, after the checks it lacks: an XML plist through the hardened expat pass (located errors,
    no entities, bounded elements and depth), a binary one's trailer, offsets and counts against the file."""
    if data.startswith(b"bplist"):
        _check_binary(data, name)
        fmt = plistlib.FMT_BINARY
    else:
        parse_xml_text(data, name, build=False, doctype="external", max_depth=MAX_PLIST_DEPTH, max_elements=MAX_OBJECTS)
        fmt = plistlib.FMT_XML
    try:
        return plistlib.loads(data, fmt=fmt)
    except RecursionError:
        raise AppFormatError(f"{name}: not a property list: binary plist objects nested too deeply") from None
    except plistlib.InvalidFileException:
        raise AppFormatError(
            f"{name}: not a property list (a malformed object: an offset, reference or count out of range, or text that "
            "does not decode)"
        ) from None
    except (ValueError, OverflowError, TypeError, IndexError, struct.error, LookupError, expat.ExpatError) as exc:
        raise AppFormatError(f"{name}: not a property list ({short(str(exc), 120)})") from None


_TRAILER = struct.Struct(">6xBBQQQ")
_CONTAINERS = {0xA0: 1, 0xB0: 1, 0xC0: 1, 0xD0: 2}  # array, ordset, set: one reference per item; dict: two


def _check_binary(data: bytes, name: str) -> None:
    """What plistlib trusts in a binary plist: the trailer's sizes and the references every container claims.

    plistlib builds a tuple of every container's references before it reads
    them, so the sum of the counts, not the number of objects, bounds memory.
    """
    if len(data) < 8 + _TRAILER.size:
        raise AppFormatError(f"{name}: not a property list: binary plist too short for its trailer")
    offset_size, ref_size, count, top, table = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    where = f"{name}: not a property list: binary plist trailer"
    if not (1 <= offset_size <= 8 and 1 <= ref_size <= 8):
        raise AppFormatError(f"{where}: offset size {offset_size} or reference size {ref_size} is not 1 to 8 bytes")
    if count > MAX_OBJECTS:
        raise AppFormatError(f"{where}: {count} objects, more than the {MAX_OBJECTS} tlsgate reads")
    if top >= count:
        raise AppFormatError(f"{where}: the top object {top} is not one of its {count} objects")
    end = len(data) - _TRAILER.size
    if table < 8 or table + count * offset_size > end:
        raise AppFormatError(f"{where}: the offset table lies outside the file")
    references = 0
    for index in range(count):
        at = table + index * offset_size
        offset = int.from_bytes(data[at : at + offset_size], "big")
        if not 8 <= offset < table:
            raise AppFormatError(f"{name}: not a property list: binary object {index} is at byte {offset}, outside the objects")
        per = _CONTAINERS.get(data[offset] & 0xF0)
        if per is None:
            continue
        size = data[offset] & 0x0F
        if size == 0x0F:
            if offset + 2 > table:
                raise AppFormatError(f"{name}: not a property list: binary object {index} at byte {offset} is cut short")
            width = 1 << (data[offset + 1] & 0x03)
            size = int.from_bytes(data[offset + 2 : offset + 2 + width], "big")
        references += per * size
        if references > 4 * MAX_OBJECTS or offset + per * size * ref_size > table:
            raise AppFormatError(
                f"{name}: not a property list: binary object {index} at byte {offset} claims {size} items: more than "
                f"the file holds or the {4 * MAX_OBJECTS} references tlsgate reads"
            )


def is_app_plist(raw: bytes) -> bool:
    """`Payload/<Name>.app/Info.plist`: the app's own, not a framework's or an extension's deeper down."""
    return raw.startswith(b"Payload/") and raw.endswith(b".app/Info.plist") and raw.count(b"/") == 2


def read_ipa(path: Path) -> AppConfig:
    """An IPA: the app's `Payload/<Name>.app/Info.plist` (not those of frameworks or extensions inside it)."""
    with Archive.open(path) as ipa:
        return read_ipa_archive(ipa, ipa.scan(is_app_plist))


def read_ipa_archive(ipa: Archive, plists: list[Entry]) -> AppConfig:
    if len(plists) != 1:
        raise ipa.error(f"expected one Payload/<Name>.app/Info.plist, found {len(plists)}")
    entry = plists[0]
    try:
        config = read_plist(ipa.read(entry, MAX_PLIST), entry.name)
    except AppFormatError as exc:
        message = str(exc)
        raise (exc if message.startswith(f"{ipa.label}: ") else ipa.error(message)) from None
    config.files = [ipa.label, entry.name]
    return config


def read_plist_file(path: Path) -> AppConfig:
    return read_plist(read_file(path, MAX_PLIST), str(path))
