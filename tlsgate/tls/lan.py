"""Which clients are on the gateway's own LAN: private addresses, and global ones on a prefix of its LAN links.

A dual-stack LAN behind an ISP router hands its devices global IPv6 addresses
from the delegated prefix (2000::/3). mitmproxy's `block_global` refuses every
global address, so a transparent gateway on such a LAN killed each IPv6
connection after the handshake, and apps, having connected, did not fall back
to IPv4. A client whose address lies on a prefix configured on one of this
host's interfaces is on the same link as the gateway: a LAN device, accepted
like a private address. Everything else global stays refused, so tlsgate is no
more an open proxy than before. Three limits keep "on-link" from meaning more:

- A prefix wider than any site (shorter than /48 for IPv6, /8 for IPv4) is
  never a LAN: an address with /0 would make the whole internet on-link, and
  6to4 (2002::/16) and Teredo (2001::/32) interfaces carry such prefixes for
  tunnels from anywhere. ISPs delegate at most a /48 to a site.
- An interface a default route (or any route wider than a site towards
  non-private space, such as a VPN's 0.0.0.0/1) leaves by is the internet side.
  Its prefix is the ISP's or the cloud provider's link, often shared with other
  customers: a cloud VM's eth0 holds a /20 or /64 of other tenants' machines.
  A host whose devices share that link (a laptop on Wi-Fi, a one-armed router)
  names the prefix itself (`tlsgate_lan_prefixes`).
- Loopback interfaces contribute only their own addresses (a range bound to
  `lo` makes the host answer for it, not a LAN).

Accepting an on-link address is no weaker than accepting a private one: a TCP
handshake from a forged source never completes, because the answer is routed
to the LAN, where the real owner of that address is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tlsgate.tls.netlink import Address, IPAddress, IPNetwork, Link, Route

# Prefixes shorter than these are never a LAN (see above).
MIN_PREFIX = {4: 8, 6: 48}
NAMED = "tlsgate_lan_prefixes"  # how a prefix the operator named is shown, in place of an interface

# Not globally routable by Python's `is_global` (so mitmproxy's `block_global` lets them in), yet a device lab
# never has clients there, unless it put the prefix on its own LAN: documentation ranges appear only in spoofed
# or misconfigured traffic, and Teredo and 6to4 addresses are tunnels from anywhere on the internet. Refused
# with the public ones; CGNAT (100.64.0.0/10) stays allowed: carrier and overlay VPNs (Tailscale) put real lab
# devices there.
NOT_LAB_CLIENTS = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "2001::/32", "2002::/16")
)


def client_ip(address: str) -> IPAddress | None:
    """The IP of a peer address (`fe80::1%eth0`, `::ffff:10.0.0.2` as 10.0.0.2), or None if it is none."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def outside_the_lab(address: str) -> bool:
    ip = client_ip(address)
    return ip is not None and any(ip in net for net in NOT_LAB_CLIENTS if net.version == ip.version)


def _refused_without_lan(ip: IPAddress) -> bool:
    """Whether `block_global` would refuse this address if it were not on a LAN prefix."""
    return ip.is_global or any(ip in net for net in NOT_LAB_CLIENTS if net.version == ip.version)


def _concerns_public(network: IPNetwork) -> bool:
    """Whether a prefix holds addresses `block_global` refuses (only those are worth listing)."""
    return _refused_without_lan(network.network_address) or _refused_without_lan(network.broadcast_address)


@dataclass(frozen=True)
class LanPrefix:
    network: IPNetwork
    interface: str  # where it was found, or NAMED

    def __str__(self) -> str:
        return f"{self.network} ({self.interface})"


@dataclass(frozen=True)
class PassedOver:
    """A public prefix on one of the host's interfaces that is not taken as a LAN, and why."""

    network: IPNetwork
    interface: str
    reason: str
    nameable: bool = True  # whether `tlsgate_lan_prefixes` would take it (not when it is too wide)


@dataclass(frozen=True)
class Lan:
    """The host's LAN prefixes that hold public addresses, its own addresses, and the public prefixes passed over."""

    prefixes: tuple[LanPrefix, ...] = ()
    own: frozenset[IPAddress] = frozenset()
    passed_over: tuple[PassedOver, ...] = ()
    note: str = ""  # why the prefixes could not be read at all, if they could not

    def prefix_of(self, ip: IPAddress) -> LanPrefix | None:
        return next((p for p in self.prefixes if p.network.version == ip.version and ip in p.network), None)

    def holds(self, ip: IPAddress) -> bool:
        return ip in self.own or self.prefix_of(ip) is not None

    def summary(self) -> str:
        """The public LAN prefixes, as log lines and refusals say them."""
        if not self.prefixes:
            return "no LAN prefix of this host holds public addresses"
        return f"this host's LAN prefixes with public addresses: {', '.join(str(p) for p in self.prefixes)}"


def parse_named_prefixes(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The operator's `tlsgate_lan_prefixes`; ValueError says which one is wrong and why."""
    found: list[IPNetwork] = []
    for value in values:
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"{NAMED}: {value!r} is not a prefix like 2a01:db9:1:2::/64 or 192.0.2.0/24 ({exc})") from None
        least = MIN_PREFIX[network.version]
        if network.prefixlen < least:
            raise ValueError(
                f"{NAMED}: {network} is wider than any site's LAN (shorter than /{least}): it would accept "
                "clients from the internet; name the LAN's own prefix, or give --allow-public-clients to mean that"
            )
        found.append(network)
    return tuple(dict.fromkeys(found))


def _wide(route: Route) -> bool:
    """A default route, or one wider than any site towards public space (0.0.0.0/1, 2000::/3): the internet."""
    destination = route.destination
    return destination.prefixlen < MIN_PREFIX[destination.version] and not destination.is_private


def lan_of(links: Sequence[Link], addresses: Sequence[Address], routes: Sequence[Route], named: Sequence[IPNetwork] = ()) -> Lan:
    """The LAN this host's interfaces show (see the module docstring for what counts), plus the prefixes named."""
    names = {link.index: link.name for link in links}
    loopback = {link.index for link in links if link.loopback}
    internet: set[int] = set()
    unknown_route: Route | None = None
    for route in routes:
        if _wide(route):
            internet.update(route.interfaces)
            if not route.interfaces:
                unknown_route = route
    prefixes: dict[LanPrefix, None] = {LanPrefix(network, NAMED): None for network in named}
    passed: dict[PassedOver, None] = {}
    own: set[IPAddress] = set()
    for address in addresses:
        if address.failed:
            continue
        own.add(address.local)
        network = address.network
        if address.index in loopback or not _concerns_public(network):
            continue  # loopback: its own addresses only; a private prefix is accepted anyway
        name = names.get(address.index, f"if{address.index}")
        least = MIN_PREFIX[network.version]
        if network.prefixlen < least:
            reason = f"a /{network.prefixlen} is wider than any site's LAN (shorter than /{least}): a tunnel or a mistake"
            passed[PassedOver(network, name, reason, nameable=False)] = None
            continue
        if address.index in internet:
            reason = f"{name} carries this host's default route: the internet side, maybe shared with other customers"
        elif unknown_route is not None:
            reason = f"the route to {unknown_route.destination} names no interface, so any may be the internet side"
        else:
            prefixes[LanPrefix(network, name)] = None
            continue
        passed[PassedOver(network, name, reason)] = None
    return Lan(tuple(prefixes), frozenset(own), tuple(passed))


def client_refusal(address: str, lan: Callable[[], Lan], *, block_global: bool, block_private: bool) -> str | None:
    """Why a client address is refused, or None to accept it; `lan` is asked only when the answer depends on it.

    mitmproxy's `block_global`/`block_private` semantics (loopback always
    accepted), with a client on one of the host's LAN prefixes taken as a LAN
    client, like a private address, and the documentation and tunnel ranges
    refused with the global ones unless they are the LAN's.
    """
    ip = client_ip(address)
    if ip is None:
        return f"client {address!r} is not an IP address"
    if ip.is_loopback:
        return None
    if block_private and ip.is_private:
        return f"client {ip} killed by block_private: a private address"
    refused_as_public = block_global and _refused_without_lan(ip)
    if not refused_as_public and not block_private:
        return None
    known = lan()
    if known.holds(ip):
        return f"client {ip} killed by block_private: an address on this host's LAN" if block_private else None
    if not refused_as_public:
        return None
    if not ip.is_global:
        said = f"client {ip} is in a documentation or tunnel range, not on this host's LAN"
        return f"{said}; {_hint(ip, known)}" if _near(ip, known) else f"{said} (see --allow-public-clients)"
    off = f"a public address off this host's LAN ({known.note or known.summary()})"
    return f"client {ip} killed by block_global: {off}; {_hint(ip, known)}"


def _near(ip: IPAddress, lan: Lan) -> PassedOver | None:
    """The narrowest public prefix of this host's interfaces that holds `ip` but is no LAN."""
    holding = [p for p in lan.passed_over if p.network.version == ip.version and ip in p.network]
    return max(holding, key=lambda p: p.network.prefixlen, default=None)


def _hint(ip: IPAddress, lan: Lan) -> str:
    """What the operator changes if this client is theirs."""
    near = _near(ip, lan)
    if near is not None:
        change = f"--set {NAMED}={near.network if near.nameable else '<the LAN itself, a narrower prefix>'}"
        return (
            f"it is on {near.network} of {near.interface}, not taken as a LAN because {near.reason}. "
            f"If that link is your LAN, add {change}"
        )
    return (
        f"a device on a LAN this host has no interface in (tlsgate in a container) needs "
        f"--set {NAMED}=<that LAN's prefix>; --allow-public-clients accepts every address (only behind a firewall)"
    )
