"""The host's interfaces, addresses and widest routes, read from rtnetlink dumps: parsing only, no sockets.

tlsgate accepts a client with a global address when it lies on one of the
host's LAN prefixes (`tlsgate.tls.lan`). The kernel's routing netlink is the one
source that gives both families, every prefix length, peer addresses of
point-to-point links and the interfaces routes leave by, in whichever network
namespace tlsgate runs, with no tool (`ip`) or package to depend on. The
format is a stable kernel ABI (linux/netlink.h, rtnetlink.h, if_addr.h).

Every length in a message is checked against the bytes there are: a
malformed dump raises `NetlinkError` (a ValueError), never an IndexError or a
struct.error, and never a loop that does not advance.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# linux/netlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP_INTR, NLM_F_DUMP = 0x1, 0x10, 0x300
# linux/rtnetlink.h
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_GETROUTE = 16, 18, 20, 22, 24, 26
RTN_UNICAST = 1
RTA_DST, RTA_OIF, RTA_MULTIPATH = 1, 4, 9
# linux/if_link.h, linux/if.h
IFLA_IFNAME = 3
IFF_LOOPBACK = 0x8
# linux/if_addr.h
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_DADFAILED = 0x08

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NEXTHOP = struct.Struct("=HBBi")  # rtnexthop: length, flags, hops, interface index
_FAMILIES: dict[int, tuple[int, int]] = {socket.AF_INET: (4, 4), socket.AF_INET6: (6, 16)}  # family: (IP version, address bytes)
_REQUESTS = {
    "links": (RTM_GETLINK, _IFINFO.size),
    "addresses": (RTM_GETADDR, _IFADDR.size),
    "routes": (RTM_GETROUTE, _RTMSG.size),
}


class NetlinkError(ValueError):
    """A dump that is malformed, or that the kernel answered with an error."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    loopback: bool


@dataclass(frozen=True)
class Address:
    """One address on an interface: `local` is the host's own, `network` the prefix on that link.

    They differ on a point-to-point link (`10.9.9.1 peer 10.9.9.2/32`): the
    prefix is the peer's, and only the peer is on the link.
    """

    index: int
    local: IPAddress
    network: IPNetwork
    failed: bool = False  # duplicate address detection failed: the address is not in use


@dataclass(frozen=True)
class Route:
    """A unicast route's destination and the interfaces it leaves by; () when the dump does not say
    (a route through a nexthop object with net.ipv4.nexthop_compat_mode=0)."""

    destination: IPNetwork
    interfaces: tuple[int, ...]


@dataclass
class Dump:
    """What one reply to `request()` held, parsed; `done` once the kernel said so."""

    sequence: int
    links: list[Link] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    done: bool = False
    interrupted: bool = False  # the tables changed during the dump: read again for a consistent view


def request(kind: str, sequence: int) -> bytes:
    """A dump request for "links", "addresses" or "routes" of every family."""
    message_type, body = _REQUESTS[kind]
    return _HEADER.pack(_HEADER.size + body, message_type, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0) + bytes(body)


def _align(length: int) -> int:
    return (length + 3) & ~3


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, sequence, payload) of each message in one datagram."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            raise NetlinkError(f"netlink: {len(data) - offset} bytes left at offset {offset}, less than a header")
        length, kind, flags, sequence, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise NetlinkError(f"netlink: message at offset {offset} claims {length} bytes of {len(data) - offset}")
        yield kind, flags, sequence, data[offset + _HEADER.size : offset + length]
        offset += _align(length)


def attributes(data: bytes, offset: int = 0, until: int | None = None) -> dict[int, bytes]:
    """An rtattr list's values by type (the last of a repeated type wins; flag bits masked off).

    `until`: stop at the first attribute of that type. A link message carries
    some fifty attributes (statistics, queues, ...) after the name, the only one read.
    """
    found: dict[int, bytes] = {}
    while len(data) - offset >= _ATTR.size:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > len(data):
            raise NetlinkError(f"netlink: attribute at offset {offset} claims {length} bytes of {len(data) - offset}")
        kind &= 0x3FFF
        found[kind] = data[offset + _ATTR.size : offset + length]
        if kind == until:
            break
        offset += _align(length)
    return found


def _fixed(payload: bytes, shape: struct.Struct, what: str) -> tuple[int, ...]:
    if len(payload) < shape.size:
        raise NetlinkError(f"netlink: a {what} message of {len(payload)} bytes, shorter than its {shape.size}-byte header")
    return shape.unpack_from(payload)


def _u32(value: bytes | None, what: str) -> int | None:
    if value is None:
        return None
    if len(value) < 4:
        raise NetlinkError(f"netlink: {what} of {len(value)} bytes, not 4")
    return int(struct.unpack_from("=I", value)[0])


def _address(family: int, value: bytes) -> IPAddress:
    version, size = _FAMILIES[family]
    if len(value) != size:
        raise NetlinkError(f"netlink: an IPv{version} address of {len(value)} bytes")
    return ipaddress.ip_address(value)


def _network(address: IPAddress, prefix: int) -> IPNetwork:
    if prefix > address.max_prefixlen:
        raise NetlinkError(f"netlink: prefix length /{prefix} for IPv{address.version} {address}")
    return ipaddress.ip_network((address, prefix), strict=False)


def parse_link(payload: bytes) -> Link:
    _, _, index, flags, _ = _fixed(payload, _IFINFO, "link")
    name = attributes(payload, _IFINFO.size, until=IFLA_IFNAME).get(IFLA_IFNAME, b"").split(b"\0", 1)[0]
    return Link(index, name.decode("utf-8", "replace") or f"if{index}", bool(flags & IFF_LOOPBACK))


def parse_address(payload: bytes) -> Address | None:
    """An IPv4 or IPv6 address; None for another family (or one with no address at all)."""
    family, prefix, flags, _, index = _fixed(payload, _IFADDR, "address")
    if family not in _FAMILIES:
        return None
    attrs = attributes(payload, _IFADDR.size)
    on_link = attrs.get(IFA_ADDRESS, attrs.get(IFA_LOCAL))
    if on_link is None:
        return None
    peer = _address(family, on_link)
    local = _address(family, attrs[IFA_LOCAL]) if IFA_LOCAL in attrs else peer
    all_flags = _u32(attrs.get(IFA_FLAGS), "IFA_FLAGS")
    failed = bool((flags if all_flags is None else all_flags) & IFA_F_DADFAILED)
    return Address(index, local, _network(peer, prefix), failed)


def parse_route(payload: bytes) -> Route | None:
    """A unicast IPv4 or IPv6 route; None for local, broadcast, unreachable, ... routes and other families."""
    family, dst_len, _, _, _, _, _, kind, _ = _fixed(payload, _RTMSG, "route")
    if family not in _FAMILIES or kind != RTN_UNICAST:
        return None
    version, size = _FAMILIES[family]
    attrs = attributes(payload, _RTMSG.size)
    destination = _address(family, attrs.get(RTA_DST, bytes(size)))
    interfaces: list[int] = []
    oif = _u32(attrs.get(RTA_OIF), "RTA_OIF")
    if oif is not None:
        interfaces.append(oif)
    hops = attrs.get(RTA_MULTIPATH, b"")
    offset = 0
    while len(hops) - offset >= _NEXTHOP.size:
        length, _, _, index = _NEXTHOP.unpack_from(hops, offset)
        if length < _NEXTHOP.size or offset + length > len(hops):
            raise NetlinkError(f"netlink: a nexthop of {length} bytes at offset {offset} of {len(hops)}")
        interfaces.append(index)
        offset += _align(length)
    return Route(_network(destination, dst_len), tuple(dict.fromkeys(interfaces)))


def read_reply(dump: Dump, datagram: bytes) -> None:
    """Add one datagram of the kernel's reply to `dump` (messages of other requests are skipped)."""
    for kind, flags, sequence, payload in messages(datagram):
        if sequence != dump.sequence:
            continue
        if flags & NLM_F_DUMP_INTR:
            dump.interrupted = True
        if kind == NLMSG_DONE:
            code = struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
            if code < 0:
                raise NetlinkError(f"netlink: the dump ended with error {-code}")
            dump.done = True
            return
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else -1
            raise NetlinkError(f"netlink: the kernel refused the request (error {-code})")
        if kind == RTM_NEWLINK:
            dump.links.append(parse_link(payload))
        elif kind == RTM_NEWADDR:
            address = parse_address(payload)
            if address is not None:
                dump.addresses.append(address)
        elif kind == RTM_NEWROUTE:
            route = parse_route(payload)
            if route is not None:
                dump.routes.append(route)
