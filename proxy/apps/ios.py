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
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from proxy.apps.android import read_entry
from proxy.apps.model import MAX_INPUT, AppConfig, AppFormatError, Declared, Origin, PinDeclaration, Warning_, host_name, short

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


class AtsReader:
    def __init__(self, ats: dict[str, Any], name: str) -> None:
        self.ats = ats
        self.name = name
        self.warnings: list[Warning_] = []

    def at(self, *path: str) -> Origin:
        shown = ATS + "".join(f'["{p}"]' if "." in p or not p.startswith("NS") else f".{p}" for p in path)
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
        for key in self.ats:
            if key not in TOP_KEYS:
                self.warn(self.at(key), f"unknown ATS key {key}; not read")
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
        out = {}
        for domain, entry in value.items():
            if not isinstance(entry, dict):
                self.warn(self.at(key, domain), "must be a dictionary; not read")
                continue
            name = host_name(str(domain))
            if name is None:
                self.warn(self.at(key, short(str(domain))), "not a host name (ATS takes no wildcards); not read")
                continue
            if name != domain:
                self.warn(self.at(key, domain), f"ATS expects lower-case names without a trailing dot; read as {name}")
            out[name] = entry
        return out

    def _domains(self, base: Declared) -> list[Declared]:
        exceptions = self._table("NSExceptionDomains")
        pinned = self._table("NSPinnedDomains")
        patterns: list[str] = []
        for table in (exceptions, pinned):
            for name, entry in table.items():
                for pattern in (name, f"*.{name}") if entry.get("NSIncludesSubdomains") is True else (name,):
                    if pattern not in patterns:
                        patterns.append(pattern)
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
        for key in entry:
            if key not in EXCEPTION_KEYS:
                self.warn(self.at(*path, key), f"unknown exception-domain key {key}; not read")
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
        for key in entry:
            if key not in PINNED_KEYS:
                self.warn(self.at(*path, key), f"unknown pinned-domain key {key}; not read")
        pins: list[str] = []
        scopes: list[Any] = []
        origins: list[Origin] = []
        for key, scope in (("NSPinnedLeafIdentities", "leaf"), ("NSPinnedCAIdentities", "ca")):
            if key not in entry:
                continue
            items = entry[key] if isinstance(entry[key], list) else None
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
    return repr(value)[:60] if isinstance(value, str | int | float | bool) else type(value).__name__


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
    try:
        plist = plistlib.loads(data)
    except (plistlib.InvalidFileException, ValueError, OverflowError, TypeError, RecursionError, MemoryError) as exc:
        raise AppFormatError(f"{name}: not a property list ({exc})") from None
    if not isinstance(plist, dict):
        raise AppFormatError(f"{name}: the top level is not a dictionary")
    app_id = str(plist.get("CFBundleIdentifier") or "app")
    ats = plist.get(ATS)
    reader = AtsReader(ats if isinstance(ats, dict) else {}, name)
    if ats is None:
        reader.warn(Origin(name, None, ATS), "absent: the ATS defaults apply to every host")
    elif not isinstance(ats, dict):
        reader.warn(Origin(name, None, ATS), "is not a dictionary; the ATS defaults apply")
    base, domains = reader.read()
    fmt = "binary" if data.startswith(b"bplist") else "XML"
    version = plist.get("CFBundleShortVersionString")
    facts = [f"bundle {app_id} ({fmt} plist)" + (f", version {version}" if isinstance(version, str) else "")]
    return AppConfig("ios", app_id, "release", [name], base, domains, reader.warnings, facts)


def read_ipa(path: Path) -> AppConfig:
    """An IPA: the app's `Payload/<Name>.app/Info.plist` (not those of frameworks or extensions inside it)."""
    try:
        with zipfile.ZipFile(path) as ipa:
            plists = [
                n for n in ipa.namelist() if (p := PurePosixPath(n)).match("Payload/*.app/Info.plist") and len(p.parts) == 3
            ]
            if len(plists) != 1:
                raise AppFormatError(f"{path}: expected one Payload/<Name>.app/Info.plist, found {len(plists)}")
            config = read_plist(read_entry(ipa, plists[0]), plists[0])
            config.files = [str(path), plists[0]]
            return config
    except zipfile.BadZipFile as exc:
        raise AppFormatError(f"{path}: not an IPA (zip): {exc}") from None


def read_plist_file(path: Path) -> AppConfig:
    if path.stat().st_size > MAX_INPUT:
        raise AppFormatError(f"{path}: larger than {MAX_INPUT >> 20} MiB")
    return read_plist(path.read_bytes(), str(path))
