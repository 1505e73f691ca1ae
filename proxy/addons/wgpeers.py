"""WireGuard peers: one key pair and one tunnel address per device, kept in `<confdir>/wireguard/peers.json`.

mitmproxy's WireGuard mode has one client key pair and gives every phone
`Address = 10.0.0.1/32`: two phones using it at once steal each other's replies
(mitmproxy_rs routes a reply to the peer that last sent from that source
address) and cannot be told apart by the policy's `devices:` section. Here each
device is a peer of its own; mitmproxy_rs already accepts a list of peer keys.

The store is one JSON file (mode 0600 in a 0700 directory: it holds private
keys) so that adding a peer is one atomic rewrite. mitmproxy is not imported:
keys are X25519 from `cryptography`, in WireGuard's base64 form, so the CLI and
the unit tests need no proxy. The server key and the first peer are adopted
from a mitmproxy `wireguard.conf` found in the confdir, so a phone configured
for plain mitmproxy keeps working.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

DEFAULT_PORT = 51820
DEFAULT_NETWORK = "10.0.0.0/24"  # mitmproxy's: its single peer is 10.0.0.1
DNS_ADDRESS = "10.0.0.53"  # answered by mitmproxy itself inside the tunnel (dns_resolver add-on)
STORE_DIR = "wireguard"
STORE_FILE = "peers.json"
LISTEN_FILE = "listen.json"  # where the last `run` listened, for `show`'s default Endpoint
MITMPROXY_CONF = "wireguard.conf"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
FIRST_PEER = "device-1"


class PeerError(ValueError):
    """A bad name, address or store; the message says what to change."""


def genkey() -> str:
    """A WireGuard private key (clamped as `wg genkey` does)."""
    raw = bytearray(secrets.token_bytes(32))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return base64.b64encode(bytes(raw)).decode()


def pubkey(private_key: str) -> str:
    try:
        raw = base64.b64decode(private_key, validate=True)
        key = X25519PrivateKey.from_private_bytes(raw)
    except ValueError as exc:
        raise PeerError(f"not a WireGuard private key ({exc})") from None
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(public).decode()


@dataclass(frozen=True)
class Peer:
    name: str
    private_key: str = field(repr=False)
    address: str  # IPv4 inside the tunnel, what `devices:` matches
    address6: str  # ULA IPv6 inside the tunnel, so IPv6 traffic is proxied too instead of leaking around the tunnel

    @property
    def public_key(self) -> str:
        return pubkey(self.private_key)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "private_key": self.private_key, "address": self.address, "address6": self.address6}


@dataclass
class Store:
    server_private_key: str = field(repr=False)
    network: ipaddress.IPv4Network
    network6: ipaddress.IPv6Network
    peers: list[Peer] = field(default_factory=list)

    @property
    def server_public_key(self) -> str:
        return pubkey(self.server_private_key)

    def get(self, name: str) -> Peer:
        for peer in self.peers:
            if peer.name == name:
                return peer
        known = ", ".join(p.name for p in self.peers) or "none yet"
        raise PeerError(f"no WireGuard peer named {name!r} (known: {known}); add it with `tlsgate wireguard add {name}`")

    def add(self, name: str, address: str | None = None, private_key: str | None = None) -> Peer:
        check_name(name)
        if any(p.name == name for p in self.peers):
            raise PeerError(f"a WireGuard peer named {name!r} exists already (see `tlsgate wireguard list`)")
        ip = self._checked_address(address) if address else self._free_address()
        peer = Peer(name, private_key or genkey(), str(ip), str(self.address6_for(ip)))
        pubkey(peer.private_key)
        self.peers.append(peer)
        return peer

    def remove(self, name: str) -> Peer:
        peer = self.get(name)
        self.peers.remove(peer)
        return peer

    def address6_for(self, ip: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
        """The IPv4 address in the low 32 bits of the ULA prefix: unique because the IPv4 addresses are."""
        return self.network6.network_address + int(ip)

    def _checked_address(self, text: str) -> ipaddress.IPv4Address:
        try:
            ip = ipaddress.IPv4Address(text.split("/")[0].strip())
        except ValueError:
            raise PeerError(f"--address {text!r} is not an IPv4 address (e.g. 10.0.0.7)") from None
        if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local or not ip.is_private:
            raise PeerError(f"--address {ip} is not a private unicast address; use one from {self.network}")
        if str(ip) == DNS_ADDRESS:
            raise PeerError(f"--address {ip} is the tunnel's DNS server address; pick another")
        if ip in self.network and ip in (self.network.network_address, self.network.broadcast_address):
            raise PeerError(f"--address {ip} is the network or broadcast address of {self.network}")
        for peer in self.peers:
            if peer.address == str(ip):
                raise PeerError(f"--address {ip} is already peer {peer.name!r}'s")
        return ip

    def _free_address(self) -> ipaddress.IPv4Address:
        used = {p.address for p in self.peers} | {DNS_ADDRESS}
        for ip in self.network.hosts():
            if str(ip) not in used:
                return ip
        raise PeerError(f"no free address left in {self.network}; remove a peer or give --address")

    def to_json(self) -> dict[str, object]:
        return {
            "version": 1,
            "server_private_key": self.server_private_key,
            "network": str(self.network),
            "network6": str(self.network6),
            "peers": [p.to_json() for p in self.peers],
        }


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise PeerError(
            f"peer name {name!r} is not allowed: 1-32 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def new_store(server_private_key: str | None = None) -> Store:
    # RFC 4193: a random 40-bit global ID, so two tlsgate installs never share a prefix.
    global_id = secrets.token_bytes(5)
    prefix = ipaddress.IPv6Address(b"\xfd" + global_id + b"\x00" * 10)
    return Store(
        server_private_key or genkey(),
        ipaddress.IPv4Network(DEFAULT_NETWORK),
        ipaddress.IPv6Network(f"{prefix}/64"),
    )


def parse_store(data: object, origin: str) -> Store:
    """The JSON document, checked field by field so a hand-edited file fails with a reason, not a KeyError."""

    def fail(why: str) -> PeerError:
        return PeerError(f"{origin}: {why}")

    if not isinstance(data, dict):
        raise fail("expected a JSON object")
    try:
        store = Store(
            str(data["server_private_key"]),
            ipaddress.IPv4Network(str(data["network"])),
            ipaddress.IPv6Network(str(data["network6"])),
        )
        pubkey(store.server_private_key)
        peers = data["peers"]
    except KeyError as exc:
        raise fail(f"missing {exc.args[0]!r}") from None
    except (ValueError, PeerError) as exc:
        raise fail(str(exc)) from None
    if not isinstance(peers, list):
        raise fail("'peers' must be a list")
    for index, item in enumerate(peers):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("name", "private_key", "address")):
            raise fail(f"peer #{index + 1} needs string 'name', 'private_key' and 'address'")
        try:
            peer = store.add(item["name"], item["address"], item["private_key"])
        except PeerError as exc:
            raise fail(f"peer #{index + 1}: {exc}") from None
        if item.get("address6") and item["address6"] != peer.address6:
            store.peers[-1] = Peer(peer.name, peer.private_key, peer.address, str(ipaddress.IPv6Address(item["address6"])))
    return store


def store_dir(confdir: Path) -> Path:
    return Path(confdir).expanduser() / STORE_DIR


def load(confdir: Path) -> Store | None:
    path = store_dir(confdir) / STORE_FILE
    if not path.exists():
        return None
    tighten(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PeerError(f"{path}: {exc}") from None
    return parse_store(data, str(path))


def load_or_create(confdir: Path) -> tuple[Store, list[str]]:
    """The store, created on first use (adopting mitmproxy's keys if present); also says what it did."""
    store = load(confdir)
    if store is not None:
        return store, []
    notes: list[str] = []
    legacy = Path(confdir).expanduser() / MITMPROXY_CONF
    adopted = _read_mitmproxy_conf(legacy)
    if adopted is not None:
        tighten(legacy)
        store = new_store(adopted[0])
        store.add(FIRST_PEER, "10.0.0.1", adopted[1])
        notes.append(f"adopted mitmproxy's keys from {legacy} as peer {FIRST_PEER!r} (10.0.0.1): existing configs keep working")
    else:
        store = new_store()
    save(confdir, store)
    notes.append(f"created {store_dir(confdir) / STORE_FILE} (mode 0600)")
    return store, notes


def _read_mitmproxy_conf(path: Path) -> tuple[str, str] | None:
    try:
        data = json.loads(path.read_text())
        keys = (str(data["server_key"]), str(data["client_key"]))
        for key in keys:
            pubkey(key)
    except (OSError, ValueError, KeyError, TypeError, PeerError):
        return None
    return keys


def save(confdir: Path, store: Store) -> Path:
    return write_private(store_dir(confdir) / STORE_FILE, json.dumps(store.to_json(), indent=2) + "\n")


def write_private(path: Path, text: str) -> Path:
    """Write via a 0600 temporary file and rename: the keys are never readable by others, not even briefly."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def tighten(path: Path) -> None:
    """mitmproxy writes its wireguard.conf 0644; a key file others can read is fixed, not just reported."""
    try:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError:
        pass


def record_listen(confdir: Path, host: str, port: int) -> None:
    write_private(store_dir(confdir) / LISTEN_FILE, json.dumps({"host": host, "port": port}) + "\n")


def last_listen(confdir: Path) -> tuple[str, int] | None:
    try:
        data = json.loads((store_dir(confdir) / LISTEN_FILE).read_text())
        return str(data["host"]), int(data["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_unspecified(host: str) -> bool:
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """HOST, HOST:PORT, [V6] or [V6]:PORT; a bare IPv6 address has no port."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise PeerError(f"--endpoint {text!r}: expected [IPv6]:PORT")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    if not host:
        raise PeerError(f"--endpoint {text!r} has no host")
    if is_unspecified(host):
        raise PeerError(f"--endpoint {host} is not an address a device can reach; give this machine's LAN address or name")
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise PeerError(f"--endpoint {whole!r}: port must be 1-65535")
    return int(text)


def choose_endpoint(explicit: str | None, listen: tuple[str, int] | None, outward: str | None) -> tuple[str, str | None]:
    """HOST:PORT for a client config, and a note when it is a guess.

    Never 0.0.0.0 or ::, which a phone cannot reach: --endpoint wins, then the
    host the last `run` listened on if it was a specific one, then this
    machine's outward address (the one its default route uses).
    """
    port = listen[1] if listen else DEFAULT_PORT
    if explicit:
        host, port = parse_endpoint(explicit, port)
        return _join(host, port), None
    if listen and not is_unspecified(listen[0]):
        return _join(listen[0], port), None
    if outward:
        return _join(outward, port), (
            f"Endpoint {_join(outward, port)} is this machine's outward address; "
            "pass --endpoint HOST[:PORT] if devices reach tlsgate by another"
        )
    raise PeerError("cannot tell which address devices reach tlsgate by; pass --endpoint HOST[:PORT]")


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# What a device must apply besides the keys, said the same way by the banner and `tlsgate wireguard show`.
DEVICE_DUTIES = (
    "the WireGuard app (or wg-quick) applies the whole config: both Address entries, every IPv4 and IPv6 route into "
    f"the tunnel (AllowedIPs 0.0.0.0/0, ::/0) and DNS {DNS_ADDRESS}; set up by hand (wg setconf), do all three, "
    "or IPv6 goes around tlsgate; see README, WireGuard on a Linux device"
)


def by_hand(peer: Peer, link: str = "wg0") -> str:
    """The commands that apply what `wg setconf` leaves out (Address, routes, DNS), for this peer, on a Linux device.

    `wg setconf` takes keys and peers only. Routes are two halves per family:
    more specific than any default route the LAN gave (DHCP, router
    advertisements), so they win without removing it, and the LAN's own subnet
    routes (the endpoint) stay outside the tunnel.
    """
    return (
        f"on a Linux device without wg-quick (after `wg setconf {link} <(grep -v -e '^Address' -e '^DNS' FILE)`):\n"
        f"  ip addr add {peer.address}/32 dev {link} && ip -6 addr add {peer.address6}/128 dev {link}\n"
        f"  ip link set {link} up\n"
        f"  ip route add 0.0.0.0/1 dev {link} && ip route add 128.0.0.0/1 dev {link}\n"
        f"  ip -6 route add ::/1 dev {link} && ip -6 route add 8000::/1 dev {link}   # without these IPv6 bypasses tlsgate\n"
        f"  resolver: {DNS_ADDRESS} (`resolvectl dns {link} {DNS_ADDRESS}; resolvectl domain {link} '~.'`, "
        f"or `nameserver {DNS_ADDRESS}` in /etc/resolv.conf)\n"
    )


def client_config(store: Store, peer: Peer, endpoint: str) -> str:
    """A wg-quick configuration the WireGuard apps import: the whole device's traffic, IPv4 and IPv6, into tlsgate."""
    return (
        "[Interface]\n"
        f"# tlsgate WireGuard peer {peer.name}\n"
        f"PrivateKey = {peer.private_key}\n"
        f"Address = {peer.address}/32, {peer.address6}/128\n"
        f"DNS = {DNS_ADDRESS}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {store.server_public_key}\n"
        "AllowedIPs = 0.0.0.0/0, ::/0\n"
        f"Endpoint = {endpoint}\n"
    )
