"""WireGuard peers: the store (keys, addresses, 0600 files), client configs, endpoints, the CLI and the mode server."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import ipaddress
import json
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import mitmproxy_rs
import pytest
import segno
from mitmproxy.proxy import mode_servers, mode_specs
from mitmproxy.test import taddons, tflow

from tlsgate.addons import state, wireguard
from tlsgate.addons.mitm_internals import replace_server_instance
from tlsgate.app.cli import main
from tlsgate.app.wireguard import qr_text
from tlsgate.policy import load_texts
from tlsgate.tls import wgpeers
from tlsgate.tls.wgpeers import PeerError


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- keys --------------------------------------------------------------------------------------------


def test_keys_are_wireguard_keys_as_mitmproxy_rs_reads_them() -> None:
    key = wgpeers.genkey()
    assert wgpeers.pubkey(key) == mitmproxy_rs.wireguard.pubkey(key)
    other = mitmproxy_rs.wireguard.genkey()
    assert wgpeers.pubkey(other) == mitmproxy_rs.wireguard.pubkey(other)
    assert key != wgpeers.genkey()
    with pytest.raises(PeerError, match="not a WireGuard private key"):
        wgpeers.pubkey("not-base64!")
    with pytest.raises(PeerError):
        wgpeers.pubkey("QUJD")  # base64, but 3 bytes


# -- the store -----------------------------------------------------------------------------------


def test_addresses_are_allocated_in_order_and_skip_the_dns_address() -> None:
    store = wgpeers.new_store()
    peers = [store.add(f"d{i}") for i in range(1, 55)]
    assert [p.address for p in peers[:3]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert "10.0.0.53" not in {p.address for p in peers}
    assert peers[52].address == "10.0.0.54"
    assert len({p.private_key for p in peers}) == len(peers)
    assert store.network6.network_address.packed[0] == 0xFD and store.network6.prefixlen == 64  # a ULA prefix
    assert ipaddress.IPv6Address(peers[0].address6) in store.network6
    assert len({p.address6 for p in peers}) == len(peers)


def test_explicit_address_and_the_full_network() -> None:
    store = wgpeers.new_store()
    assert store.add("lab", "192.168.77.5").address == "192.168.77.5"
    assert store.add("first").address == "10.0.0.1"
    small = wgpeers.Store(wgpeers.genkey(), ipaddress.IPv4Network("10.9.0.0/30"), store.network6)
    small.add("a")
    small.add("b")
    with pytest.raises(PeerError, match="no free address left in 10.9.0.0/30"):
        small.add("c")


@pytest.mark.parametrize(
    ("name", "address", "message"),
    [
        ("bad name", None, "is not allowed"),
        ("-dash", None, "is not allowed"),
        ("x" * 33, None, "is not allowed"),
        ("ünïcode", None, "is not allowed"),
        ("taken", None, "exists already"),
        ("ok", "10.0.0.1", "already peer 'taken'"),
        ("ok", "10.0.0.53", "DNS server"),
        ("ok", "10.0.0.0", "network or broadcast"),
        ("ok", "10.0.0.255", "network or broadcast"),
        ("ok", "8.8.8.8", "not a private unicast"),
        ("ok", "127.0.0.2", "not a private unicast"),
        ("ok", "fd00::1", "not an IPv4 address"),
        ("ok", "banana", "not an IPv4 address"),
    ],
)
def test_bad_names_and_addresses_are_refused_with_a_reason(name: str, address: str | None, message: str) -> None:
    store = wgpeers.new_store()
    store.add("taken")
    with pytest.raises(PeerError, match=message):
        store.add(name, address)
    assert [p.name for p in store.peers] == ["taken"]


def test_store_files_are_private_and_round_trip(tmp_path: Path) -> None:
    confdir = tmp_path / "certs"
    store, notes = wgpeers.load_or_create(confdir)
    assert any("created" in n for n in notes)
    store.add("phone")
    wgpeers.save(confdir, store)
    path = confdir / "wireguard" / "peers.json"
    assert mode_of(path) == 0o600 and mode_of(path.parent) == 0o700
    assert not list(path.parent.glob(".*tmp"))
    loaded = wgpeers.load(confdir)
    assert loaded is not None and loaded.to_json() == store.to_json()
    os.chmod(path, 0o644)  # someone loosened it: loading tightens it again
    wgpeers.load(confdir)
    assert mode_of(path) == 0o600
    wgpeers.record_listen(confdir, "192.0.2.7", 51999)
    assert wgpeers.last_listen(confdir) == ("192.0.2.7", 51999)
    assert mode_of(confdir / "wireguard" / "listen.json") == 0o600


def test_mitmproxy_keys_are_adopted_and_their_file_tightened(tmp_path: Path) -> None:
    legacy = tmp_path / "wireguard.conf"
    server, client = mitmproxy_rs.wireguard.genkey(), mitmproxy_rs.wireguard.genkey()
    legacy.write_text(json.dumps({"server_key": server, "client_key": client}))
    os.chmod(legacy, 0o644)  # as mitmproxy writes it
    store, notes = wgpeers.load_or_create(tmp_path)
    assert mode_of(legacy) == 0o600
    assert store.server_private_key == server
    assert [(p.name, p.address, p.private_key) for p in store.peers] == [("device-1", "10.0.0.1", client)]
    assert any("adopted" in n for n in notes)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "1:1: expected a JSON object"),
        ({"network": "10.0.0.0/24"}, "1:1: missing 'server_private_key'"),
        (
            {"server_private_key": "x", "network": "10.0.0.0/24", "network6": "fd00::/64", "peers": []},
            "1:24: .server_private_key. is not a WireGuard private key",
        ),
        ("GOOD", None),
    ],
)
def test_hand_edited_stores_fail_with_the_file_and_reason(document: object, message: str | None) -> None:
    good = wgpeers.new_store()
    good.add("a")
    if document == "GOOD":
        data = good.to_json()
        data["peers"].append({**data["peers"][0], "address": "10.0.0.9", "address6": ""})  # type: ignore[union-attr,index]
        with pytest.raises(PeerError, match=r"store.json:\d+:\d+: peer #2: the name 'a' is peer #1's already"):
            wgpeers.parse_store(json.dumps(data, indent=2), "store.json")
        data["peers"][1] = {"name": 7}  # type: ignore[index]
        with pytest.raises(PeerError, match=r"peer #2: 'name' is missing or not a peer name"):
            wgpeers.parse_store(json.dumps(data, indent=2), "store.json")
        return
    with pytest.raises(PeerError, match=f"store.json:{message}"):
        wgpeers.parse_store(json.dumps(document), "store.json")


# -- configs and endpoints -----------------------------------------------------------------------


def test_client_config_routes_both_families_into_the_tunnel() -> None:
    store = wgpeers.new_store()
    peer = store.add("pixel")
    text = wgpeers.client_config(store, peer, "192.168.1.20:51820")
    assert text == (
        "[Interface]\n"
        "# tlsgate WireGuard peer pixel\n"
        f"PrivateKey = {peer.private_key}\n"
        f"Address = 10.0.0.1/32, {peer.address6}/128\n"
        "DNS = 10.0.0.53\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {store.server_public_key}\n"
        "AllowedIPs = 0.0.0.0/0, ::/0\n"
        "Endpoint = 192.168.1.20:51820\n"
    )


@pytest.mark.parametrize(
    ("explicit", "listen", "outward", "expected", "noted"),
    [
        ("phone-lab.example:4500", None, "192.0.2.1", "phone-lab.example:4500", False),
        ("192.168.1.20", ("0.0.0.0", 51821), None, "192.168.1.20:51821", False),
        ("[fd00::7]:9", None, None, "[fd00::7]:9", False),
        ("fd00::7", None, None, "[fd00::7]:51820", False),
        (None, ("192.168.1.20", 51820), "192.0.2.1", "192.168.1.20:51820", False),
        (None, ("0.0.0.0", 51820), "192.0.2.1", "192.0.2.1:51820", True),
        (None, ("", 6000), "192.0.2.1", "192.0.2.1:6000", True),
        (None, None, "192.0.2.1", "192.0.2.1:51820", True),
    ],
)
def test_endpoint_choice(
    explicit: str | None, listen: tuple[str, int] | None, outward: str | None, expected: str, noted: bool
) -> None:
    endpoint, note = wgpeers.choose_endpoint(explicit, listen, outward)
    assert endpoint == expected
    assert (note is not None) is noted


@pytest.mark.parametrize("explicit", ["0.0.0.0", "0.0.0.0:51820", "[::]:51820", "::", "host:0", "host:99999", "[fd00::1]x", ":5"])
def test_unreachable_or_malformed_endpoints_are_refused(explicit: str) -> None:
    with pytest.raises(PeerError, match="--endpoint"):
        wgpeers.choose_endpoint(explicit, None, "192.0.2.1")


def test_no_endpoint_at_all_says_what_to_pass() -> None:
    with pytest.raises(PeerError, match="pass --endpoint"):
        wgpeers.choose_endpoint(None, ("0.0.0.0", 51820), None)


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_add_show_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    confdir = str(tmp_path / "certs")
    assert main(["wireguard", "add", "phone-a", "--confdir", confdir]) == 0
    assert main(["wireguard", "add", "phone-b", "--address", "10.0.0.42", "--confdir", confdir]) == 0
    capsys.readouterr()
    assert main(["wireguard", "show", "phone-b", "--endpoint", "10.231.1.1:51820", "--confdir", confdir]) == 0
    out, err = capsys.readouterr()
    store = wgpeers.load(Path(confdir))
    assert store is not None
    assert out == wgpeers.client_config(store, store.get("phone-b"), "10.231.1.1:51820")  # stdout is the config only
    assert err == wgpeers.by_hand(store.get("phone-b"))  # what the device must apply besides the keys, nothing else
    assert main(["wireguard", "list", "--confdir", confdir]) == 0
    out, _ = capsys.readouterr()
    assert "phone-a  10.0.0.1" in out and "10.0.0.42" in out and store.get("phone-a").public_key in out
    assert store.get("phone-a").private_key not in out
    assert main(["wireguard", "remove", "phone-a", "--confdir", confdir]) == 0
    assert main(["wireguard", "show", "phone-a", "--endpoint", "h", "--confdir", confdir]) == 1
    assert "no WireGuard peer named 'phone-a' (known: phone-b)" in capsys.readouterr().err
    assert main(["wireguard", "add", "phone-b", "--confdir", confdir]) == 1
    assert main(["wireguard", "add", "x y", "--confdir", confdir]) == 1
    assert main(["wireguard", "show", "phone-b", "--endpoint", "0.0.0.0", "--confdir", confdir]) == 1
    assert "not an address a device can reach" in capsys.readouterr().err


def test_cli_without_peers_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wireguard", "list", "--confdir", str(tmp_path)]) == 1
    assert "tlsgate wireguard add NAME" in capsys.readouterr().err
    assert not (tmp_path / "wireguard").exists()


def test_show_defaults_to_the_last_runs_endpoint_else_a_noted_guess(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wireguard", "add", "p", "--confdir", str(tmp_path)]) == 0
    wgpeers.record_listen(tmp_path, "192.168.5.5", 51820)
    capsys.readouterr()
    assert main(["wireguard", "show", "p", "--confdir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "Endpoint = 192.168.5.5:51820\n" in out and "note:" not in err  # not a guess: no note
    wgpeers.record_listen(tmp_path, "", 51820)
    assert main(["wireguard", "show", "p", "--confdir", str(tmp_path)]) in (0, 1)
    out, err = capsys.readouterr()
    assert "Endpoint = 0.0.0.0" not in out and "Endpoint = [::]" not in out
    assert "--endpoint" in err  # either a note about the guessed address or the error asking for one


def _matrix_from_half_blocks(text: str) -> list[list[int]]:
    """Undo the compact terminal rendering: each character is two module rows; drawn (light) = 0, blank (dark) = 1."""
    top = {"█": 0, "▀": 0, "▄": 1, " ": 1}
    bottom = {"█": 0, "▀": 1, "▄": 0, " ": 1}
    rows: list[list[int]] = []
    for line in text.splitlines():
        rows.append([top[c] for c in line])
        rows.append([bottom[c] for c in line])
    return rows


def test_qr_encodes_the_whole_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wireguard", "add", "p", "--confdir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["wireguard", "show", "p", "--qr", "--endpoint", "192.168.1.2", "--confdir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "PrivateKey" not in out and "scan it" in err
    store = wgpeers.load(tmp_path)
    assert store is not None
    config = wgpeers.client_config(store, store.get("p"), "192.168.1.2:51820")
    assert out == qr_text(config)
    expected = segno.make(config, error="m", micro=False)
    border = 4
    size = len(expected.matrix) + 2 * border
    drawn = _matrix_from_half_blocks(out)[:size]
    assert len(drawn) == size and all(len(row) == size for row in drawn)
    inner = [row[border:-border] for row in drawn[border:-border]]
    assert inner == [list(row) for row in expected.matrix]
    assert expected.designator.endswith("-M")  # medium error correction: survives a phone camera's glare


@pytest.mark.skipif(
    not shutil.which("zbarimg"), reason="zbarimg (Debian zbar-tools) is not installed; the structure test above still runs"
)
def test_terminal_qr_decodes_back_to_the_config(tmp_path: Path) -> None:
    """What a phone camera does, done by zbar on the terminal drawing turned back into pixels."""
    store = wgpeers.new_store()
    config = wgpeers.client_config(store, store.add("p"), "192.168.1.2:51820")
    rows = _matrix_from_half_blocks(qr_text(config))
    scale = 4
    pixels = bytearray()
    for row in rows:
        line = bytes(0 if dark else 255 for dark in row for _ in range(scale))
        pixels += line * scale
    image = tmp_path / "qr.pgm"
    image.write_bytes(f"P5 {len(rows[0]) * scale} {len(rows) * scale} 255\n".encode() + bytes(pixels))
    done = subprocess.run(["zbarimg", "--quiet", "--raw", str(image)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().rstrip("\n") == config.rstrip("\n")


# -- the mode server ------------------------------------------------------------------------------


class _Manager:
    connections: dict[object, object] = {}

    def register_connection(self, *args: object) -> None:
        raise AssertionError("no connection expected")


def _start_stop(confdir: Path, spec: str) -> tuple[dict[str, object], tuple[object, ...]]:
    async def go() -> tuple[dict[str, object], tuple[object, ...]]:
        with taddons.context(wireguard.WireGuardPeers()) as tctx:
            tctx.options.confdir = str(confdir)
            tctx.options.listen_host = "127.0.0.1"
            tctx.options.listen_port = 8080  # the HTTP proxy's port: WireGuard must not take it
            instance = mode_servers.ServerInstance.make(spec, _Manager())
            assert isinstance(instance, wireguard.PeersWireGuardServer)
            await instance.start()
            try:
                return instance.to_json(), instance.listen_addrs
            finally:
                await instance.stop()

    return asyncio.run(go())


def test_server_creates_a_first_peer_and_logs_no_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        state, addrs = _start_stop(tmp_path, "wireguard@0")
    store = wgpeers.load(tmp_path)
    assert store is not None and [p.name for p in store.peers] == ["device-1"]
    assert state["wireguard_conf"] is None  # mitmproxy would put the client's private key here
    assert addrs and addrs[0][0] == "127.0.0.1" and addrs[0][1] != 8080
    assert wgpeers.last_listen(tmp_path) == ("127.0.0.1", addrs[0][1])
    assert "tlsgate wireguard show NAME" in caplog.text and "device-1 10.0.0.1" in caplog.text
    assert store.get("device-1").private_key not in caplog.text and store.server_private_key not in caplog.text
    assert mode_of(tmp_path / "wireguard" / "peers.json") == 0o600


def test_server_passes_every_peer_and_names_them(tmp_path: Path) -> None:
    store, _ = wgpeers.load_or_create(tmp_path)
    for name in ("a", "b", "c"):
        store.add(name)
    wgpeers.save(tmp_path, store)
    seen: list[list[str]] = []
    real = mitmproxy_rs.wireguard.start_wireguard_server

    async def spy(host, port, key, peers, *handlers):  # type: ignore[no-untyped-def]
        seen.append(list(peers))
        return await real(host, port, key, peers, *handlers)

    mitmproxy_rs.wireguard.start_wireguard_server = spy
    try:
        _start_stop(tmp_path, "wireguard@0")
    finally:
        mitmproxy_rs.wireguard.start_wireguard_server = real
    assert seen == [[p.public_key for p in store.peers]]
    policy = load_texts([("p.yaml", "version: 1\ndevices:\n  10.0.0.2: pixel-b\n")])
    client = tflow.tclient_conn()
    client.proxy_mode = mode_specs.ProxyMode.parse("wireguard")
    for address, name in (("10.0.0.1", "a"), ("10.0.0.2", "pixel-b"), (store.get("b").address6, "pixel-b"), ("10.0.0.3", "c")):
        client.peername = (address, 40000)
        assert state.peer_device(client, policy) == name
    client.peername = ("10.0.0.99", 40000)
    assert state.peer_device(client, policy) is None
    client.proxy_mode = mode_specs.ProxyMode.parse("regular")
    client.peername = ("10.0.0.1", 40000)
    assert state.peer_device(client, policy) is None


def test_wireguard_path_spec_is_refused_with_a_pointer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tlsgate keeps WireGuard peers in <confdir>/wireguard/"):
        _start_stop(tmp_path, "wireguard:/tmp/some.conf")


def test_default_port_is_51820_not_the_proxy_port() -> None:
    assert wgpeers.DEFAULT_PORT == mode_specs.WireGuardMode.default_port == 51820
    source = inspect.getsource(wireguard.PeersWireGuardServer._start)
    assert "ctx.options.listen_port" not in source


# -- mitmproxy code the replacement follows (see tests/unit/test_mitm_internals.py for the idea) --------

PINNED = {
    # _start is replaced: it reads the key file and prints the client config with its private key.
    "WireGuardServerInstance._start": (mode_servers.WireGuardServerInstance._start, "9ebb1527e7fa4d0c"),
    "WireGuardServerInstance.start_udp_based_server": (
        mode_servers.WireGuardServerInstance.start_udp_based_server,
        "0381a7dd4472fdfd",
    ),
    # PeersWireGuardServer._start repeats its listen/error handling with another port rule.
    "AsyncioServerInstance._start": (mode_servers.AsyncioServerInstance._start, "f96507081fa6236b"),
    # The registry replace_server_instance edits, and the check _NotRegistered sidesteps.
    "ServerInstance.__init_subclass__": (mode_servers.ServerInstance.__init_subclass__, "bbb5acfcc6c7db7d"),
    "ServerInstance.make": (mode_servers.ServerInstance.make, "b6e5953237092bbb"),
    "WireGuardServerInstance.client_conf": (mode_servers.WireGuardServerInstance.client_conf, "1d92ac2083bef08e"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_mitmproxy_wireguard_code_the_replacement_follows_is_unchanged(name: str) -> None:
    function, pinned = PINNED[name]
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert digest == pinned, f"mitmproxy changed {name}: re-read it, bring tlsgate/addons/wireguard.py in line, then pin {digest}"


def test_replacement_is_what_mitmproxy_starts_and_is_idempotent() -> None:
    wireguard.install()
    wireguard.install()
    instance = mode_servers.ServerInstance.make("wireguard", _Manager())
    assert type(instance) is wireguard.PeersWireGuardServer
    previous = replace_server_instance("wireguard", mode_servers.WireGuardServerInstance)
    try:
        assert previous is wireguard.PeersWireGuardServer
        assert type(mode_servers.ServerInstance.make("wireguard", _Manager())) is mode_servers.WireGuardServerInstance
    finally:
        wireguard.install()


def test_banner_names_the_udp_port_and_the_show_command_never_a_key() -> None:
    from tlsgate.app.wireguard import banner_lines

    assert banner_lines(["regular"], "0.0.0.0", Path("certs")) == []
    lines = banner_lines(["regular", "wireguard"], "0.0.0.0", Path("certs"))
    assert lines[0] == "wireguard: UDP 0.0.0.0:51820; a device's config: tlsgate wireguard show NAME --qr --confdir certs"
    assert lines[1:] == [f"device:   {wgpeers.DEVICE_DUTIES}"]
    local = banner_lines(["wireguard@51999"], "127.0.0.1", Path("c"))
    assert local[0].startswith("wireguard: UDP 127.0.0.1:51999;") and "loopback only" in local[1]


def test_show_says_what_a_device_set_up_by_hand_must_apply_with_its_own_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`wg setconf` takes keys only: without both addresses, both families' routes and the resolver, IPv6 and DNS
    go around tlsgate. stderr says it with this peer's addresses; stdout stays the config alone."""
    assert main(["wireguard", "add", "phone", "--confdir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["wireguard", "show", "phone", "--endpoint", "192.168.50.1", "--confdir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    store = wgpeers.load(tmp_path)
    assert store is not None
    peer = store.get("phone")
    assert f"Address = {peer.address}/32, {peer.address6}/128\n" in out and "ip route" not in out
    assert f"ip addr add {peer.address}/32 dev wg0" in err and f"ip -6 addr add {peer.address6}/128 dev wg0" in err
    assert "ip route add 0.0.0.0/1 dev wg0" in err and "ip -6 route add ::/1 dev wg0" in err
    assert "ip -6 route add 8000::/1 dev wg0" in err and "nameserver 10.0.0.53" in err
    assert peer.private_key not in err
    assert main(["wireguard", "show", "phone", "--qr", "--endpoint", "192.168.50.1", "--confdir", str(tmp_path)]) == 0
    _, err = capsys.readouterr()
    assert "IPv6" in err and "10.0.0.53" in err  # a phone: the app applies it all, and it says so


def test_run_refuses_wireguard_with_several_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--mode", "regular", "--mode", "wireguard", "--workers", "2"]) == 2
    assert "--mode wireguard needs --workers 1" in capsys.readouterr().err
