"""tlsgate reads the host's LAN prefixes from the real kernel, in a network namespace this test builds.

The namespace holds what a gateway's interfaces hold: a LAN link with a global
IPv6 /64 (the ISP's delegated prefix) and a public IPv4 /16, an internet side
with the default routes, a point-to-point link, a 6to4-wide /16, an AnyIP range
on loopback and a VPN-style 0.0.0.0/1 through a nexthop object. The addresses
and routes tlsgate's rtnetlink reader sees are compared with `ip -j`'s view of
the same kernel, and the LAN chosen from them is asserted prefix by prefix.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Iterator

import pytest

from tests import netns
from tlsgate.addons.access import read_interfaces
from tlsgate.tls.lan import lan_of


@pytest.fixture(scope="module")
def gateway() -> Iterator[netns.Network]:
    netns.remove_stale()
    net = netns.Network(f"{netns.PREFIX}{os.getpid()}lan", ())
    name = f"{net.tag}gw"
    if netns.ip("netns", "add", name, check=False).returncode != 0:
        pytest.skip("network namespaces unavailable here")
    net.created.append(name)
    try:
        for line in (
            "ip link set lo up",
            "ip link add lan0 type veth peer name lan1",
            "ip link add wan0 type veth peer name wan1",
            "ip link add ptp0 type veth peer name ptp1",
            "ip link add vpn0 type veth peer name vpn1",
            "ip link add six0 type veth peer name six1",
            *(f"ip link set {link} up" for link in ("lan0", "lan1", "wan0", "wan1", "ptp0", "ptp1", "vpn0", "vpn1", "six0")),
            "ip -6 addr add 2a01:db9:1:2::1/64 dev lan0 nodad",
            "ip -6 addr add 2002:c000:204::1/16 dev six0 nodad",  # as on a 6to4 tunnel interface
            "ip addr add 130.83.1.1/16 dev lan0",
            "ip -6 addr add 2a01:db9:ffff:1::7/64 dev wan0 nodad",
            "ip addr add 203.0.113.7/24 dev wan0",
            "ip route add default via 203.0.113.1 dev wan0",
            "ip -6 route add default via 2a01:db9:ffff:1::1 dev wan0",
            "ip addr add 11.9.9.1 peer 11.9.9.2/32 dev ptp0",
            "ip addr add 11.8.8.1/24 dev vpn0",
            "ip nexthop add id 7 via 11.8.8.254 dev vpn0",
            "ip route add 0.0.0.0/1 nhid 7",
            "ip addr add 192.0.2.0/24 dev lo",
        ):
            net.run(name, *line.split())
        yield net
    finally:
        net.close()


def read_in(net: netns.Network) -> tuple:
    with net.entered(f"{net.tag}gw"):
        return read_interfaces()


def ip_json(net: netns.Network, *args: str) -> list[dict]:
    return json.loads(net.run(f"{net.tag}gw", "ip", "-j", *args).stdout or "[]")


def test_the_reader_sees_what_ip_sees(gateway: netns.Network) -> None:
    links, addresses, routes = read_in(gateway)
    shown = ip_json(gateway, "addr", "show")
    assert {(link.index, link.name, link.loopback) for link in links} == {
        (item["ifindex"], item["ifname"], "LOOPBACK" in item["flags"]) for item in shown
    }
    expected = set()
    for item in shown:
        for info in item["addr_info"]:
            on_link = info.get("address", info["local"])  # `peer` links: the prefix is the peer's
            network = ipaddress.ip_network(f"{on_link}/{info['prefixlen']}", strict=False)
            expected.add((item["ifindex"], ipaddress.ip_address(info["local"]), network))
    assert {(a.index, a.local, a.network) for a in addresses} == expected
    indexes = {item["ifname"]: item["ifindex"] for item in shown}
    wide = {(str(r.destination), r.interfaces) for r in routes if r.destination.prefixlen < 8}
    assert wide == {("0.0.0.0/0", (indexes["wan0"],)), ("::/0", (indexes["wan0"],)), ("0.0.0.0/1", (indexes["vpn0"],))}
    names = {index: name for name, index in indexes.items()}
    listed = set()
    for family, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        for route in ip_json(gateway, family, "route", "show", "table", "all"):
            if route.get("type", "unicast") == "unicast":
                destination = default if route["dst"] == "default" else str(ipaddress.ip_network(route["dst"]))
                listed.add((destination, route["dev"]))
    assert {(str(r.destination), names[index]) for r in routes for index in r.interfaces} == listed


def test_the_lan_is_the_gateways_lan_links_and_nothing_wider(gateway: netns.Network) -> None:
    lan = lan_of(*read_in(gateway))
    assert sorted(str(p) for p in lan.prefixes) == ["11.9.9.2/32 (ptp0)", "130.83.0.0/16 (lan0)", "2a01:db9:1:2::/64 (lan0)"]
    passed = {str(p.network): (p.interface, p.reason) for p in lan.passed_over}
    assert passed["2a01:db9:ffff:1::/64"] == (
        "wan0",
        "wan0 carries this host's default route: the internet side, maybe shared with other customers",
    )
    assert passed["203.0.113.0/24"][0] == "wan0"
    assert passed["2002::/16"] == ("six0", "a /16 is wider than any site's LAN (shorter than /48): a tunnel or a mistake")
    assert "vpn0 carries this host's default route" in passed["11.8.8.0/24"][1]  # 0.0.0.0/1, through a nexthop object
    assert "192.0.2.0/24" not in passed and lan.holds(ipaddress.ip_address("192.0.2.0"))  # lo: its own address only
    assert not lan.holds(ipaddress.ip_address("192.0.2.9"))


def test_reading_the_interfaces_is_cheap(gateway: netns.Network) -> None:
    """Measured, not asserted: what one read (three dumps) costs; ClientAccess does it at most once a second."""
    with gateway.entered(f"{gateway.tag}gw"):
        read_interfaces()
        started = time.perf_counter()
        for _ in range(50):
            read_interfaces()
    print(f"read_interfaces: {(time.perf_counter() - started) / 50 * 1e6:.0f} µs per read (links, addresses, routes)")
