"""Who may use the proxy: mitmproxy's `block_global`/`block_private`, with the gateway's own LAN prefixes as LAN.

mitmproxy's `Block` refuses every globally routable client address. On a
dual-stack LAN behind an ISP router the devices' IPv6 addresses are global
(the delegated prefix), so it refused the very devices a transparent gateway
serves. `ClientAccess` decides instead (`tlsgate.tls.lan.client_refusal`): a
client on a prefix of one of this host's LAN interfaces is accepted like a
private address; any other public address stays refused. Under `tlsgate run`
the lean master loads `Block` below in place of mitmproxy's (same options, no
check of its own). Under `mitmdump -s "$(tlsgate script-path)"` mitmproxy's own
`Block` still runs first, so there global LAN addresses stay refused: the
stricter of the two wins.

The prefixes are read from the kernel (rtnetlink, `read_interfaces`) in the
network namespace tlsgate runs in, and read again at most once a second, and
only while a public client is being judged: router advertisements renumber a
LAN and DHCP hands out new leases while tlsgate runs, and a private client
never costs a read.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence

from mitmproxy import connection, ctx, exceptions
from mitmproxy.addons import block
from mitmproxy.proxy import mode_specs

from tlsgate.tls import netlink
from tlsgate.tls.lan import NAMED, Lan, client_refusal, lan_of, parse_named_prefixes
from tlsgate.tls.netlink import Address, IPNetwork, Link, NetlinkError, Route
from tlsgate.tls.recent import Recent

logger = logging.getLogger("tlsgate.access")

REFRESH_SECONDS = 1.0  # how stale the LAN prefixes may be: a renumbered LAN is followed within this
READ_TIMEOUT = 2.0  # the kernel answers a dump at once; this only bounds a kernel that does not
MAX_REPLY_BYTES = 8 << 20  # ~60,000 routes: a full internet routing table is refused, not read on the event loop
NETLINK_ROUTE = 0
LOG_EVERY = 60.0  # seconds between two log lines of the same refusal
MAX_SAID = 4096  # refusals remembered for that

Interfaces = tuple[list[Link], list[Address], list[Route]]


class Block(block.Block):
    """mitmproxy's `block_global` and `block_private` options, without mitmproxy's check of them.

    `ClientAccess` applies them, knowing the LAN prefixes; mitmproxy's check
    would kill the global-address LAN devices that `ClientAccess` accepts.
    """

    def client_connected(self, client: connection.Client) -> None:
        return None


def read_interfaces() -> Interfaces:
    """This network namespace's interfaces, addresses and unicast routes, both families, from rtnetlink."""
    if not hasattr(socket, "AF_NETLINK"):
        raise OSError("no rtnetlink on this system (Linux only)")
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.settimeout(READ_TIMEOUT)
        sock.bind((0, 0))
        for _ in range(3):  # a dump the tables changed under is read again
            dumps = [_dump(sock, kind, sequence) for sequence, kind in enumerate(("links", "addresses", "routes"), 1)]
            if not any(dump.interrupted for dump in dumps):
                links, addresses, routes = dumps
                return links.links, addresses.addresses, routes.routes
    raise NetlinkError("netlink: the interfaces changed during three reads in a row")


def _dump(sock: socket.socket, kind: str, sequence: int) -> netlink.Dump:
    sock.send(netlink.request(kind, sequence))
    dump = netlink.Dump(sequence)
    total = 0
    while not dump.done:
        data, _, flags, _ = sock.recvmsg(1 << 17)
        if flags & socket.MSG_TRUNC:
            raise NetlinkError(f"netlink: a reply to the {kind} dump was cut short")
        total += len(data)
        if total > MAX_REPLY_BYTES:
            raise NetlinkError(f"netlink: more than {MAX_REPLY_BYTES >> 20} MiB of {kind} (a full routing table?)")
        netlink.read_reply(dump, data)
    return dump


class LanView:
    """The host's LAN prefixes, read again when older than REFRESH_SECONDS; changes are logged."""

    def __init__(self, read: Callable[[], Interfaces] = read_interfaces, clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self._clock = read, clock
        self.named: tuple[IPNetwork, ...] = ()
        self._lan: Lan | None = None
        self._at = 0.0

    def name(self, named: Sequence[IPNetwork]) -> None:
        self.named, self._lan = tuple(named), None

    def current(self) -> Lan:
        now = self._clock()
        if self._lan is None or now - self._at >= REFRESH_SECONDS:
            before, self._lan, self._at = self._lan, self._load(), now
            if before is not None and (before.prefixes, before.note) != (self._lan.prefixes, self._lan.note):
                logger.info(f"tlsgate: this host's LAN prefixes changed: {describe(self._lan)}")
        return self._lan

    def _load(self) -> Lan:
        try:
            return lan_of(*self._read(), named=self.named)
        except (OSError, NetlinkError) as exc:  # fail closed: public clients refused as without the LAN
            return Lan(prefixes=lan_of([], [], [], named=self.named).prefixes, note=f"cannot read the interfaces: {exc}")


def describe(lan: Lan) -> str:
    """The log line's account: which public prefixes are a LAN, and which are not, with why."""
    said = lan.summary() + (" (their clients are accepted like private ones)" if lan.prefixes else "")
    if lan.note:
        said += f"; {lan.note}"
    for passed in lan.passed_over:
        said += f"; not {passed.network} ({passed.interface}): {passed.reason}"
    return said


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ClientAccess:
    def __init__(self, view: LanView | None = None) -> None:
        self.view = view or LanView()
        self._said: Recent[str, float] = Recent(MAX_SAID)  # refusal text -> when last logged

    def load(self, loader) -> None:
        loader.add_option(
            NAMED,
            Sequence[str],
            [],
            "LAN prefixes (2a01:db9:1:2::/64) whose clients are accepted like private ones, besides the prefixes "
            "of this host's own LAN interfaces: for devices on a LAN tlsgate has no interface in (a container) "
            "or one its default route leaves by. At least /48 (IPv6) or /8 (IPv4).",
        )

    def configure(self, updated: set[str]) -> None:
        if NAMED in updated:
            try:
                self.view.name(parse_named_prefixes(ctx.options.tlsgate_lan_prefixes))
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from None

    def running(self) -> None:
        if not ctx.options.block_global or _loopback(ctx.options.listen_host):
            return
        lan = self.view.current()
        if lan.prefixes or lan.passed_over or lan.note:
            logger.info(f"tlsgate: public clients are refused; {describe(lan)}")

    def client_connected(self, client: connection.Client) -> None:
        if not client.peername or client.error or isinstance(client.proxy_mode, mode_specs.LocalMode):
            return
        try:
            refusal = client_refusal(
                client.peername[0],
                self.view.current,
                block_global=ctx.options.block_global,
                block_private=ctx.options.block_private,
            )
        except Exception as exc:  # fail closed: a client tlsgate could not judge is not served
            refusal = f"client {client.peername[0]} refused: its access could not be judged ({type(exc).__name__}: {exc})"
        if refusal:
            client.error = f"tlsgate: {refusal}"
            self._log(client.error)

    def _log(self, text: str) -> None:
        """Each refusal, worded as it is, once a minute: an internet scanner's every SYN is not a log line."""
        now = time.monotonic()
        last = self._said.peek(text)
        if last is not None and now - last < LOG_EVERY:
            return
        self._said.put(text, now)
        logger.warning(text)
