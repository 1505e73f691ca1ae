"""Host -> settings lookup in time proportional to the number of labels, not rules.

Exact names sit in one dict and wildcard bases in another; walking the host's
suffixes from longest to shortest finds the most specific wildcard first, so a
10,000-rule policy costs the same per request as a 10-rule one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tlsgate.policy.hosts import host_only
from tlsgate.policy.model import HostPattern, Location, Match, Rule, Settings
from tlsgate.policy.sections.base import SECTIONS


@dataclass(frozen=True)
class _Entry:
    rule: Rule
    pattern: HostPattern
    settings: Settings


class HostIndex:
    def __init__(self, defaults: Settings, defaults_location: Location, rules: tuple[Rule, ...]) -> None:
        self._defaults = defaults
        self._defaults_location = defaults_location
        self._exact: dict[str, _Entry] = {}
        self._wildcard: dict[str, _Entry] = {}
        for rule in rules:
            settings = merge(defaults, rule)
            for pattern in rule.hosts:
                table = self._wildcard if pattern.wildcard else self._exact
                table.setdefault(pattern.base, _Entry(rule, pattern, settings))

    def match(self, host: str) -> Match:
        """Ports are ignored (`api.test:8443` matches `api.test`): rules name hosts, not services."""
        name = host_only(host)
        entry = self._exact.get(name)
        if entry is None and self._wildcard:
            dot = name.find(".")
            while dot != -1:
                entry = self._wildcard.get(name[dot + 1 :])
                if entry is not None:
                    break
                dot = name.find(".", dot + 1)
        if entry is None:
            return Match(name, self._defaults, None, None, self._defaults_location)
        return Match(name, entry.settings, entry.rule, entry.pattern, entry.rule.location)


def merge(defaults: Settings, rule: Rule) -> Settings:
    """A rule overrides defaults key by key; sections replace the default section whole, unless they merge.

    Whole-section replacement keeps a rule readable on its own: what it says
    about pins is everything that applies, not a diff against a block elsewhere.
    A section of independent numbers (`timeouts:`) merges instead, so a rule
    need not repeat every limit to change one.
    """
    overrides = rule.overrides
    sections = dict(defaults.sections)
    for key, value in overrides.items():
        if key == "mode":
            continue
        section = SECTIONS.get(key)
        if section is not None and section.merge is not None and key in sections:
            value = section.merge(sections[key], value)
        sections[key] = value
    return Settings(mode=overrides.get("mode", defaults.mode), sections=sections)


class DeviceIndex:
    """Client address -> device name; exact addresses first, then the longest network."""

    def __init__(self, devices: dict[str, str]) -> None:
        self._exact: dict[str, str] = {}
        self._networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        for key, name in devices.items():
            if "/" in key:
                self._networks.append((ipaddress.ip_network(key, strict=False), name))
            else:
                self._exact[str(ipaddress.ip_address(key))] = name
        self._networks.sort(key=lambda item: item[0].prefixlen, reverse=True)

    def name_for(self, address: str) -> str | None:
        if not self._exact and not self._networks:  # no devices declared: asked once per connection, parse nothing
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        found = self._exact.get(str(ip))
        if found is not None:
            return found
        for network, name in self._networks:
            if ip.version == network.version and ip in network:
                return name
        return None
