"""`tlsgate import`: an app's own network security declarations -> a tlsgate policy holding it to them.

The policy is in report mode unless asked otherwise: it records where the
app's traffic contradicts what the app declares without changing what the app
sees. Every key carries a comment naming the app's file and element it comes
from, and `declared_at` keeps the same for findings. What tlsgate cannot hold
an app to is printed as a warning and written into the policy's header.
"""

from __future__ import annotations

import argparse
import codecs
import datetime as dt
import json
import re
import sys
from pathlib import Path

from tlsgate.apps import android, ios
from tlsgate.apps.files import open_regular, read_file, read_head
from tlsgate.apps.model import MAX_WARNINGS, AppConfig, AppFormatError, Declared, Origin, Warning_, printable
from tlsgate.apps.ziparchive import Archive, looks_like_zip
from tlsgate.policy import PolicyError, load_texts

# Exit codes, as the README documents them.
EXIT_OK, EXIT_REFUSED, EXIT_INTERNAL = 0, 1, 3  # argparse's usage errors are 2


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "import",
        help="write a policy holding an app to its own network security config (APK, NSC XML, IPA, Info.plist)",
    )
    parser.add_argument(
        "app", metavar="APP", help="app.apk, network_security_config.xml, AndroidManifest.xml, app.ipa or Info.plist"
    )
    parser.add_argument("--out", metavar="PATH", help="write the policy here (default: stdout)")
    parser.add_argument(
        "--mode", choices=("report", "enforce"), default="report", help="mode of the written rules (default report)"
    )
    parser.add_argument("--manifest", metavar="PATH", help="Android: the source AndroidManifest.xml beside an NSC XML file")
    parser.add_argument("--target-sdk", type=int, metavar="N", help="Android: targetSdkVersion, when no manifest says it")
    parser.add_argument("--build", choices=("release", "debug"), help="Android: override android:debuggable (debug-overrides)")
    parser.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    try:
        return _import(args)
    except Exception as exc:  # noqa: BLE001 - the last net: a bug still exits with one clear line, never a traceback
        print(
            printable(f"tlsgate: internal error importing {args.app} ({type(exc).__name__}: {str(exc)[:200]}); a tlsgate bug"),
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _import(args: argparse.Namespace) -> int:
    try:
        config = read_app(Path(args.app), args.manifest, args.target_sdk, args.build)
    except AppFormatError as exc:
        print(printable(f"tlsgate: {exc}"), file=sys.stderr)
        return EXIT_REFUSED
    cap_warnings(config)
    text = render(config, args.mode, dt.date.today(), Path(args.out).name if args.out else "<stdout>")
    try:
        load_texts([("imported", text)])
    except PolicyError as exc:  # a tlsgate bug: never hand out a policy `run` would refuse
        shown = "\n".join(printable(line) for line in str(exc).splitlines())
        print(f"tlsgate: the imported policy does not validate (a tlsgate bug):\n{shown}", file=sys.stderr)
        return EXIT_INTERNAL
    for warning in config.warnings:
        print(printable(f"warning: {warning}"), file=sys.stderr)
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            print(printable(f"tlsgate: {args.out}: cannot write the policy: {exc.strerror or exc}"), file=sys.stderr)
            return EXIT_REFUSED
        print(printable(f"wrote {args.out}: {len(config.domains)} rule(s), {len(config.warnings)} warning(s)"), file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cap_warnings(config: AppConfig) -> None:
    """At most MAX_WARNINGS kept (and printed, and written); the rest counted, so a hostile file cannot flood either."""
    if len(config.warnings) > MAX_WARNINGS:
        rest = len(config.warnings) - MAX_WARNINGS
        config.warnings[MAX_WARNINGS:] = [
            Warning_(Origin(config.files[-1], None, "(import)"), f"{rest} more warning(s) not shown")
        ]


def read_app(path: Path, manifest: str | None, target_sdk: int | None, build: str | None) -> AppConfig:
    """Which reader a file needs, from what it is rather than only its name."""
    stream, size = open_regular(path)  # a device, FIFO or directory (or a link to one) is refused here, unread
    with stream:
        head = read_head(stream, 4096)
        if looks_like_zip(head):
            return _read_archive(Archive(stream, size, str(path)), build)
    sniffed = _sniff(head)
    if head.startswith(b"bplist") or "<plist" in sniffed or "<!DOCTYPE plist" in sniffed:
        return ios.read_plist_file(path)
    if "<manifest" in sniffed:
        found = android.Manifest(android.parse_any_xml(read_file(path), str(path)), str(path))
        nsc = android.nsc_beside_manifest(found, path)
        if nsc is None:
            return android.no_nsc(found, build)
        if target_sdk is not None:
            found.target_sdk, found.target_explicit = target_sdk, True
        return android.read_nsc(read_file(nsc), str(nsc), found, build)
    return android.read_source(path, Path(manifest) if manifest else None, build, None, target_sdk)


def _read_archive(archive: Archive, build: str | None) -> AppConfig:
    """One walk of the directory finds what either platform needs; the archive's content says which it is."""
    payload = False

    def wanted(raw: bytes) -> bool:
        nonlocal payload
        if raw.startswith(b"Payload/"):
            payload = True
            return ios.is_app_plist(raw)
        return raw in android.APK_ENTRIES

    entries = archive.scan(wanted)
    apk = {e.raw: e for e in entries if e.raw in android.APK_ENTRIES}
    if b"AndroidManifest.xml" in apk:
        return android.read_apk_archive(archive, apk, build, None)
    if payload:
        return ios.read_ipa_archive(archive, [e for e in entries if ios.is_app_plist(e.raw)])
    raise archive.error("a zip that is neither an APK (AndroidManifest.xml) nor an IPA (Payload/)")


def _sniff(head: bytes) -> str:
    """The start of a text file as text, whatever its encoding says (UTF-16 plists and manifests exist)."""
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if head.startswith(bom):
            return head[len(bom) :].decode(encoding, "replace")
    if head[:2] in (b"<\x00", b"\x00<"):
        return head.decode("utf-16-le" if head[0] else "utf-16-be", "replace")
    return head.decode("latin-1")


# -- writing ---------------------------------------------------------------------------------------


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are YAML's) of printable text: a policy refuses control characters,
    and these strings (file and element names from the app) may hold any."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    quoted = json.dumps(text, ensure_ascii=False)  # not JSON's \ud83d\ude00 pairs: YAML reads those as two lone surrogates
    return re.sub(r"[^\x00-\x7e]", lambda m: f"\\u{ord(m[0]):04x}" if ord(m[0]) < 0x10000 else f"\\U{ord(m[0]):08x}", quoted)


def _c(text: str, limit: int = 2000) -> str:
    """A comment: one line, printable, bounded."""
    return re.sub(r"[^\x20-\x7e]", "?", text if len(text) <= limit else text[:limit] + "...")


def _name(config: AppConfig, index: int) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", config.app_id).strip("-") or "app"
    return f"{base}-pins-{index}"


def render(config: AppConfig, mode: str, today: dt.date, target: str) -> str:
    lines = [
        f"# tlsgate policy holding {config.platform} app {_c(config.app_id)} to its own declarations",
        f"# read from: {_c(', '.join(config.files))}; {today.isoformat()} by `tlsgate import`",
        *(f"# {_c(fact)}" for fact in config.facts),
        "# Findings of check `conformance` (and `pinning` for must_pin hosts) name the app's file and element.",
        f"# mode: {mode} -- {'findings only, traffic forwarded' if mode == 'report' else 'broken promises are blocked (403)'}.",
    ]
    if config.warnings:
        lines.append("# What tlsgate cannot hold this app to, or that looks wrong (also printed on import):")
        lines += [f"#   {_c(str(w))}" for w in config.warnings]
    lines += ["version: 1", ""]
    pin_names: dict[int, str] = {}
    pinned = [d for d in config.domains if d.pins is not None]
    if pinned:
        lines.append("pin_sets:")
        for declared in pinned:
            assert declared.pins is not None
            if id(declared.pins) in pin_names:
                continue
            name = pin_names[id(declared.pins)] = _name(config, len(pin_names) + 1)
            pins = declared.pins
            lines.append(f"  {name}:  # {_c(str(pins.origin))}")
            scopes = sorted(set(pins.scopes), key=("any", "leaf", "ca").index)
            for scope in scopes:
                lines.append(f"    {'pins' if scope == 'any' else scope}:")
                for pin, scope_of, origin in zip(
                    pins.pins, pins.scopes, pins.pin_origins or [pins.origin] * len(pins.pins), strict=True
                ):
                    if scope_of == scope:
                        lines.append(f"      - {pin}  # {_c(str(origin))}")
            if pins.expires is not None:
                lines.append(f"    expires: {pins.expires.isoformat()}  # expiration=: from this date the app no longer pins")
        lines.append("")
    lines += ["defaults:", f"  mode: {mode}", *_app_block(config, config.base, "  ", None)]
    lines += ["", "rules:" if config.domains else "rules: []"]
    for declared in config.domains:
        lines.append(f"  - name: {_q(f'{config.app_id}: {declared.origin.element}'[:120])}  # {_c(str(declared.origin))}")
        named = "; ".join(str(o) for o in declared.host_origins)
        lines.append(f"    hosts: [{', '.join(_q(h) for h in declared.hosts)}]" + (f"  # {_c(named)}" if named else ""))
        lines.append(f"    mode: {mode}")
        pin_name = pin_names.get(id(declared.pins)) if declared.pins is not None else None
        lines += _app_block(config, declared, "    ", pin_name)
        for note in declared.notes:
            lines.append(f"    # note: {_c(note)}")
    return "\n".join(lines) + "\n"


def _app_block(config: AppConfig, declared: Declared, indent: str, pin_name: str | None) -> list[str]:
    lines = [f"{indent}app:", f"{indent}  source: {_q(str(declared.origin))}", f"{indent}  platform: {config.platform}"]
    if config.platform == "android":
        lines.append(
            f"{indent}  build: {config.build}  # {'android:debuggable' if config.build == 'debug' else 'not debuggable'}"
        )
    declared_at: dict[str, str] = {}
    for key in ("cleartext", "min_version", "forward_secrecy", "user_cas", "must_pin"):
        if key not in declared.values:
            continue
        value, origin = declared.values[key]
        shown = ("true" if value else "false") if isinstance(value, bool) else _q(value) if key == "min_version" else value
        lines.append(f"{indent}  {key}: {shown}  # {_c(str(origin))}")
        declared_at[key] = str(origin)
    if pin_name is not None and declared.pins is not None:
        lines.append(f"{indent}  pins: {pin_name}  # {_c(str(declared.pins.origin))}")
        declared_at["pins"] = str(declared.pins.origin)
    if declared_at:
        lines.append(f"{indent}  declared_at:")
        lines += [f"{indent}    {key}: {_q(where)}" for key, where in declared_at.items()]
    return lines
