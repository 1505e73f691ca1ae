"""`tlsgate wireguard add | show | list | remove`: one WireGuard peer per device.

`show` prints the config on stdout and nothing else (notes go to stderr), so
scripts can pipe it into `wg setconf` or a file; `--qr` prints it as a QR code
for the phone's WireGuard app to scan. The config holds the device's private
key: it is shown on request only, never logged by `run`.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tlsgate.app.paths import default_confdir
from tlsgate.tls import wgpeers
from tlsgate.tls.wgpeers import PeerError

if TYPE_CHECKING:
    from mitmproxy.proxy import mode_specs


def add_commands(sub: argparse._SubParsersAction) -> None:
    wg = sub.add_parser(
        "wireguard",
        help="manage WireGuard peers (one per device) for --mode wireguard",
        description="One WireGuard peer per device: its own key pair and tunnel address, so the policy's "
        "`devices:` section can name it. Restart `tlsgate run --mode wireguard` after adding or removing peers.",
    )
    actions = wg.add_subparsers(metavar="ACTION")

    def confdir(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--confdir", type=Path, default=None, help="CA directory, as for `run` (same default)")

    add = actions.add_parser("add", help="create a peer with its own key pair and tunnel address")
    add.add_argument("name", metavar="NAME", help="device name: letters, digits, '.', '_', '-' (used as its device name)")
    add.add_argument(
        "--address", metavar="A", help=f"tunnel IPv4 address (default: the next free one in {wgpeers.DEFAULT_NETWORK})"
    )
    confdir(add)
    add.set_defaults(func=cmd_add)

    show = actions.add_parser("show", help="print a peer's WireGuard config (stdout) to import on the device")
    show.add_argument("name", metavar="NAME")
    show.add_argument(
        "--endpoint",
        metavar="HOST[:PORT]",
        help="address devices reach tlsgate at (default: the last run's listen host if specific, else this "
        f"machine's outward address; port: the last run's, else {wgpeers.DEFAULT_PORT})",
    )
    show.add_argument("--qr", action="store_true", help="print the config as a terminal QR code to scan with the WireGuard app")
    confdir(show)
    show.set_defaults(func=cmd_show)

    listing = actions.add_parser("list", help="list peers: name, tunnel addresses, public key")
    confdir(listing)
    listing.set_defaults(func=cmd_list)

    remove = actions.add_parser("remove", help="delete a peer (its config stops working after the next restart)")
    remove.add_argument("name", metavar="NAME")
    confdir(remove)
    remove.set_defaults(func=cmd_remove)
    wg.set_defaults(func=lambda args: wg.print_help() or 2)


def _fail(exc: Exception) -> int:
    print(f"tlsgate: {exc}", file=sys.stderr)
    return 1


def _existing(confdir: Path) -> wgpeers.Store:
    store = wgpeers.load(confdir)
    if store is None:
        raise PeerError(
            f"no WireGuard peers in {wgpeers.store_dir(confdir)}/ yet: "
            "`tlsgate wireguard add NAME` or `tlsgate run --mode wireguard`"
        )
    return store


def cmd_add(args: argparse.Namespace) -> int:
    confdir = args.confdir or default_confdir()
    try:
        wgpeers.check_name(args.name)
        _, peer, notes = wgpeers.update(confdir, lambda store: store.add(args.name, args.address))
    except (PeerError, OSError) as exc:
        return _fail(exc)
    for note in notes:
        print(note, file=sys.stderr)
    print(f"added WireGuard peer {peer.name}: {peer.address}, {peer.address6}")
    print(f"its config: tlsgate wireguard show {peer.name} --qr --confdir {confdir}  (restart a running tlsgate to accept it)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from mitmproxy.net import local_ip

    confdir = args.confdir or default_confdir()
    try:
        store = _existing(confdir)
        peer = store.get(args.name)
        endpoint, note = wgpeers.choose_endpoint(
            args.endpoint, wgpeers.last_listen(confdir), None if args.endpoint else local_ip.get_local_ip()
        )
    except (PeerError, OSError) as exc:
        return _fail(exc)
    if note:
        print(f"note: {note}", file=sys.stderr)
    config = wgpeers.client_config(store, peer, endpoint)
    if args.qr:
        sys.stdout.write(qr_text(config))
        print(f"scan it in the WireGuard app (+ > Scan from QR code); it holds {peer.name}'s private key", file=sys.stderr)
        print(f"device: {wgpeers.DEVICE_DUTIES}", file=sys.stderr)
    else:
        sys.stdout.write(config)
        print(wgpeers.by_hand(peer), file=sys.stderr, end="")
    return 0


def qr_text(text: str) -> str:
    """The QR code in UTF-8 half blocks, light modules drawn (as `qrencode -t utf8`): two module rows per line."""
    import segno

    out = io.StringIO()
    segno.make(text, error="m", micro=False).terminal(out=out, compact=True)
    return out.getvalue()


def cmd_list(args: argparse.Namespace) -> int:
    try:
        store = _existing(args.confdir or default_confdir())
    except (PeerError, OSError) as exc:
        return _fail(exc)
    rows = [("NAME", "ADDRESS", "ADDRESS6", "PUBLIC KEY")]
    rows += [(p.name, p.address, p.address6, p.public_key) for p in store.peers]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3])
    print(f"server public key: {store.server_public_key}; {len(store.peers)} peer(s)", file=sys.stderr)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    confdir = args.confdir or default_confdir()
    try:
        _, peer, notes = wgpeers.update(confdir, lambda store: store.remove(args.name), create=False)
    except (PeerError, OSError) as exc:
        return _fail(exc)
    for note in notes:
        print(note, file=sys.stderr)
    print(f"removed WireGuard peer {peer.name} ({peer.address}); restart a running tlsgate to drop it")
    return 0


def wireguard_modes(modes: list[str]) -> list[mode_specs.WireGuardMode]:
    """The `wireguard` specs among `--mode` values (unparsable ones are left for mitmproxy to report)."""
    from mitmproxy.proxy import mode_specs

    found: list[mode_specs.WireGuardMode] = []
    for text in modes:
        try:
            spec = mode_specs.ProxyMode.parse(text)
        except ValueError:
            continue
        if isinstance(spec, mode_specs.WireGuardMode):
            found.append(spec)
    return found


def banner_lines(modes: list[str], listen_host: str, confdir: Path) -> list[str]:
    """Where WireGuard listens, how to get a device's config and what the device must apply: no key in it."""
    from tlsgate.app.runner import is_loopback

    lines = []
    for spec in wireguard_modes(modes):
        host = spec.custom_listen_host if spec.custom_listen_host is not None else listen_host
        port = spec.custom_listen_port if spec.custom_listen_port is not None else wgpeers.DEFAULT_PORT
        shown = f"tlsgate wireguard show NAME --qr --confdir {confdir}"
        lines.append(f"wireguard: UDP {host or '*'}:{port}; a device's config: {shown}")
        if is_loopback(host):
            lines.append("          (loopback only: phones need --listen-host 0.0.0.0 or this machine's LAN address)")
    if lines:
        lines.append(f"device:   {wgpeers.DEVICE_DUTIES}")
    return lines
