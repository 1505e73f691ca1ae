"""Android: the Network Security Config (source or compiled), the manifest's defaults, and APKs.

Semantics follow the platform (frameworks/base/core/java/android/security/net/config
and developer.android.com/privacy-and-security/security-config):

- defaults for the target SDK: cleartext permitted below API 28; user-installed
  CAs trusted up to API 23. With an NSC present, the manifest's
  `usesCleartextTraffic` is ignored (API 24+); without one it decides cleartext.
- a `<domain-config>` inherits what it does not set (cleartext, trust anchors,
  pin set) from the enclosing `<domain-config>`, then `<base-config>`, then
  the defaults; the most specific `<domain>` wins (exact before
  `includeSubdomains`, longer before shorter), which is how tlsgate's own
  host patterns match.
- `<pin-set expiration>`: from that date the pins are no longer enforced.
- `<certificates overridePins="true">`: chains to those CAs skip the pins;
  `src="user"` with it means a user-installed CA (tlsgate's) bypasses pinning.
- `<debug-overrides>` trust anchors join every configuration, in debuggable builds only.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import struct
from pathlib import Path

from tlsgate.apps.axml import Element, parse_axml, resolve_file_reference
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
    build_of,
    clip,
    host_name,
    host_patterns,
    short,
)
from tlsgate.apps.xmltext import parse_xml_text
from tlsgate.apps.ziparchive import Archive, Entry
from tlsgate.tls.pins import PinError, parse_pin

CLEARTEXT_DEFAULT_OFF_SDK = 28  # Android 9: cleartext off by default
USER_CA_DEFAULT_OFF_SDK = 24  # Android 7: user CAs no longer trusted by default
PINS_SOON_DAYS = 30  # as the conformance check's pins_expire_soon
NSC_TAGS = ("base-config", "domain-config", "debug-overrides")
DOMAIN_CONFIG_TAGS = ("domain", "trust-anchors", "pin-set", "domain-config")
UNEXPRESSIBLE = {
    "hstsEnforced": "tlsgate does not check HSTS; hstsEnforced is not held to",
}


def parse_any_xml(data: bytes, name: str) -> Element:
    """Compiled (from an APK) or text (from a source tree): the caller need not know which."""
    if data[:2] == b"\x03\x00":
        try:
            return parse_axml(data)
        except AppFormatError as exc:
            raise AppFormatError(f"{name}: {exc}") from None
        except (IndexError, struct.error, UnicodeError) as exc:
            raise AppFormatError(f"{name}: malformed binary XML ({type(exc).__name__})") from None
    element = parse_xml_text(data, name)
    assert element is not None
    return element


# -- the manifest ---------------------------------------------------------------------------------


class Manifest:
    """What the manifest says that changes the NSC's meaning."""

    def __init__(self, root: Element | None, name: str) -> None:
        self.name = name
        root = root or Element("manifest", {}, None)
        if root.tag != "manifest":
            raise AppFormatError(f"{name}: root element is <{clip(root.tag)}>, not <manifest>")
        self.line = root.line
        declared = root.attrs.get("package", "")
        self.package = app_identifier(declared) or ""
        self.warnings: list[Warning_] = []
        if declared and not self.package:
            self.warnings.append(
                Warning_(
                    Origin(name, root.line, "<manifest package>"),
                    f"package={short(declared)} is not a package name; the policy names the app without it",
                )
            )
        sdk = root.find("uses-sdk")
        app = root.find("application")
        self.sdk_line = sdk.line if sdk else None
        self.app_line = app.line if app else None
        target = sdk.attrs.get("targetSdkVersion") if sdk else None
        minimum = sdk.attrs.get("minSdkVersion") if sdk else None
        self.target_sdk = _int(target) or _int(minimum) or 1  # as PackageParser: target defaults to min, min to 1
        self.target_explicit = target is not None
        attrs = app.attrs if app else {}
        self.nsc_ref = attrs.get("networkSecurityConfig")
        self.uses_cleartext = attrs.get("usesCleartextTraffic")
        self.debuggable = attrs.get("debuggable") == "true"
        self.sandbox = _int(attrs.get("targetSandboxVersion", "") or root.attrs.get("targetSandboxVersion", ""))

    def origin(self, element: str, line: int | None = None) -> Origin:
        return Origin(self.name, line, element)


def _int(text: str | None) -> int | None:
    if text is None or len(text) > 16:  # Android reads 32-bit integers; longer text is none (and would not print)
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


# -- the NSC --------------------------------------------------------------------------------------


class _Anchors:
    """A trust-anchors element: which sources, and which of them override pins."""

    def __init__(self, sources: dict[str, bool], origin: Origin) -> None:
        self.sources = sources  # src -> overridePins
        self.origin = origin

    def merged(self, extra: _Anchors | None) -> _Anchors:
        if extra is None:
            return self
        sources = dict(self.sources)
        for src, override in extra.sources.items():
            sources[src] = sources.get(src, False) or override
        return _Anchors(sources, Origin(self.origin.file, self.origin.line, f"{self.origin.element} + {extra.origin.element}"))


class NscReader:
    def __init__(self, root: Element, name: str, manifest: Manifest, build: str, today: dt.date) -> None:
        self.name = name
        self.manifest = manifest
        self.build = build
        self.today = today
        self.warnings: list[Warning_] = []
        self.domains: list[Declared] = []
        self.seen: dict[str, Origin] = {}
        self.pin_count = 0
        if root.tag != "network-security-config":
            raise AppFormatError(f"{name}: root element is <{clip(root.tag)}>, not <network-security-config>")
        self.root = root

    def origin(self, element: Element, shown: str | None = None) -> Origin:
        return Origin(self.name, element.line, shown or f"<{clip(element.tag)}>")

    def warn(self, element: Element, message: str) -> None:
        self.warnings.append(Warning_(self.origin(element), message))

    def read(self) -> Declared:
        sdk = self.manifest.target_sdk
        default = self.manifest.origin(f"platform default for targetSdkVersion {sdk}", self.manifest.sdk_line)
        cleartext = (sdk < CLEARTEXT_DEFAULT_OFF_SDK, default)
        if self.manifest.sandbox and self.manifest.sandbox > 1:
            cleartext = (False, self.manifest.origin(f'targetSandboxVersion="{self.manifest.sandbox}"'))
        if self.manifest.uses_cleartext is not None:
            self.warnings.append(
                Warning_(
                    self.manifest.origin(
                        f'<application usesCleartextTraffic="{clip(self.manifest.uses_cleartext)}">', self.manifest.app_line
                    ),
                    "ignored: with a network security config Android 7+ takes cleartext from the config and the target SDK",
                )
            )
        anchors = _Anchors({"system": False, **({"user": False} if sdk < USER_CA_DEFAULT_OFF_SDK else {})}, default)
        debug = None
        for child in self.root.children:
            if child.tag not in NSC_TAGS:
                self.warn(child, f"unknown element <{clip(child.tag)}> in <network-security-config>; not read")
        for element in [c for c in self.root.children if c.tag == "debug-overrides"][:1]:
            found = element.find("trust-anchors")
            if found is not None:
                debug = self._anchors(found)
            if self.build != "debug":
                self.warn(
                    element, "debug-overrides apply to debuggable builds only; this build is release, so they are not in force"
                )
                debug = None
        base_elements = [c for c in self.root.children if c.tag == "base-config"]
        for extra in base_elements[1:]:
            self.warn(extra, "a second <base-config>; Android refuses such a config")
        base_element = base_elements[0] if base_elements else None
        base_origin = self.origin(base_element) if base_element else default
        if base_element is not None:
            cleartext = self._cleartext(base_element, cleartext)
            for child in base_element.children:
                if child.tag == "trust-anchors":
                    anchors = self._anchors(child)
                else:
                    self.warn(child, f"<{clip(child.tag)}> is not allowed in <base-config>; Android refuses such a config")
        base = self._declared([], base_origin, cleartext, anchors.merged(debug), None)
        for element in self.root.children:
            if element.tag == "domain-config":
                self._domain_config(element, cleartext, anchors, None, debug, depth=0)
        return base

    def _cleartext(self, element: Element, inherited: tuple[bool, Origin]) -> tuple[bool, Origin]:
        value = element.attrs.get("cleartextTrafficPermitted")
        for attr, why in UNEXPRESSIBLE.items():
            if attr in element.attrs:
                self.warn(element, why)
        if value is None:
            return inherited
        if value not in ("true", "false"):
            self.warn(element, f"cleartextTrafficPermitted={short(value)} is not true or false; Android refuses such a config")
            return inherited
        return value == "true", self.origin(element, f'<{element.tag} cleartextTrafficPermitted="{value}">')

    def _anchors(self, element: Element) -> _Anchors:
        sources: dict[str, bool] = {}
        for cert in element.children:
            if cert.tag != "certificates":
                self.warn(cert, f"unknown element <{clip(cert.tag)}> in <trust-anchors>")
                continue
            src = cert.attrs.get("src", "")
            override = cert.attrs.get("overridePins") == "true"
            if src not in ("system", "user"):
                self.warn(
                    cert,
                    f"the app trusts its own CA certificates (src={short(src)}); tlsgate validates upstream servers "
                    "against the system roots and --upstream-ca: pass that CA with --upstream-ca to validate as the app does",
                )
                src = f"bundled:{clip(src)}"
            sources[src] = sources.get(src, False) or override
        return _Anchors(sources, self.origin(element))

    def _pins(self, element: Element) -> PinDeclaration | None:
        expires = None
        text = element.attrs.get("expiration")
        if text is not None:
            try:
                expires = dt.date.fromisoformat(text)
            except ValueError:
                self.warn(element, f"expiration={short(text)} is not yyyy-MM-dd; Android refuses such a config")
                return None
        pins, origins = [], []
        for pin in element.children:
            if pin.tag != "pin":
                self.warn(pin, f"unknown element <{clip(pin.tag)}> in <pin-set>")
                continue
            if pin.attrs.get("digest") != "SHA-256":
                self.warn(pin, f"pin digest {short(pin.attrs.get('digest', ''))}: Android accepts only SHA-256; pin not read")
                continue
            value = "sha256/" + pin.text.strip()
            try:
                if len(value) > 100:  # a SHA-256 pin is 51 characters; PinError would quote all of it
                    raise PinError(f"pin {short(value)} is {len(value)} characters long, not a SHA-256 pin")
                parse_pin(value)
            except PinError as exc:
                self.warn(pin, f"{exc}; pin not read")
                continue
            pins.append(value)
            origins.append(self.origin(pin, '<pin digest="SHA-256">'))
        if not pins:
            self.warn(element, "a <pin-set> without usable pins pins nothing")
            return None
        self.pin_count += 1
        shown = f'<pin-set expiration="{text}">' if text else "<pin-set>"
        return PinDeclaration(pins, ["any"] * len(pins), self.origin(element, shown), expires, origins)

    def _domain_config(
        self,
        element: Element,
        cleartext: tuple[bool, Origin],
        anchors: _Anchors,
        pins: PinDeclaration | None,
        debug: _Anchors | None,
        depth: int,
    ) -> None:
        if depth > 16:
            self.warn(element, "domain-config nested too deeply; not read")
            return
        cleartext = self._cleartext(element, cleartext)
        hosts: list[str] = []
        named: list[Origin] = []
        for child in element.children:
            if child.tag == "domain":
                found = self._domain(child)
                hosts += found
                if found:
                    include = child.attrs.get("includeSubdomains") == "true"
                    shown = '<domain includeSubdomains="true">' if include else "<domain>"
                    named.append(self.origin(child, shown))
            elif child.tag == "trust-anchors":
                anchors = self._anchors(child)
            elif child.tag == "pin-set":
                pins = self._pins(child) or pins
            elif child.tag != "domain-config":
                self.warn(child, f"unknown element <{clip(child.tag)}> in <domain-config>; not read")
        if not any(c.tag == "domain" for c in element.children):
            self.warn(element, "a <domain-config> needs at least one <domain>; Android refuses such a config")
        if hosts:
            declared = self._declared(hosts, self.origin(element), cleartext, anchors.merged(debug), pins)
            declared.host_origins = named
            self.domains.append(declared)
        for child in element.children:
            if child.tag == "domain-config":
                self._domain_config(child, cleartext, anchors, pins, debug, depth + 1)

    def _domain(self, element: Element) -> list[str]:
        name = host_name(element.text)
        include = element.attrs.get("includeSubdomains") == "true"
        if name is None:
            self.warn(element, f"domain {short(element.text.strip())} is not a host name (NSC takes no wildcards); not read")
            return []
        patterns = host_patterns(name, include)
        if len(self.seen) + len(patterns) > MAX_DOMAINS:
            raise AppFormatError(
                f"{self.origin(element)}: more than {MAX_DOMAINS} domains; tlsgate writes at most {MAX_DOMAINS} host "
                "patterns per app (a real config names tens)"
            )
        out = []
        for pattern in patterns:
            if pattern in self.seen:
                self.warn(element, f"{pattern} is already configured at {self.seen[pattern]}; Android refuses duplicate domains")
                continue
            self.seen[pattern] = self.origin(element)
            out.append(pattern)
        return out

    def _declared(
        self, hosts: list[str], origin: Origin, cleartext: tuple[bool, Origin], anchors: _Anchors, pins: PinDeclaration | None
    ) -> Declared:
        declared = Declared(hosts, origin)
        declared.values["cleartext"] = ("permit" if cleartext[0] else "forbid", cleartext[1])
        user = "user" in anchors.sources
        declared.values["user_cas"] = ("trusted" if user else "untrusted", anchors.origin)
        if pins is not None:
            overriding = sorted(src for src, override in anchors.sources.items() if override)
            if "system" in overriding:
                declared.notes.append(
                    f'{pins.origin} is overridden for system CAs ({anchors.origin} overridePins="true"): public '
                    "servers are never pin-checked, so tlsgate does not hold the app to these pins"
                )
                self.warnings.append(Warning_(pins.origin, declared.notes[-1]))
                return declared
            declared.pins = pins
            declared.values["pins"] = (True, pins.origin)
            if "user" in overriding:
                note = (
                    f'user CAs override these pins ({anchors.origin} overridePins="true"): a CA installed on the '
                    "device (tlsgate's) is accepted without pin checks, so pinning is not asserted (must_pin: false)"
                )
                declared.notes.append(note)
                self.warnings.append(Warning_(pins.origin, note))
                declared.values["must_pin"] = (False, anchors.origin)
            else:
                declared.values["must_pin"] = (True, pins.origin)
            if pins.expires is not None and pins.expires <= self.today:
                self.warnings.append(Warning_(pins.origin, f"expired on {pins.expires}: Android no longer enforces these pins"))
            elif pins.expires is not None and (pins.expires - self.today).days <= PINS_SOON_DAYS:
                days = (pins.expires - self.today).days
                self.warnings.append(Warning_(pins.origin, f"expires in {days} day(s): ship new pins before {pins.expires}"))
        if user and self.build == "release" and hosts:
            self.warnings.append(Warning_(anchors.origin, f"this release build trusts user-installed CAs for {hosts[0]}"))
        return declared


def read_nsc(data: bytes, name: str, manifest: Manifest, build: str | None = None, today: dt.date | None = None) -> AppConfig:
    kind = build_of(build, manifest.debuggable)
    reader = NscReader(parse_any_xml(data, name), name, manifest, kind, today or dt.date.today())
    base = reader.read()
    facts = [
        f"package {manifest.package or '(unknown)'}, targetSdkVersion {manifest.target_sdk}"
        + ("" if manifest.target_explicit else " (not declared: defaults apply)"),
        f"{kind} build" + (" (android:debuggable)" if manifest.debuggable else ""),
    ]
    if base.values.get("user_cas", ("",))[0] == "trusted" and kind == "release":
        reader.warnings.append(Warning_(base.values["user_cas"][1], "this release build trusts user-installed CAs"))
    app_id = manifest.package or app_identifier(Path(name).stem) or "app"
    warnings = manifest.warnings + reader.warnings
    return AppConfig("android", app_id, kind, [manifest.name, name], base, reader.domains, warnings, facts)


def no_nsc(manifest: Manifest, build: str | None = None) -> AppConfig:
    """An app without a network security config: the manifest and target SDK decide everything."""
    kind = build_of(build, manifest.debuggable)
    sdk = manifest.target_sdk
    default = manifest.origin(f"platform default for targetSdkVersion {sdk}", manifest.sdk_line)
    if manifest.uses_cleartext is not None:
        shown = f'<application usesCleartextTraffic="{clip(manifest.uses_cleartext)}">'
        cleartext = (manifest.uses_cleartext == "true", manifest.origin(shown, manifest.app_line))
    else:
        cleartext = (sdk < CLEARTEXT_DEFAULT_OFF_SDK, default)
    base = Declared([], default)
    base.values["cleartext"] = ("permit" if cleartext[0] else "forbid", cleartext[1])
    base.values["user_cas"] = ("trusted" if sdk < USER_CA_DEFAULT_OFF_SDK else "untrusted", default)
    warnings = [
        *manifest.warnings,
        Warning_(manifest.origin("<application>", manifest.app_line), "no networkSecurityConfig: platform defaults apply"),
    ]
    facts = [f"package {manifest.package or '(unknown)'}, targetSdkVersion {sdk}", f"{kind} build"]
    return AppConfig("android", manifest.package or "app", kind, [manifest.name], base, [], warnings, facts)


APK_ENTRIES = (b"AndroidManifest.xml", b"resources.arsc")
_PLAIN_PATH = re.compile(r"^(?:[A-Za-z0-9_+@=,.~-]+/)*[A-Za-z0-9_+@=,.~-]+$")


def read_apk(path: Path, build: str | None = None, today: dt.date | None = None) -> AppConfig:
    """An APK: the compiled manifest, `android:networkSecurityConfig` resolved through resources.arsc, the compiled NSC."""
    with Archive.open(path) as apk:
        return read_apk_archive(apk, {e.raw: e for e in apk.scan(APK_ENTRIES.__contains__)}, build, today)


def read_apk_archive(apk: Archive, entries: dict[bytes, Entry], build: str | None, today: dt.date | None) -> AppConfig:
    """An APK whose directory was scanned once: `entries` holds its manifest and resource table, when present."""
    try:
        return _read_apk(apk, entries, build, today)
    except AppFormatError as exc:
        message = str(exc)
        raise (exc if message.startswith(f"{apk.label}: ") else apk.error(message)) from None


def _read_apk(apk: Archive, entries: dict[bytes, Entry], build: str | None, today: dt.date | None) -> AppConfig:
    def read(name: bytes) -> bytes:
        entry = entries.get(name)
        if entry is None:
            raise apk.error(f"no {name.decode()}")
        return apk.read(entry)

    manifest = Manifest(parse_any_xml(read(b"AndroidManifest.xml"), "AndroidManifest.xml"), "AndroidManifest.xml")
    ref = manifest.nsc_ref
    if ref is None:
        return no_nsc(manifest, build)
    if not ref.startswith("@0x"):
        raise apk.error(f"AndroidManifest.xml: android:networkSecurityConfig={short(ref)} is not a resource reference")
    table = read(b"resources.arsc")
    try:
        files = resolve_file_reference(table, int(ref[1:], 16))
    except AppFormatError as exc:
        raise apk.error(f"resources.arsc: {exc}") from None
    except (IndexError, struct.error, UnicodeError) as exc:
        raise apk.error(f"resources.arsc: malformed ({type(exc).__name__})") from None
    del table
    if not files:
        raise apk.error(f"resource {ref[1:]} (android:networkSecurityConfig) is not in resources.arsc")
    target = files[0]
    if len(target) > 4096 or not _PLAIN_PATH.fullmatch(target) or any(part in (".", "..") for part in target.split("/")):
        raise apk.error(f"resources.arsc names {short(target)} as the network security config: not a plain path inside the APK")
    entry = apk.find(target)
    if entry is None:
        raise apk.error(f"no {target} (android:networkSecurityConfig, by resources.arsc)")
    config = read_nsc(apk.read(entry), target, manifest, build, today)
    variants = sorted({clip(f, 200) for f in files})
    if len(variants) > 1:
        shown = ", ".join(variants[:5]) + (f" and {len(variants) - 5} more" if len(variants) > 5 else "")
        config.warnings.append(
            Warning_(
                Origin(target, None, "<network-security-config>"),
                f"the app has {len(variants)} variants of this config by device configuration ({shown}); "
                "tlsgate read the first, the default",
            )
        )
    config.files = [apk.label, "AndroidManifest.xml", target]
    return config


def read_source(
    nsc: Path, manifest_path: Path | None, build: str | None, today: dt.date | None, target_sdk: int | None = None
) -> AppConfig:
    """A source tree's NSC XML, with its AndroidManifest.xml when given; without one the target SDK must be given."""
    manifest_root = parse_any_xml(read_file(manifest_path), str(manifest_path)) if manifest_path else None
    manifest = Manifest(manifest_root, str(manifest_path) if manifest_path else "AndroidManifest.xml (not given)")
    if target_sdk is not None:
        manifest.target_sdk, manifest.target_explicit = target_sdk, True
    elif manifest_path is None:
        raise AppFormatError(
            f"{nsc}: the defaults depend on the app's targetSdkVersion: give --manifest AndroidManifest.xml or --target-sdk N"
        )
    return read_nsc(read_file(nsc), str(nsc), manifest, build, today)


def nsc_beside_manifest(manifest: Manifest, manifest_path: Path) -> Path | None:
    """`@xml/name` in a source manifest -> res/xml/name.xml next to it (the Gradle layout src/main/)."""
    ref = manifest.nsc_ref
    if not ref or not ref.startswith("@xml/"):
        return None
    return manifest_path.parent / "res" / "xml" / posixpath.basename(ref[len("@xml/") :] + ".xml")
