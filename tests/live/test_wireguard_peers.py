"""Two phones on one tlsgate WireGuard server at once, each its own peer, told apart in findings and metrics.

Real parts only: `tests/netns.py`'s namespaces (device <-> gateway <-> upstream)
plus a second device namespace, a real `wireguard-go` tunnel in each device
configured from `tlsgate wireguard show`, tlsgate in the gateway namespace and
an HTTPS upstream in the upstream namespace. The devices' default routes (IPv4
and IPv6) point into their tunnels; the gateway still forwards both families
(the first device's LAN is dual-stack), so a request that skipped the tunnel
would reach the upstream from the device's own address: the upstream seeing
only the gateway's address is the proof that tlsgate carried it.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.certgen import make_chain, write_pem, write_server_files
from tests.harness import Tlsgate, eventually

HOST = "api.wg.test"
PROXY_HOST = "proxy.wg.test"  # asked for through the regular (HTTP proxy) mode of the same run
UPSTREAM_V6 = netns.ip6_of(netns.UPSTREAM_NET + ".10")
GATEWAY_V6 = netns.GATEWAY_UPSTREAM_SIDE6
SECOND_DEVICE_NET = "10.231.3"
WRONG_PIN = "sha256/" + "A" * 43 + "="  # well-formed, matches nothing: a reported finding per connection
WG_PORT = 51820


@dataclass
class Recorder:
    """What reached the HTTPS upstream: (path, client address) per request."""

    seen: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            with recorder.lock:
                recorder.seen.append((self.path, self.client_address[0]))
            body = f"hello {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _V6Server(ThreadingHTTPServer):
    address_family = __import__("socket").AF_INET6


@dataclass
class Lab:
    net: netns.Network
    second: str  # the second device namespace
    workdir: Path
    recorder: Recorder
    upstream_ca: Path
    servers: list[ThreadingHTTPServer]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    for tool in ("wireguard-go", "wg", "curl"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    try:
        net = netns.build()
    except netns.NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable here: {exc}")
    second = f"{net.tag}dv2"
    servers: list[ThreadingHTTPServer] = []
    try:
        netns.ip("netns", "add", second)
        net.created.append(second)
        netns.ip("link", "add", "dev0", "netns", second, "type", "veth", "peer", "name", "gw-dev2", "netns", net.gateway)
        for ns, link in ((second, "dev0"), (net.gateway, "gw-dev2"), (second, "lo")):
            net.run(ns, "ip", "link", "set", link, "up")
        net.run(second, "ip", "addr", "add", f"{SECOND_DEVICE_NET}.2/24", "dev", "dev0")
        net.run(net.gateway, "ip", "addr", "add", f"{SECOND_DEVICE_NET}.1/24", "dev", "gw-dev2")
        net.run(second, "ip", "route", "add", "default", "via", f"{SECOND_DEVICE_NET}.1")

        chain = make_chain(dns=(HOST, PROXY_HOST), ips=())
        cert_file, key_file = write_server_files(tmp_path, chain.leaf, chain.intermediate, name="upstream")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        recorder = Recorder()
        with net.entered(net.upstream):
            for cls, address in ((ThreadingHTTPServer, net.upstream_ips[0]), (_V6Server, UPSTREAM_V6)):
                server = cls((address, 443), _handler(recorder))
                server.daemon_threads = True
                server.socket = context.wrap_socket(server.socket, server_side=True)
                servers.append(server)
        for server in servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        yield Lab(net, second, tmp_path, recorder, write_pem(tmp_path / "upstream-root.pem", chain.root), servers)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        net.close()


def tlsgate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlsgate", *args], capture_output=True, text=True, timeout=60)


def bring_up_peer(lab: Lab, ns: str, name: str, endpoint: str, confdir: Path) -> dict[str, str]:
    """What a user does on a phone, done with wireguard-go: import the config `tlsgate wireguard show` prints.

    The interface name is unique on the machine, not just in `ns`: wireguard-go's control socket
    (/var/run/wireguard/NAME.sock) lives in the shared file system.
    """
    link = f"tgw{os.getpid()}{name[-1]}"
    shown = tlsgate_cli("wireguard", "show", name, "--endpoint", endpoint, "--confdir", str(confdir))
    assert shown.returncode == 0, shown.stderr
    config = shown.stdout
    fields = {key.strip(): value.strip() for key, _, value in (line.partition("=") for line in config.splitlines()) if _}
    assert fields["Endpoint"] == endpoint and fields["AllowedIPs"] == "0.0.0.0/0, ::/0"
    # wg setconf takes the [Interface]/[Peer] keys only; Address and DNS are wg-quick's, applied with `ip` here.
    setconf = lab.workdir / f"{name}.wg"
    setconf.write_text("".join(line + "\n" for line in config.splitlines() if not line.startswith(("Address", "DNS"))))
    os.chmod(setconf, 0o600)
    lab.net.spawn(ns, ["wireguard-go", link], env={**os.environ, "WG_PROCESS_FOREGROUND": "1"}, stdout=subprocess.DEVNULL)
    assert eventually(lambda: lab.net.run(ns, "ip", "link", "show", link, check=False).returncode == 0, timeout=20)
    lab.net.run(ns, "wg", "setconf", link, str(setconf))
    v4, v6 = (part.strip() for part in fields["Address"].split(","))
    lab.net.run(ns, "ip", "addr", "add", v4, "dev", link)
    lab.net.run(ns, "ip", "-6", "addr", "add", v6, "dev", link, "nodad")
    lab.net.run(ns, "ip", "link", "set", link, "up")
    lab.net.run(ns, "ip", "route", "replace", "default", "dev", link)
    lab.net.run(ns, "ip", "-6", "route", "replace", "default", "dev", link)
    return fields


def fetch(lab: Lab, ns: str, path: str, ca: Path, address: str, timeout: int = 10) -> tuple[int, str]:
    target = f"[{address}]" if ":" in address else address
    done = lab.net.run(
        ns,
        "curl", "-sS", "--noproxy", "*", "--cacert", str(ca), "--max-time", str(timeout),
        "--resolve", f"{HOST}:443:{target}", "-o", "/dev/null", "-w", "%{http_code}",
        f"https://{HOST}{path}",
        check=False, timeout=timeout + 10,
    )  # fmt: skip
    return int(done.stdout or 0), done.stderr.strip()


def test_two_wireguard_peers_proxy_at_once_and_are_named_apart(lab: Lab) -> None:
    net = lab.net
    confdir = lab.workdir / "certs"
    for name in ("phone-a", "phone-b"):
        added = tlsgate_cli("wireguard", "add", name, "--confdir", str(confdir))
        assert added.returncode == 0, added.stderr
    policy = lab.workdir / "policy.yaml"
    # phone-b is named by the policy; phone-a by nothing but its peer name.
    policy.write_text(
        "version: 1\n"
        "defaults:\n  mode: enforce\n"
        "devices:\n  10.0.0.2: pixel-b\n"
        f"rules:\n  - hosts: [{HOST}]\n    mode: report\n    pins: ['{WRONG_PIN}']\n"
    )
    gate = Tlsgate(
        lab.workdir,
        command=net.netns_command(
            net.gateway,
            [
                sys.executable, "-m", "tlsgate", "run", "--listen-host", netns.GATEWAY_DEVICE_SIDE, "--listen-port", "0",
                "--mode", "regular", "--mode", "wireguard", "--metrics-port", "0", "--confdir", str(confdir),
                "--findings", str(lab.workdir / "findings.jsonl"), "--policy", str(policy),
                "--upstream-ca", str(lab.upstream_ca), "--resolve", f"{PROXY_HOST}:443:{net.upstream_ips[0]}",
            ],
        ),
    )  # fmt: skip
    try:
        check_two_peers(lab, gate, confdir)
    finally:
        gate.stop()


def check_two_peers(lab: Lab, gate: Tlsgate, confdir: Path) -> None:
    net = lab.net
    peer_a = bring_up_peer(lab, net.device, "phone-a", f"{netns.GATEWAY_DEVICE_SIDE}:{WG_PORT}", confdir)
    # The second device reaches the same endpoint through the gateway: a host route keeps it out of its own tunnel.
    net.run(lab.second, "ip", "route", "add", netns.GATEWAY_DEVICE_SIDE, "via", f"{SECOND_DEVICE_NET}.1")
    peer_b = bring_up_peer(lab, lab.second, "phone-b", f"{netns.GATEWAY_DEVICE_SIDE}:{WG_PORT}", confdir)
    assert peer_a["Address"] != peer_b["Address"] and peer_a["PrivateKey"] != peer_b["PrivateKey"]

    started = time.monotonic()
    gate.start(timeout=60)
    net.wait_udp_bound(net.gateway, WG_PORT)
    listening = time.monotonic() - started
    first: dict[str, float] = {}

    def first_ok(ns: str) -> bool:
        status, _ = fetch(lab, ns, "/warmup", gate.ca_cert, net.upstream_ips[0], timeout=5)
        if status == 200 and not first:
            first["seconds"] = time.monotonic() - started
        return status == 200

    assert eventually(lambda: first_ok(net.device), timeout=60, interval=0.5), gate.output
    print(f"\ntlsgate run start -> listening {listening:.2f}s -> first request through the tunnel: {first['seconds']:.2f}s")
    assert eventually(lambda: first_ok(lab.second), timeout=60, interval=0.5), gate.output  # both handshakes done

    jobs = [(net.device, "/a", net.upstream_ips[0]), (lab.second, "/b", net.upstream_ips[0])]
    jobs += [(net.device, "/a6", UPSTREAM_V6), (lab.second, "/b6", UPSTREAM_V6)]
    with ThreadPoolExecutor(len(jobs) + 1) as pool:
        # The same run's HTTP proxy (TCP) serves the LAN at the same time as WireGuard (UDP 51820).
        regular = pool.submit(
            net.run, net.device, "curl", "-sS", "--noproxy", "", "-x", f"http://{netns.GATEWAY_DEVICE_SIDE}:{gate.port}",
            "--cacert", str(gate.ca_cert), "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
            f"https://{PROXY_HOST}/regular", check=False, timeout=30,
        )  # fmt: skip
        results = list(pool.map(lambda job: fetch(lab, job[0], job[1], gate.ca_cert, job[2], timeout=20), jobs))
    assert [status for status, _ in results] == [200] * len(jobs), (results, gate.output)
    assert regular.result().stdout == "200", (regular.result().stderr, gate.output)

    seen = dict(lab.recorder.seen)
    assert seen["/regular"] == netns.GATEWAY_UPSTREAM_SIDE
    assert seen["/a"] == seen["/b"] == netns.GATEWAY_UPSTREAM_SIDE  # from tlsgate, not the devices' own addresses
    assert seen["/a6"] == seen["/b6"] == GATEWAY_V6  # IPv6 went through the tunnel and tlsgate too

    assert eventually(lambda: len({f.get("device") for f in gate.findings()}) >= 2, timeout=15)
    devices = {f.get("client", "").rsplit(":", 1)[0].strip("[]"): f.get("device") for f in gate.findings()}
    assert devices.get("10.0.0.1") == "phone-a" and devices.get("10.0.0.2") == "pixel-b", gate.findings()
    v6 = {address: device for address, device in devices.items() if ":" in address}
    assert set(v6.values()) == {"phone-a", "pixel-b"}, gate.findings()  # the entry for 10.0.0.2 names its IPv6 too

    scraped = net.run(net.gateway, "curl", "-sS", f"{gate.metrics_url}/metrics").stdout
    for device in ("phone-a", "pixel-b"):
        assert f'device="{device}"' in scraped
    log = gate.output
    for secret in (peer_a["PrivateKey"], peer_b["PrivateKey"]):
        assert secret not in log and secret not in (lab.workdir / "findings.jsonl").read_text()
    assert "tlsgate wireguard show" in log
    stored = json.loads((confdir / "wireguard" / "peers.json").read_text())
    assert [p["name"] for p in stored["peers"]] == ["phone-a", "phone-b"]
    assert (confdir / "wireguard" / "peers.json").stat().st_mode & 0o777 == 0o600
