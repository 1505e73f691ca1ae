"""WireGuard peers: one key pair and one tunnel address per device, kept in `<confdir>/wireguard/peers.json`.

mitmproxy's WireGuard mode has one client key pair and gives every phone
`Address = 10.0.0.1/32`: two phones using it at once steal each other's replies
(mitmproxy_rs routes a reply to the peer that last sent from that source
address) and cannot be told apart by the policy's `devices:` section. Here each
device is a peer of its own; mitmproxy_rs already accepts a list of peer keys.

The store is one JSON file (mode 0600 in a 0700 directory: it holds private
keys), rewritten whole by rename under an exclusive lock (`update`), so that
concurrent `tlsgate wireguard add`/`remove` never lose a peer and a reader never
sees half a file. mitmproxy is not imported:
keys are X25519 from `cryptography`, in WireGuard's base64 form, so the CLI and
the unit tests need no proxy. The server key and the first peer are adopted
from a mitmproxy `wireguard.conf` found in the confdir, so a phone configured
for plain mitmproxy keeps working.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from json.scanner import make_scanner
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tlsgate.tls.privdir import PrivateDirError, ensure_private_dir

DEFAULT_PORT = 51820
DEFAULT_NETWORK = "10.0.0.0/24"  # mitmproxy's: its single peer is 10.0.0.1
DNS_ADDRESS = "10.0.0.53"  # answered by mitmproxy itself inside the tunnel (dns_resolver add-on)
STORE_DIR = "wireguard"
STORE_FILE = "peers.json"
LISTEN_FILE = "listen.json"  # where the last `run` listened, for `show`'s default Endpoint
MITMPROXY_CONF = "wireguard.conf"
LOCK_FILE = ".peers.lock"  # flock'ed for every read-modify-write of the store
MAX_STORE_BYTES = 1 << 20  # 254 peers take ~60 KiB
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
        problem = self.address_problem(ip)
        if problem:
            raise PeerError(f"--address {problem}")
        return ip

    def address_problem(self, ip: ipaddress.IPv4Address) -> str | None:
        """Why `ip` cannot be a new peer's tunnel address, or None."""
        if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local or not ip.is_private:
            return f"{ip} is not a private unicast address; use one from {self.network}"
        if str(ip) == DNS_ADDRESS:
            return f"{ip} is the tunnel's DNS server address; pick another"
        if ip in self.network and ip in (self.network.network_address, self.network.broadcast_address):
            return f"{ip} is the network or broadcast address of {self.network}"
        for peer in self.peers:
            if peer.address == str(ip):
                return f"{ip} is already peer {peer.name!r}'s"
        return None

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


def parse_store(raw: bytes | str, origin: str) -> Store:
    """The store document, checked field by field: a hand-edited or damaged file fails with `file:line:col: what`.

    The message never quotes the file: it holds private keys, and a key pasted
    into the wrong field (or a name, or an address) would otherwise be printed
    to a terminal or a CI log. Values that passed their check (peer names,
    addresses) may be named.
    """
    if len(raw) > MAX_STORE_BYTES:
        raise PeerError(f"{origin}: {len(raw)} bytes, more than a peer store ever holds (1 MiB); not a tlsgate peer store")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, col = _line_col(raw.decode("utf-8", "replace"), len(raw[: exc.start].decode("utf-8", "replace")))
            raise PeerError(f"{origin}:{line}:{col}: not UTF-8 text (a damaged file?)") from None
    else:
        text = raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PeerError(f"{origin}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise PeerError(f"{origin}: nested too deeply; not a tlsgate peer store") from None
    where = _value_offsets(text)

    def fail(at: tuple[str | int, ...], why: str) -> PeerError:
        while at not in where and at:
            at = at[:-1]
        line, col = _line_col(text, where.get(at, 0))
        return PeerError(f"{origin}:{line}:{col}: {why}")

    if not isinstance(data, dict):
        raise fail((), "expected a JSON object (a tlsgate WireGuard peer store)")
    if data.get("version", 1) != 1:
        raise fail(("version",), "'version' is not 1, the only one this tlsgate reads (written by a newer tlsgate?)")
    for key in ("server_private_key", "network", "network6", "peers"):
        if key not in data:
            raise fail((), f"missing {key!r}")
    server_key = data["server_private_key"]
    if not _is_key(server_key):
        raise fail(("server_private_key",), "'server_private_key' is not a WireGuard private key (44 base64 characters)")
    try:
        network = ipaddress.IPv4Network(_text(data["network"]))
    except ValueError:
        raise fail(("network",), "'network' is not an IPv4 network such as 10.0.0.0/24") from None
    try:
        network6 = ipaddress.IPv6Network(_text(data["network6"]))
    except ValueError:
        raise fail(("network6",), "'network6' is not an IPv6 network such as fd12:3456:789a:1::/64") from None
    store = Store(server_key, network, network6)
    peers = data["peers"]
    if not isinstance(peers, list):
        raise fail(("peers",), "'peers' must be a list")
    names: dict[str, int] = {}
    for index, item in enumerate(peers):
        at: tuple[str | int, ...] = ("peers", index)
        number = f"peer #{index + 1}"
        if not isinstance(item, dict):
            raise fail(at, f"{number} is not a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise fail((*at, "name"), f"{number}: 'name' is missing or not a peer name (1-32 letters, digits, '.', '_', '-')")
        if name in names:
            raise fail((*at, "name"), f"{number}: the name {name!r} is peer #{names[name]}'s already")
        names[name] = index + 1
        number = f"{number} ({name})"
        if not _is_key(item.get("private_key")):
            raise fail((*at, "private_key"), f"{number}: 'private_key' is not a WireGuard private key (44 base64 characters)")
        try:
            ip = ipaddress.IPv4Address(_text(item.get("address")))
        except ValueError:
            raise fail((*at, "address"), f"{number}: 'address' is not an IPv4 address such as 10.0.0.7") from None
        problem = store.address_problem(ip)
        if problem:
            raise fail((*at, "address"), f"{number}: 'address' {problem}")
        address6 = store.address6_for(ip)
        if item.get("address6"):
            try:
                address6 = ipaddress.IPv6Address(_text(item["address6"]))
            except ValueError:
                raise fail((*at, "address6"), f"{number}: 'address6' is not an IPv6 address") from None
        store.peers.append(Peer(name, item["private_key"], str(ip), str(address6)))
    return store


def _text(value: object) -> str:
    """A JSON string field's value; anything else fails the caller's parse (ValueError), as a bad string would."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _is_key(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        pubkey(value)
    except PeerError:
        return False
    return True


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


_SPACE = re.compile(r"[ \t\n\r]*")


def _value_offsets(text: str) -> dict[tuple[str | int, ...], int]:
    """Where each value of a valid JSON document starts, by path: () for the document, ("peers", 0, "name"), ...

    Only three levels deep (the store's shape); deeper values are skipped whole.
    Called after `json.loads` accepted the text, so the walk meets valid JSON only.
    """
    scan: Callable[[str, int], tuple[Any, int]] = make_scanner(cast(Any, json.JSONDecoder()))
    found: dict[tuple[str | int, ...], int] = {}

    def skip_space(pos: int) -> int:
        match = _SPACE.match(text, pos)
        return match.end() if match else pos

    def value(pos: int, path: tuple[str | int, ...]) -> int:
        pos = skip_space(pos)
        found[path] = pos
        opening = text[pos : pos + 1]
        if len(path) >= 3 or opening not in ("{", "["):
            return int(scan(text, pos)[1])
        closing = "}" if opening == "{" else "]"
        pos = skip_space(pos + 1)
        index = 0
        while text[pos] != closing:
            if opening == "{":
                key, pos = scan(text, pos)
                pos = value(skip_space(pos) + 1, (*path, key))  # past the ':'
            else:
                pos = value(pos, (*path, index))
                index += 1
            pos = skip_space(pos)
            if text[pos] == ",":
                pos = skip_space(pos + 1)
        return pos + 1

    value(0, ())
    return found


def store_dir(confdir: Path) -> Path:
    return Path(confdir).expanduser() / STORE_DIR


def prepare_dirs(confdir: Path) -> list[str]:
    """The confdir and its `wireguard/` directory, made 0700 (parents too) whatever the umask; warnings about
    an existing confdir others could write to (tlsgate/tls/privdir.py)."""
    directory = store_dir(confdir)
    try:
        notes = ensure_private_dir(Path(confdir).expanduser())
        notes += ensure_private_dir(directory)
        if stat.S_IMODE(directory.stat().st_mode) != 0o700 and directory.stat().st_uid == os.geteuid():
            os.chmod(directory, 0o700)  # tlsgate's own directory: no other mode is ever right
    except PrivateDirError as exc:
        raise PeerError(str(exc)) from None
    return notes


@contextlib.contextmanager
def locked(confdir: Path) -> Iterator[list[str]]:
    """Hold the store's lock (an exclusive `flock` on `wireguard/.peers.lock`) for one read-modify-write.

    Twelve `tlsgate wireguard add` at once each read the store, added a peer
    and wrote it back: up to six peers were lost, and an add beside a remove
    brought removed peers back. Readers need no lock: the file is replaced by
    rename, so a running tlsgate reads the old store or the new one, whole.
    Yields the notes of `prepare_dirs`.
    """
    notes = prepare_dirs(confdir)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(store_dir(confdir) / LOCK_FILE, flags, 0o600)
    except OSError as exc:
        raise PeerError(f"cannot open the peer store's lock {store_dir(confdir) / LOCK_FILE}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield notes
    finally:
        os.close(fd)  # releases the lock


def load(confdir: Path) -> Store | None:
    """The store, or None if there is none yet. Needs no lock (see `locked`)."""
    path = store_dir(confdir) / STORE_FILE
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_STORE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PeerError(f"{path}: cannot read it ({exc.strerror})") from None
    tighten(path)
    return parse_store(raw, str(path))


def update[T](confdir: Path, change: Callable[[Store], T], create: bool = True) -> tuple[Store, T, list[str]]:
    """Apply `change` to the store under its lock and save it if it changed: the only way tlsgate writes it.

    The store is created first if there is none (`create`), adopting mitmproxy's
    keys if present; otherwise a missing store is an error. Returns the store,
    what `change` returned and notes to show (what was created, loose modes).
    """
    if not create and not (store_dir(confdir) / STORE_FILE).exists():
        raise PeerError(
            f"no WireGuard peers in {store_dir(confdir)}/ yet: `tlsgate wireguard add NAME` or `tlsgate run --mode wireguard`"
        )
    with locked(confdir) as notes:
        store = load(confdir)
        before = None if store is None else store.to_json()
        if store is None:
            if not create:
                raise PeerError(f"no WireGuard peers in {store_dir(confdir)}/: removed meanwhile")
            store, created = _new_store_for(confdir)
            notes += created
        result = change(store)
        if store.to_json() != before:
            save(confdir, store)
    if before is None:
        notes.append(f"created {store_dir(confdir) / STORE_FILE} (mode 0600)")
    return store, result, notes


def load_or_create(confdir: Path) -> tuple[Store, list[str]]:
    """The store, created on first use (adopting mitmproxy's keys if present); also says what it did."""
    store, _, notes = update(confdir, lambda store: None)
    return store, notes


def ensure_first_peer(store: Store) -> Peer | None:
    """`device-1`, added to a store without peers (the first `tlsgate run --mode wireguard`)."""
    return None if store.peers else store.add(FIRST_PEER)


def _new_store_for(confdir: Path) -> tuple[Store, list[str]]:
    legacy = Path(confdir).expanduser() / MITMPROXY_CONF
    adopted = _read_mitmproxy_conf(legacy)
    if adopted is None:
        return new_store(), []
    tighten(legacy)
    store = new_store(adopted[0])
    store.add(FIRST_PEER, "10.0.0.1", adopted[1])
    return store, [f"adopted mitmproxy's keys from {legacy} as peer {FIRST_PEER!r} (10.0.0.1): existing configs keep working"]


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
    """Write the store; call it inside `locked` (as `update` does), or a concurrent writer's peers are lost."""
    prepare_dirs(confdir)
    return write_private(store_dir(confdir) / STORE_FILE, json.dumps(store.to_json(), indent=2) + "\n")


def write_private(path: Path, text: str) -> Path:
    """Replace `path` atomically with `text`: a 0600 temporary file, written and synced, renamed over it.

    The keys are never readable by others, not even briefly; a reader (a
    starting tlsgate) sees the old file or the new one, whole; and a crash or a
    power cut leaves one of the two, not an empty file.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    return path


def tighten(path: Path) -> None:
    """mitmproxy writes its wireguard.conf 0644; a key file others can read is fixed, not just reported."""
    try:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError:
        pass


def record_listen(confdir: Path, host: str, port: int) -> None:
    prepare_dirs(confdir)
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
    "or IPv6 goes around tlsgate; see the docs, WireGuard on a Linux device (docs/get-started/wireguard.md)"
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
