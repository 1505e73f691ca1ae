"""Holding an app to what it declares (`app:` rules, from its NSC or ATS), and the pinning assertion.

Conformance issues say where live traffic contradicts the app's own
declaration: cleartext to a host the app forbids it for, a server chain none of
the app's pins match (with the days each pin set has left), TLS below the
app's declared minimum, a suite without forward secrecy where the app requires
it, a release build that accepted tlsgate's (user-installed) CA. Each names the
app's file and element.

The pinning assertion (`must_pin`) reads what the app did with tlsgate's own
certificate: sent data over it (not pinned), refused it (pinned, when the same
device accepted tlsgate's certificate for another host; CA not installed when
it refused it everywhere), or refused it with nothing yet known of the device
(undetermined). All verdicts here are pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from tlsgate.checks.model import Check, Effect, Issue, Severity
from tlsgate.checks.registry import HandshakeFacts, Phase, upstream_judge
from tlsgate.policy.model import Match
from tlsgate.policy.sections.app import APP, AppRules
from tlsgate.tls import versions
from tlsgate.tls.ciphers import lookup
from tlsgate.tls.pins import chain_pins
from tlsgate.tls.recent import Recent

EXPIRY_HORIZON_DAYS = 30  # pins that lapse within this many days are a finding: the next release must rotate them
# Recorded (not blocking) kinds that describe the app or the server rather than one connection: said once per
# device and host, then counted.
ONCE_KINDS = ("pins_expire_soon", "pins_expired", "user_cas_in_release", "below_declared_min_version", "no_forward_secrecy")


def _evidence(app: AppRules, key: str, **more: Any) -> dict[str, Any]:
    return {"declared_at": app.where(key), "app_source": app.source, "platform": app.platform, **more}


def judge_cleartext(app: AppRules | None, host: str, sent: str) -> list[Issue]:
    """Plain text to a host the app declares cleartext forbidden for: a WebView or SDK going around the platform."""
    if app is None or app.cleartext != "forbid":
        return []
    return [
        Issue(
            Check.CONFORMANCE,
            "cleartext_forbidden",
            Effect.ENFORCED,
            Severity.HIGH,
            f"the app sent {sent} in cleartext to {host}, which it declares cleartext forbidden for "
            f"({app.where('cleartext')}); the platform blocks its own HTTP stack there, so this came from a "
            "component that bypasses it (a WebView, a native library, a raw socket)",
            _evidence(app, "cleartext", sent=sent),
            f"send this over https:// (the app's own config at {app.where('cleartext')} says so), or find the SDK "
            "that bypasses the platform's network security config",
        )
    ]


def judge_cleartext_stream(app: AppRules | None, host: str, protocol: str) -> list[Issue]:
    """A non-HTTP cleartext stream (MQTT, Redis, unknown) to a host the app forbids cleartext for.

    Recorded, never blocking here: whether the stream passes is tlsgate's own
    `cleartext` rule's decision (its stream gate is what can stop a stream
    before a byte is relayed); this finding says the app broke its promise.
    """
    if app is None or app.cleartext != "forbid":
        return []
    return [
        Issue(
            Check.CONFORMANCE,
            "cleartext_forbidden",
            Effect.RECORD,
            Severity.HIGH,
            f"the app opened a cleartext {protocol} stream to {host}, which it declares cleartext forbidden for "
            f"({app.where('cleartext')}): a library with its own sockets ignores the app's network security config",
            _evidence(app, "cleartext", protocol=protocol),
            f"use the protocol's TLS port for {host}; `cleartext: block` in tlsgate's rule stops such streams",
        )
    ]


def pin_days_left(expires: dt.date | None, today: dt.date) -> int | None:
    return None if expires is None else (expires - today).days


def judge_server(
    app: AppRules | None, protocol: str | None, cipher: str | None, chain: Sequence[x509.Certificate], today: dt.date
) -> list[Issue]:
    """The server tlsgate reached, against what the app declares it will accept."""
    if app is None:
        return []
    issues = [*_judge_pins(app, chain, today)]
    version = versions.from_openssl(protocol)
    if app.min_version and versions.below(version, app.min_version):
        issues.append(
            Issue(
                Check.CONFORMANCE,
                "below_declared_min_version",
                Effect.ENFORCED,
                Severity.HIGH,
                f"the server negotiated {versions.shown(version or '?')}, below the TLS {app.min_version} the app "
                f"declares ({app.where('min_version')}): the app itself refuses this server",
                _evidence(app, "min_version", side="server", negotiated_version=protocol, declared_min=app.min_version),
                f"upgrade the server to TLS {app.min_version}, or lower the app's declared minimum at {app.where('min_version')}",
            )
        )
    suite = lookup(cipher) if cipher else None
    if app.forward_secrecy and suite is not None and "no_forward_secrecy" in suite.weaknesses:
        issues.append(
            Issue(
                Check.CONFORMANCE,
                "no_forward_secrecy",
                Effect.ENFORCED,
                Severity.MEDIUM,
                f"the server negotiated {suite.iana_name}, without forward secrecy, which the app requires "
                f"({app.where('forward_secrecy')}): ATS refuses this server",
                _evidence(app, "forward_secrecy", side="server", negotiated_suite=suite.iana_name),
                "enable ECDHE suites on the server (ATS lists the ones it accepts)",
            )
        )
    return issues


@upstream_judge(
    Phase.ESTABLISHED,
    APP,
    name="app_declaration",
    check=Check.CONFORMANCE,
    failure="tlsgate could not check this server against the app's declaration (see log)",
    once=ONCE_KINDS,
    connection_evidence=False,
)
def app_server_judge(facts: HandshakeFacts, app: AppRules, match: Match, now: dt.datetime) -> list[Issue]:
    """The established server against the app's declaration (the date is the local one, as the app's pins read it)."""
    return judge_server(app, facts.protocol, facts.cipher, facts.chain, now.astimezone().date())


def _judge_pins(app: AppRules, chain: Sequence[x509.Certificate], today: dt.date) -> list[Issue]:
    pinning = app.pinning
    if pinning is None or not chain:
        return []
    pin_set = pinning.pin_set
    days = pin_days_left(pin_set.expires, today)
    where = app.where("pins")
    left = {pin_set.name: days}
    if pin_set.expired(today):
        return [
            Issue(
                Check.CONFORMANCE,
                "pins_expired",
                Effect.RECORD,
                Severity.MEDIUM,
                f"the app's pin set '{pin_set.name}' ({where}) expired on {pin_set.expires}: the app no longer pins "
                "this host, any CA the device trusts is accepted",
                _evidence(app, "pins", pin_set=pin_set.name, expires=str(pin_set.expires), days_left=left),
                f"ship a release with current pins and a later expiration at {where}",
            )
        ]
    issues = []
    match = pin_set.match(chain)
    if not match.matched:
        issues.append(
            Issue(
                Check.CONFORMANCE,
                "pin_mismatch",
                Effect.ENFORCED,
                Severity.CRITICAL,
                f"the server's chain matches none of the app's pins ({where}): the app refuses this server"
                + (f"; the pin set has {days} day(s) left" if days is not None else "; the pin set never expires"),
                _evidence(
                    app,
                    "pins",
                    pin_set=pin_set.name,
                    days_left=left,
                    expected=list(pin_set.pin_texts),
                    chain=[{"role": c.role, "subject": c.subject, "pin": c.pin} for c in chain_pins(chain)],
                ),
                f"if the server's key changed on purpose, ship the new pin (shown in the chain) at {where} before the "
                "old one goes; otherwise something presents another certificate for this host",
            )
        )
    if days is not None and days <= EXPIRY_HORIZON_DAYS:
        issues.append(
            Issue(
                Check.CONFORMANCE,
                "pins_expire_soon",
                Effect.RECORD,
                Severity.MEDIUM,
                f"the app's pin set '{pin_set.name}' ({where}) expires in {days} day(s), on {pin_set.expires}; "
                "from then on the app does not pin this host",
                _evidence(app, "pins", pin_set=pin_set.name, expires=str(pin_set.expires), days_left=left),
                f"ship a release with a later expiration (and current backup pins) at {where}",
            )
        )
    return issues


def judge_client_version(app: AppRules | None, best_offered: str | None) -> list[Issue]:
    """The app's own TLS stack offers less than the app declares: a component with its own TLS (or an old one)."""
    if app is None or not app.min_version or not versions.below(best_offered, app.min_version):
        return []
    return [
        Issue(
            Check.CONFORMANCE,
            "below_declared_min_version",
            Effect.RECORD,
            Severity.HIGH,
            f"the app's ClientHello offers at most {versions.shown(best_offered or '?')}, below the TLS "
            f"{app.min_version} it declares ({app.where('min_version')}): some component uses its own, older TLS",
            _evidence(app, "min_version", side="client", best_offered_version=best_offered, declared_min=app.min_version),
            "find the library with its own TLS stack (the ClientHello fingerprint in this finding names it) and update it",
        )
    ]


def judge_user_cas(app: AppRules | None, host: str) -> list[Issue]:
    """A release build that declares user CAs trusted, and just accepted tlsgate's certificate to prove it."""
    if app is None or app.user_cas != "trusted" or app.build != "release":
        return []
    return [
        Issue(
            Check.CONFORMANCE,
            "user_cas_in_release",
            Effect.RECORD,
            Severity.MEDIUM,
            f"this release build trusts user-installed CAs for {host} ({app.where('user_cas')}) and accepted "
            "tlsgate's certificate: any CA a user, an MDM profile or a coerced install adds can read this traffic",
            _evidence(app, "user_cas"),
            f"trust user CAs only inside <debug-overrides> ({app.where('user_cas')})",
        )
    ]


# -- the pinning assertion -------------------------------------------------------------------------


@dataclass
class DeviceRecord:
    """What one device did with tlsgate's own certificate for hosts it is not asked to pin."""

    accepted: Recent[str, bool]  # hosts it sent data to over tlsgate's cert
    refused: Recent[str, str]  # host -> how it refused


class DeviceTrust:
    """Per device (its name, else its address), bounded: was tlsgate's CA installed, as far as its traffic shows?"""

    def __init__(self, devices: int = 4096, hosts: int = 16) -> None:
        self.devices, self.hosts = devices, hosts
        self._records: Recent[str, DeviceRecord] = Recent(devices)

    def _record(self, device: str) -> DeviceRecord:
        record = self._records.get(device)
        if record is None:
            record = DeviceRecord(Recent(self.hosts), Recent(self.hosts))
            self._records.put(device, record)
        return record

    def accepted(self, device: str, host: str) -> None:
        self._record(device).accepted.put(host, True)

    def refused(self, device: str, host: str, how: str) -> None:
        self._record(device).refused.put(host, how)

    def evidence(self, device: str, host: str) -> tuple[list[str], list[str]]:
        """(hosts accepted, hosts refused), other than `host`."""
        record = self._records.peek(device)
        if record is None:
            return [], []
        return [h for h in record.accepted if h != host], [h for h in record.refused if h != host]


def not_pinned(app: AppRules, host: str, sent: str) -> Issue:
    expired = ""
    pinning = app.pinning
    if pinning is not None and pinning.pin_set.expires is not None and pinning.pin_set.expired(dt.date.today()):
        expired = f" (its pin set expired on {pinning.pin_set.expires}, so it no longer pins)"
    return Issue(
        Check.PINNING,
        "not_pinned",
        Effect.ENFORCED,
        Severity.HIGH,
        f"the app completed a handshake with tlsgate's certificate for {host} and sent {sent}: it does not pin this "
        f"host, which it must ({app.where('must_pin')}){expired}",
        _evidence(app, "must_pin", sent=sent),
        "pin the host's keys (Android <pin-set>, iOS NSPinnedDomains, OkHttp CertificatePinner) and check that no "
        "overridePins or trust-all code path skips them",
    )


def refused(app: AppRules, host: str, rejection: str, accepted: list[str], refused_elsewhere: list[str]) -> Issue:
    """A must-pin host's refusal, read against what the same device did for other hosts."""
    base = _evidence(app, "must_pin", rejection=rejection)
    if accepted:
        return Issue(
            Check.PINNING,
            "pinned",
            Effect.PASSED,
            Severity.INFO,
            f"the app refused tlsgate's certificate for {host} ({rejection}) while the same device accepted it for "
            f"{', '.join(accepted[:3])}: tlsgate's CA is installed, so the app pins {host}",
            {**base, "ca_installed_because": {"accepted_for": accepted[:5]}},
        )
    if refused_elsewhere:
        return Issue(
            Check.PINNING,
            "ca_not_installed",
            Effect.RECORD,
            Severity.MEDIUM,
            f"the app refused tlsgate's certificate for {host} ({rejection}), but the device also refused it for "
            f"{', '.join(refused_elsewhere[:3])} and accepted it nowhere: tlsgate's CA is not installed (or not "
            "trusted by this app), so this says nothing about pinning",
            {**base, "refused_for": refused_elsewhere[:5]},
            "install tlsgate's CA on the device (`tlsgate ca export`; on Android 7+ in the system store or trusted by a "
            "debug build's config) and run again",
        )
    return undetermined(app, host, rejection)


def undetermined(app: AppRules, host: str, rejection: str) -> Issue:
    return Issue(
        Check.PINNING,
        "undetermined",
        Effect.RECORD,
        Severity.LOW,
        f"the app refused tlsgate's certificate for {host} ({rejection}), and the device used no other host through "
        "tlsgate to tell pinning from a missing CA",
        _evidence(app, "must_pin", rejection=rejection),
        "let the device reach one host it does not pin through tlsgate (open http://mitm.it or any https site), then run again",
    )
