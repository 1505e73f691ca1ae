"""A client on the gateway's own LAN is served, whatever its address; every other public client is refused.

The decision (`tlsgate.tls.lan`) is pure: prefixes in, verdict out. The reading
of the kernel's interfaces is tested against the real kernel in
tests/live/test_lan_interfaces.py; here its parser meets hostile bytes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import connection, exceptions
from mitmproxy.proxy import mode_specs
from mitmproxy.test import taddons, tflow

from tlsgate.addons.access import REFRESH_SECONDS, Block, ClientAccess, Interfaces, LanView
from tlsgate.tls import netlink
from tlsgate.tls.lan import MIN_PREFIX, Lan, LanPrefix, client_refusal, lan_of, parse_named_prefixes
from tlsgate.tls.netlink import Address, Link, NetlinkError, Route

LAN6 = ipaddress.ip_network("2a01:db9:1:2::/64")  # global unicast, as an ISP delegates; not a documentation range
WAN6 = ipaddress.ip_network("2a01:db9:ffff:1::/64")
LINKS = [Link(1, "lo", True), Link(2, "eth0", False), Link(3, "wlan0", False)]
DEFAULT4, DEFAULT6 = Route(ipaddress.ip_network("0.0.0.0/0"), (2,)), Route(ipaddress.ip_network("::/0"), (2,))


def address(index: int, text: str, peer: str | None = None, failed: bool = False) -> Address:
    interface = ipaddress.ip_interface(text)
    network = ipaddress.ip_network(peer, strict=False) if peer else interface.network
    return Address(index, interface.ip, network, failed)


def gateway(*extra: Address, routes: tuple[Route, ...] = (DEFAULT4, DEFAULT6)) -> Lan:
    """The README's transparent gateway: eth0 faces the internet (default routes), wlan0 the devices."""
    addresses = [
        address(1, "127.0.0.1/8"),
        address(1, "::1/128"),
        address(2, "203.0.113.7/24"),
        address(2, f"{WAN6[7]}/64"),
        address(3, "192.168.50.1/24"),
        address(3, f"{LAN6[1]}/64"),
        *extra,
    ]
    return lan_of(LINKS, addresses, routes)


def refusal(client: str, lan: Lan, *, block_global: bool = True, block_private: bool = False) -> str | None:
    return client_refusal(client, lambda: lan, block_global=block_global, block_private=block_private)


def never() -> Lan:
    raise AssertionError("the LAN was read for a client whose answer does not depend on it")


# -- the decision -------------------------------------------------------------------------------------


def test_a_device_on_the_gateways_global_lan_prefix_is_served_and_a_public_client_is_not() -> None:
    lan = gateway()
    assert [str(p) for p in lan.prefixes] == [f"{LAN6} (wlan0)"]
    assert refusal(str(LAN6[0x1234]), lan) is None
    assert refusal(f"{LAN6[0xFFFF]}%wlan0", lan) is None  # a scope id as the kernel may report it
    said = refusal("2a01:4f8::2", lan)
    assert said is not None and said.startswith("client 2a01:4f8::2 killed by block_global: a public address off")
    assert f"{LAN6} (wlan0)" in said and "--set tlsgate_lan_prefixes=<that LAN's prefix>" in said
    assert refusal("8.8.8.8", lan) is not None


def test_private_and_local_clients_never_cost_a_read_of_the_interfaces() -> None:
    for client in ("10.0.0.2", "192.168.50.9", "fd00:231:1::2", "fe80::1%wlan0", "100.64.0.9", "127.0.0.1", "::1"):
        assert client_refusal(client, never, block_global=True, block_private=False) is None, client
    assert client_refusal("2a01:4f8::2", never, block_global=False, block_private=False) is None  # --allow-public-clients


def test_the_internet_side_link_is_not_a_lan_even_though_it_is_on_link() -> None:
    """A cloud VM's eth0 holds a /20 or /64 shared with other tenants: on-link, but nobody's LAN."""
    lan = gateway()
    for neighbour in (str(WAN6[99]), "203.0.113.99"):
        said = refusal(neighbour, lan)
        assert said is not None and "eth0 carries this host's default route" in said, said
    assert f"--set tlsgate_lan_prefixes={WAN6}" in (refusal(str(WAN6[99]), lan) or "")
    # ... unless the operator names it: a laptop whose phones share its Wi-Fi.
    named = lan_of(LINKS, [address(2, f"{WAN6[7]}/64")], [DEFAULT6], named=parse_named_prefixes([str(WAN6)]))
    assert refusal(str(WAN6[99]), named) is None


def test_the_hosts_own_addresses_are_its_own_clients_on_any_interface() -> None:
    lan = gateway()
    assert refusal(str(WAN6[7]), lan) is None and refusal("203.0.113.7", lan) is None
    assert refusal(f"::ffff:{'203.0.113.7'}", lan) is None  # IPv4-mapped, as a dual-stack socket reports it


def test_prefixes_wider_than_a_site_are_never_a_lan() -> None:
    """An address with /0 would make the whole internet on-link; 6to4 and Teredo interfaces carry /16 and /32."""
    wide = gateway(
        address(3, "2a01:db9:77::1/0"),
        address(3, "2002:c000:204::1/16"),
        address(3, "2001:0:4136:e378::1/32"),
        address(3, "2a01:dba::1/47"),
        address(3, "11.0.0.1/7"),
    )
    for client in ("2a01:4f8::2", "2002:c000:204::9", "2001:0:4136:e378::9", "2a01:dba:0:1::9", "11.9.9.9"):
        said = refusal(client, wide)
        assert said is not None, client
    said = refusal("2a01:dba:0:1::9", wide) or ""
    assert "it is on 2a01:dba::/47 of wlan0, not taken as a LAN because a /47 is wider than any site's LAN" in said
    assert "--set tlsgate_lan_prefixes=<the LAN itself, a narrower prefix>" in said  # never a prefix it would refuse
    edge = gateway(address(3, "2a01:dbb::1/48"), address(3, "12.0.0.1/8"))
    assert refusal("2a01:dbb:0:ffff::9", edge) is None and refusal("12.255.0.9", edge) is None
    assert MIN_PREFIX == {4: 8, 6: 48}


def test_documentation_and_tunnel_ranges_are_refused_unless_they_are_the_lans() -> None:
    lan = gateway()
    for client in ("198.51.100.7", "2001:db8::1", "2001:0:4136:e378::1"):
        said = refusal(client, lan)
        assert said is not None and "is in a documentation or tunnel range" in said, client
    assert refusal("2002:c000:204::1", lan) is not None  # 6to4 is global to Python: refused as public
    lab = gateway(address(3, "2001:db8:50::1/64"), address(3, "198.51.100.1/24"))  # a lab's own choice of prefix
    assert refusal("2001:db8:50::9", lab) is None and refusal("198.51.100.7", lab) is None


def test_what_makes_an_interface_the_internet_side() -> None:
    lan4 = address(3, "130.83.1.1/16")  # a university LAN with public IPv4
    vpn_trick = Route(ipaddress.ip_network("0.0.0.0/1"), (3,))  # OpenVPN's def1: the internet, in halves
    private_aggregate = Route(ipaddress.ip_network("10.0.0.0/8"), (3,))  # an internal router on the LAN
    ula_aggregate = Route(ipaddress.ip_network("fc00::/7"), (3,))
    assert refusal("130.83.9.9", lan_of(LINKS, [lan4], [vpn_trick])) is not None
    assert refusal("130.83.9.9", lan_of(LINKS, [lan4], [private_aggregate, ula_aggregate, DEFAULT4])) is None
    multipath = Route(ipaddress.ip_network("::/0"), (2, 3))
    assert refusal(str(LAN6[9]), lan_of(LINKS, [address(3, f"{LAN6[1]}/64")], [multipath])) is not None
    # A default route whose interface the dump does not name (a nexthop object): any interface may be the internet.
    unknown = lan_of(LINKS, [address(3, f"{LAN6[1]}/64")], [Route(ipaddress.ip_network("::/0"), ())])
    said = refusal(str(LAN6[9]), unknown)
    assert said is not None and "names no interface" in said


def test_loopback_dead_and_point_to_point_addresses() -> None:
    lan = lan_of(
        LINKS,
        [
            address(1, "192.0.2.0/24"),  # AnyIP on lo: the host answers for the range, it is no LAN
            address(3, f"{LAN6[1]}/64", failed=True),  # duplicate address detection failed: not in use
            address(3, "11.9.9.1/32", peer="11.9.9.2/32"),  # point-to-point: only the peer is on the link
        ],
        [],
    )
    assert refusal("192.0.2.9", lan) is not None and refusal("192.0.2.0", lan) is None  # its own address only
    assert refusal(str(LAN6[9]), lan) is not None and refusal(str(LAN6[1]), lan) is not None
    assert refusal("11.9.9.2", lan) is None and refusal("11.9.9.3", lan) is not None


def test_block_private_takes_lan_clients_as_private() -> None:
    lan = gateway()
    assert refusal("192.168.50.9", lan, block_private=True) is not None
    assert refusal(str(LAN6[9]), lan, block_private=True) is not None
    assert refusal("127.0.0.1", lan, block_private=True) is None  # as mitmproxy: loopback always
    assert refusal("2a01:4f8::2", lan, block_global=False, block_private=True) is None


def test_an_unreadable_lan_refuses_public_clients_and_says_why() -> None:
    said = refusal("2a01:4f8::2", Lan(note="cannot read the interfaces: [Errno 13] Permission denied"))
    assert said is not None and "Permission denied" in said
    assert refusal("not an address", gateway()) == "client 'not an address' is not an IP address"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("::/0", "wider than any site's LAN"),
        ("2a01::/16", "wider than any site's LAN"),
        ("0.0.0.0/0", "wider than any site's LAN"),
        ("lan", "is not a prefix like"),
        ("2a01:db9:1:2::/129", "is not a prefix like"),
    ],
)
def test_a_named_prefix_that_would_open_the_proxy_is_refused(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_named_prefixes(["2a01:db9:1:2::/64", value])
    assert parse_named_prefixes([" 2a01:db9:1:2::1/64", "10.0.0.0/8", "2a01:db9:1:2::/64"]) == (
        LAN6,
        ipaddress.ip_network("10.0.0.0/8"),
    )


# -- properties ---------------------------------------------------------------------------------------

prefix_lengths = st.integers(min_value=0, max_value=128)
global6 = st.integers(min_value=0x2A01 << 112, max_value=(0x2A02 << 112) - 1).map(ipaddress.IPv6Address)


@settings(max_examples=300, deadline=None)
@given(
    on_lan=st.lists(st.tuples(global6, prefix_lengths, st.sampled_from([2, 3])), max_size=6),
    client=global6,
    default_on=st.sampled_from([(), (2,), (3,), (2, 3)]),
)
def test_a_public_client_is_served_only_from_a_lan_prefix_or_the_host_itself(
    on_lan: list[tuple[ipaddress.IPv6Address, int, int]], client: ipaddress.IPv6Address, default_on: tuple[int, ...]
) -> None:
    """Against a brute-force model: whatever the interfaces hold, nothing opens the proxy to other addresses."""
    addresses = [Address(index, ip, ipaddress.ip_network(f"{ip}/{length}", strict=False)) for ip, length, index in on_lan]
    lan = lan_of(LINKS, addresses, [Route(ipaddress.ip_network("::/0"), default_on)] if default_on else [])
    served = refusal(str(client), lan) is None
    lan_networks = [a.network for a in addresses if a.network.prefixlen >= 48 and a.index not in default_on]
    expected = client in {a.local for a in addresses} or any(client in network for network in lan_networks)
    assert served == expected
    assert refusal(str(client), lan, block_global=False) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_peer_text_gets_an_answer_not_a_traceback(text: str) -> None:
    said = refusal(text, gateway())
    assert said is None or said.startswith("client ")


# -- the kernel's dump, hostile -------------------------------------------------------------------------


def _message(kind: int, body: bytes, sequence: int = 7, flags: int = 2) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, sequence, 0) + body + bytes(-len(body) % 4)


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + bytes(-len(value) % 4)


def test_a_dump_is_parsed_as_the_kernel_lays_it_out() -> None:
    """The layouts of linux/rtnetlink.h; the live test compares a real dump with `ip`'s view of the same kernel."""
    dump = netlink.Dump(7)
    datagram = (
        _message(netlink.RTM_NEWLINK, struct.pack("=BxHiII", 0, 1, 3, 0x1043, 0) + _attr(3, b"wlan0\0"))
        + _message(netlink.RTM_NEWADDR, struct.pack("=BBBBI", 10, 64, 0x80, 0, 3) + _attr(1, LAN6[1].packed))
        + _message(
            netlink.RTM_NEWADDR,
            struct.pack("=BBBBI", 2, 32, 0, 0, 4) + _attr(2, bytes([11, 9, 9, 1])) + _attr(1, bytes([11, 9, 9, 2])),
        )  # fmt: skip
        + _message(
            netlink.RTM_NEWADDR,
            struct.pack("=BBBBI", 10, 64, 0, 0, 3) + _attr(1, LAN6[2].packed) + _attr(8, struct.pack("=I", 0x08)),
        )  # fmt: skip
        + _message(
            netlink.RTM_NEWROUTE, struct.pack("=BBBBBBBBI", 10, 0, 0, 0, 254, 9, 0, 1, 0) + _attr(4, struct.pack("=I", 2))
        )  # fmt: skip
        + _message(
            netlink.RTM_NEWROUTE,
            struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 254, 3, 0, 1, 0)
            + _attr(9, struct.pack("=HBBi", 8, 0, 0, 2) + struct.pack("=HBBi", 8, 0, 0, 3)),
        )  # fmt: skip
        + _message(
            netlink.RTM_NEWROUTE, struct.pack("=BBBBBBBBI", 10, 128, 0, 0, 255, 2, 0, 2, 0) + _attr(1, LAN6[1].packed)
        )  # fmt: skip
        + _message(netlink.RTM_NEWROUTE, struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 254, 3, 0, 1, 0), sequence=99)
        + _message(netlink.NLMSG_DONE, struct.pack("=i", 0))
    )
    netlink.read_reply(dump, datagram)
    assert dump.done and not dump.interrupted
    assert dump.links == [Link(3, "wlan0", False)]  # up, broadcast, running, multicast: not IFF_LOOPBACK
    assert dump.addresses == [
        Address(3, LAN6[1], LAN6),
        Address(4, ipaddress.ip_address("11.9.9.1"), ipaddress.ip_network("11.9.9.2/32")),
        Address(3, LAN6[2], LAN6, failed=True),
    ]
    assert dump.routes == [DEFAULT6, Route(ipaddress.ip_network("0.0.0.0/0"), (2, 3))]  # local route and seq 99 skipped


def test_a_refused_or_interrupted_dump_says_so() -> None:
    with pytest.raises(NetlinkError, match="refused the request"):
        netlink.read_reply(netlink.Dump(7), _message(netlink.NLMSG_ERROR, struct.pack("=i", -1) + bytes(16)))
    interrupted = netlink.Dump(7)
    netlink.read_reply(interrupted, _message(netlink.NLMSG_DONE, struct.pack("=i", 0), flags=2 | 0x10))
    assert interrupted.interrupted


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=3))
def test_hostile_dump_bytes_raise_only_netlink_errors(data: bytes, framing: int) -> None:
    """Garbage, and garbage inside well-framed messages of each kind: parsed or NetlinkError, nothing else."""
    kind = (0, netlink.RTM_NEWLINK, netlink.RTM_NEWADDR, netlink.RTM_NEWROUTE)[framing]
    datagram = _message(kind, data) if kind else data
    with contextlib.suppress(NetlinkError):
        netlink.read_reply(netlink.Dump(7), datagram)


# -- the add-on -----------------------------------------------------------------------------------------


class Kernel:
    """Stands in for rtnetlink in the add-on tests: what `read_interfaces` would return, and how often it was asked."""

    def __init__(self, *addresses: Address, routes: tuple[Route, ...] = (DEFAULT6,)) -> None:
        self.addresses, self.routes, self.reads = list(addresses), list(routes), 0
        self.error: OSError | None = None

    def __call__(self) -> Interfaces:
        self.reads += 1
        if self.error:
            raise self.error
        return LINKS, self.addresses, self.routes


def test_the_view_reads_again_only_when_stale_and_logs_a_renumbered_lan(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    kernel = Kernel(address(3, f"{LAN6[1]}/64"))
    view = LanView(kernel, lambda: now[0])
    assert view.current().prefixes == (LanPrefix(LAN6, "wlan0"),)
    for _ in range(1000):
        view.current()
    assert kernel.reads == 1
    kernel.addresses = [address(3, "2a01:db9:1:3::1/64")]  # the ISP delegated a new prefix
    now[0] += REFRESH_SECONDS
    with caplog.at_level(logging.INFO, "tlsgate.access"):
        assert [str(p.network) for p in view.current().prefixes] == ["2a01:db9:1:3::/64"]
    assert (
        kernel.reads == 2
        and "LAN prefixes changed: this host's LAN prefixes with public addresses: 2a01:db9:1:3::/64" in caplog.text
    )
    kernel.error = PermissionError(13, "Permission denied")
    now[0] += REFRESH_SECONDS
    failed = view.current()
    assert failed.prefixes == () and "Permission denied" in failed.note  # fail closed: public clients refused


def client(address: str, mode: str = "regular") -> connection.Client:
    conn = tflow.tclient_conn()
    conn.peername = (address, 50000)
    conn.proxy_mode = mode_specs.ProxyMode.parse(mode)
    return conn


def test_the_addon_serves_the_lan_and_refuses_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    kernel = Kernel(address(3, f"{LAN6[1]}/64"))
    access = ClientAccess(LanView(kernel))
    with taddons.context(Block(), access) as tctx, caplog.at_level(logging.WARNING):
        assert tctx.options.block_global is True and tctx.options.block_private is False  # mitmproxy's options, kept
        lan, public, local = client(str(LAN6[9])), client("2a01:4f8::2"), client("2a01:4f8::2", "local")
        for conn in (lan, public, local):
            access.client_connected(conn)
        assert lan.error is None and local.error is None
        assert (public.error or "").startswith("tlsgate: client 2a01:4f8::2 killed by block_global")
        assert "2a01:4f8::2 killed by block_global" in caplog.text
        tctx.configure(access, block_global=False)
        again = client("2a01:4f8::2")
        access.client_connected(again)
        assert again.error is None
        tctx.configure(access, block_global=True, tlsgate_lan_prefixes=["2a01:4f8::/48"])
        access.client_connected(again)
        assert again.error is None
        with pytest.raises(exceptions.OptionsError, match="wider than any site's LAN"):
            tctx.configure(access, tlsgate_lan_prefixes=["::/0"])


def test_a_connection_refused_before_is_left_alone() -> None:
    """Under `mitmdump -s`, mitmproxy's own Block runs first: its refusal stands (the stricter check wins)."""
    access = ClientAccess(LanView(Kernel(address(3, f"{LAN6[1]}/64"))))
    with taddons.context(Block(), access):
        conn = client(str(LAN6[9]))
        conn.error = "Connection killed by block_global."
        access.client_connected(conn)
        assert conn.error == "Connection killed by block_global."


def test_tlsgate_runs_with_its_own_block_in_mitmproxys_place() -> None:
    """mitmproxy's Block would kill the global-address LAN devices before ClientAccess is asked."""
    import asyncio

    from mitmproxy import options

    from tlsgate.app.runner import build_master

    async def chain() -> list[object]:
        return list(build_master(options.Options()).addons.chain)

    loaded = asyncio.run(chain())
    blocks = [a for a in loaded if type(a).__name__ == "Block"]
    assert len(blocks) == 1 and isinstance(blocks[0], Block)
    assert sum(isinstance(a, ClientAccess) for a in loaded) == 1


def test_the_readmes_lan_prefix_setting_accepts_that_lan_and_nothing_else() -> None:
    """Every `--set tlsgate_lan_prefixes=...` the README shows, set as `tlsgate run --set` sets it."""
    import re

    from tests.docs import docs_text

    shown = set(re.findall(r"--set (tlsgate_lan_prefixes=[0-9a-f:./]+)", docs_text()))
    assert shown, "the README names the LAN with --set tlsgate_lan_prefixes="
    for setting in shown:
        access = ClientAccess(LanView(Kernel(routes=(DEFAULT6,))))  # a container: no LAN interface of its own
        with taddons.context(Block(), access) as tctx:
            tctx.options.set(setting)
            network = ipaddress.ip_network(setting.split("=", 1)[1])
            inside, outside = client(str(network[0x42])), client("2a01:4f8::2")
            access.client_connected(inside)
            access.client_connected(outside)
            assert inside.error is None and outside.error is not None, setting


def test_a_flood_of_refusals_is_logged_once_a_minute_per_refusal(caplog: pytest.LogCaptureFixture) -> None:
    access = ClientAccess(LanView(Kernel(address(3, f"{LAN6[1]}/64"))))
    with taddons.context(Block(), access), caplog.at_level(logging.WARNING, "tlsgate.access"):
        conns = [client("2a01:4f8::2") for _ in range(100)] + [client("2a01:4f8::3")]
        for conn in conns:
            access.client_connected(conn)
        assert all(conn.error for conn in conns)  # every one refused ...
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "2a01:4f8::2" in lines[0] and "2a01:4f8::3" in lines[1]  # ... each said once


def test_a_client_that_cannot_be_judged_is_refused() -> None:
    """Fail closed: an error inside the decision (here: the LAN view itself breaks) refuses, never serves."""

    class Broken(LanView):
        def current(self) -> Lan:
            raise RuntimeError("boom")

    access = ClientAccess(Broken())
    with taddons.context(Block(), access):
        conn = client("2a01:4f8::2")
        access.client_connected(conn)
        assert conn.error == "tlsgate: client 2a01:4f8::2 refused: its access could not be judged (RuntimeError: boom)"
        private = client("192.168.50.9")
        access.client_connected(private)
        assert private.error is None  # a private client's answer never needed the view
