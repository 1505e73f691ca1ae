"""`--mode wireguard` with one peer per device, on UDP 51820, with no private key on the console.

mitmproxy's WireGuard server reads one client key, prints that key's whole
config (private key included) to the console and listens on `--listen-port`
(tlsgate's HTTP proxy port). tlsgate's replacement, started by mitmproxy for
the same mode spec, differs in three things and keeps the rest (the
transparent layer, DNS at 10.0.0.53, dual-stack listening):

- every peer of `<confdir>/wireguard/peers.json` (see `tlsgate.tls.wgpeers`) is accepted,
  and a first one, `device-1`, is created when there is none;
- the port is 51820 unless the mode says `wireguard@PORT`, so
  `--mode regular --mode wireguard` is TCP 8080 plus UDP 51820;
- the console names the peers and the `tlsgate wireguard show` command that
  prints their configs, never a key.

A connection from a peer's tunnel address is named by the policy's `devices:`
entry for that address, else for the peer's IPv4 address, else after the peer
(`tlsgate.addons.state.peer_device`, which reads the table this server fills).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path

import mitmproxy_rs
from mitmproxy import addonmanager, ctx
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.mode_servers import WireGuardServerInstance

from tlsgate.addons.mitm_internals import replace_server_instance
from tlsgate.addons.state import TUNNEL_DEVICES
from tlsgate.tls import wgpeers

logger = logging.getLogger("tlsgate")


class _NotRegistered:
    """Stops mitmproxy's `ServerInstance.__init_subclass__`, which refuses a second class for a mode;
    `replace_server_instance` installs the class instead."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        pass


class PeersWireGuardServer(_NotRegistered, WireGuardServerInstance):
    peer_public_keys: list[str]

    async def _start(self) -> None:
        if self.mode.data:
            raise ValueError(
                f"--mode {self.mode.full_spec}: tlsgate keeps WireGuard peers in <confdir>/wireguard/ "
                "(see `tlsgate wireguard --help`); use --mode wireguard or wireguard@PORT"
            )
        confdir = Path(ctx.options.confdir).expanduser()
        # Under the store's lock (a `tlsgate wireguard add` may be writing it), off the event loop.
        store, first, notes = await asyncio.to_thread(wgpeers.update, confdir, wgpeers.ensure_first_peer)
        if first is not None:
            notes.append(f"created WireGuard peer {first.name!r}")
        self.server_key = store.server_private_key
        self.peer_public_keys = [peer.public_key for peer in store.peers]
        host = self.mode.listen_host(ctx.options.listen_host)
        port = self.mode.custom_listen_port if self.mode.custom_listen_port is not None else wgpeers.DEFAULT_PORT
        try:
            self._servers = await self.listen(host, port)
        except OSError as exc:
            hint = f" (try --mode wireguard@{port + 1})" if exc.errno == errno.EADDRINUSE else ""
            raise OSError(exc.errno, f"WireGuard server failed to listen on UDP {host or '*'}:{port}: {exc}{hint}") from exc
        addrs = self.listen_addrs
        bound = addrs[0][1] if addrs else port
        try:
            wgpeers.record_listen(confdir, host, bound)  # only a default for `tlsgate wireguard show`
        except OSError as exc:
            logger.warning(f"WireGuard: could not record the listen address for `tlsgate wireguard show`: {exc}")
        TUNNEL_DEVICES.clear()
        for peer in store.peers:
            TUNNEL_DEVICES[peer.address] = TUNNEL_DEVICES[peer.address6] = (peer.name, peer.address)
        for note in notes:
            logger.info(f"WireGuard: {note}")
        peers = ", ".join(f"{p.name} {p.address}" for p in store.peers)
        logger.info(
            f"WireGuard: {len(store.peers)} peer(s): {peers}. A device's config (import it in the WireGuard app): "
            f"`tlsgate wireguard show NAME --qr --confdir {confdir}`; add devices with `tlsgate wireguard add NAME` "
            "and restart."
        )

    async def start_udp_based_server(self, host: str, port: int) -> mitmproxy_rs.wireguard.WireGuardServer:
        return await mitmproxy_rs.wireguard.start_wireguard_server(
            host, port, self.server_key, self.peer_public_keys, self.handle_stream, self.handle_stream
        )

    def client_conf(self) -> str | None:
        """None: mitmproxy would show a config with a private key in its web UI state; `tlsgate wireguard show` does."""
        return None


class WireGuardPeers:
    """Installs `PeersWireGuardServer` for `--mode wireguard` before mitmproxy starts its servers."""

    def load(self, loader: addonmanager.Loader) -> None:
        install()


def install() -> None:
    replaced = replace_server_instance(mode_specs.WireGuardMode.type_name, PeersWireGuardServer)
    if replaced is not PeersWireGuardServer and replaced is not WireGuardServerInstance:
        raise RuntimeError(f"another add-on already replaced the WireGuard server ({replaced.__name__})")
