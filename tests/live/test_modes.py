"""Every documented mode, end to end, in a simulated network: a device namespace, tlsgate on a gateway, real servers.

One tlsgate per mode (a module-scoped, parametrised fixture), the device's
clients reaching it the way a phone would:

- regular:     curl -x http://GATEWAY:8080 (tlsgate resolves names: `run --resolve`)
- socks5:      curl --socks5-hostname GATEWAY:8080 (the same)
- transparent: no proxy setting; the gateway runs the README's recipe ("Transparent mode on a gateway")
               line by line, as printed, with this network's interface names: IPv4 and IPv6
- wireguard:   the README's recipe ("WireGuard on a Linux device") line by line, as printed: `tlsgate
               wireguard add/show` on the gateway, wireguard-go, addresses, routes and resolver on the device

The LAN is dual-stack (tests/netns.py): the device has an IPv6 default route
via the gateway, so whatever a recipe leaves out of IPv6 reaches the servers
directly. In the last two modes the device resolves names itself: with
`curl --resolve` (the address an app's own lookup gave), or through the
resolver the recipe set up (the tunnel's 10.0.0.53; the gateway's `dns@53`,
handed out as DHCP would). Upstream servers live in the upstream namespace,
on IPv4 and IPv6, and record what reaches them and from which address;
"nothing forwarded" is asserted on those records, never on timing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mitmproxy import dns

from tests import netns
from tests.certgen import Chain, make_chain, write_pem, write_server_files
from tests.clients import ACCEPTS, REFUSES, Builds
from tests.docs import section as docs_section
from tests.harness import REPO, CurlResult, Tlsgate, Upstream, _Handler, _Server, eventually
from tests.plainpeers import RecordingServer

MODES = ("regular", "socks5", "transparent", "wireguard")
PORT = 8080
GATEWAY = netns.GATEWAY_DEVICE_SIDE

# Upstream addresses (all in the upstream namespace), by role.
API_IP, PINNED_IP, PROBE_IP, MQTT_IP, QUIC_IP, UDP_IP, NAMED_IP = (f"{netns.UPSTREAM_NET}.{10 + i}" for i in range(7))
API_IP6, UDP_IP6 = netns.ip6_of(API_IP), netns.ip6_of(UDP_IP)
DNS_IP = API_IP  # the upstream's name server, for tlsgate's own DNS in WireGuard mode
NAMES = {
    "api.example.test": API_IP,
    "pinned.example.test": PINNED_IP,
    "probe.example.test": PROBE_IP,
    "weak.example.test": PROBE_IP,  # a protocol probe: the server is never reached, any listening address will do
    "mqtt.example.test": MQTT_IP,
    "quic.example.test": QUIC_IP,
    "named.example.test": NAMED_IP,
    "chain.example.test": PROBE_IP,  # certificate and chain probes: one host per curl configuration
    "chain-k.example.test": PROBE_IP,
    # Node, Java and Go on the device (tests/clients/), as shipped and with a known mistake: one host each.
    **{f"{client}.example.test": PROBE_IP for client in ("node", "node-bad", "java", "java-bad", "go", "go-bad")},
}
LAN_DEVICE, TUNNEL_DEVICE = "phone-lan", "phone-tunnel"

POLICY = """\
version: 1
devices:
  10.231.1.2: phone-lan
  fd00:231:1::/64: phone-lan
  10.0.0.0/24: phone-tunnel
pin_sets:
  wrong:
    pins: [{pin_a}, {pin_b}]
rules:
  - name: pinned
    hosts: [pinned.example.test]
    pins: wrong
  - name: probed
    hosts: [probe.example.test]
    client:
      probes: [self_signed]
  - name: weak-probed
    hosts: [weak.example.test]
    client:
      probes: [weak_cipher]
  - name: named-by-dns
    hosts: [named.example.test]
    mode: report
  - name: chain-probed
    hosts: [chain.example.test, chain-k.example.test]
    client:
      probes: [non_ca_issuer, cn_only, sha1_signature]
  - name: stack-probed
    hosts: [node.example.test, node-bad.example.test, java.example.test, java-bad.example.test, go.example.test, go-bad.example.test]
    client:
      probes: [self_signed, wrong_host, expired]
"""


def _family(client: str) -> int:
    """The IP version of a finding's `client` (`[fd00::2]:5000` or `10.0.0.1:5000`)."""
    return ipaddress.ip_address(client.rsplit(":", 1)[0].strip("[]")).version


def rule_line(text: str, needle: str) -> int:
    """The 1-based line of the rule holding `needle` (its `- name:` line, as findings cite rules)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if needle in line)
    return next(i for i in range(at, -1, -1) if lines[i].lstrip().startswith("- ")) + 1


# -- servers inside the upstream namespace ------------------------------------------------------------


@dataclass
class NsUpstream(Upstream):
    """tests.harness's counting server, on an IPv4 and an IPv6 address, recording each client's address."""

    peers: list[str] = field(default_factory=list)  # the address every accepted connection came from
    servers: list[_Server] = field(default_factory=list)

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


class _NsServer(_Server):
    owner: NsUpstream

    def verify_request(self, request: object, client_address: tuple[str, int]) -> bool:  # type: ignore[override]
        self.owner.peers.append(client_address[0])
        return super().verify_request(request, client_address)


class _NsServer6(_NsServer):
    address_family = socket.AF_INET6


def serve_http(net: netns.Network, name: str, address: str, port: int, context: ssl.SSLContext | None) -> NsUpstream:
    """A server on `address` and on its IPv6 twin (netns.ip6_of), bound inside the upstream namespace."""
    upstream = NsUpstream(name)
    upstream.port = port
    for cls, bound in ((_NsServer, address), (_NsServer6, netns.ip6_of(address))):
        with net.entered(net.upstream):
            server = cls((bound, port), _Handler)
        server.owner = upstream
        if context is not None:
            server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        upstream.servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return upstream


class UdpCounter:
    """Counts datagrams to one UDP port: proof that UDP/443 did or did not get around tlsgate."""

    def __init__(self, net: netns.Network, address: str, port: int) -> None:
        with net.entered(net.upstream):
            self.sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.5)
        self.payloads: list[bytes] = []
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self.payloads.append(self.sock.recv(2048))
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


class NameServer:
    """A tiny authoritative DNS server for the test names (tlsgate's `dns_name_servers` in WireGuard mode)."""

    def __init__(self, net: netns.Network, address: str, names: dict[str, str]) -> None:
        with net.entered(net.upstream):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.sock.settimeout(0.5)
        self.names = names
        self.queries: list[str] = []
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.DNSMessage.unpack(data)
            except Exception:  # noqa: BLE001 - junk on the wire is not this test's business
                continue
            question = query.question
            if question is None:
                continue
            self.queries.append(question.name)
            address = self.names.get(question.name)
            if address is None:
                answer = query.fail(dns.response_codes.NXDOMAIN)
            elif question.type == dns.types.A:
                answer = query.succeed([dns.ResourceRecord.A(question.name, ipaddress.IPv4Address(address))])
            elif question.type == dns.types.AAAA:  # every server has an IPv6 twin (netns.ip6_of)
                answer = query.succeed([dns.ResourceRecord.AAAA(question.name, ipaddress.IPv6Address(netns.ip6_of(address)))])
            else:
                answer = query.succeed([])
            self.sock.sendto(answer.packed, peer)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@dataclass
class World:
    """The network, the PKI and every upstream server; shared by all modes of this module."""

    net: netns.Network
    directory: Path
    chain: Chain
    root_file: Path
    cert_file: Path
    key_file: Path
    policy_file: Path
    policy_text: str
    api: NsUpstream
    plain: NsUpstream
    pinned: NsUpstream
    probe: NsUpstream
    named: NsUpstream
    mqtt: RecordingServer
    udp: UdpCounter
    udp6: UdpCounter
    names: NameServer
    quic_record: Path | None = None
    closers: list = field(default_factory=list)

    @property
    def policy_shown(self) -> str:
        """How block pages and findings name the policy: never the proxy host's absolute path."""
        return f"{self.policy_file.parent.name}/{self.policy_file.name}"

    def reset(self) -> None:
        for upstream in (self.api, self.plain, self.pinned, self.probe, self.named):
            upstream.connections = 0
            upstream.requests.clear()
            upstream.peers.clear()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        net = netns.build(upstream_hosts=7)
    except netns.NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable here: {exc}")
    try:
        directory = tmp_path_factory.mktemp("modes")
        chain = make_chain(dns=tuple(NAMES), ips=(API_IP,))
        root_file = write_pem(directory / "root.pem", chain.root)
        cert_file, key_file = write_server_files(directory, chain.leaf, chain.intermediate)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        from tlsgate.tls.pins import spki_pin

        stranger = make_chain()
        policy_text = POLICY.format(pin_a=spki_pin(stranger.leaf.cert), pin_b=spki_pin(stranger.intermediate.cert))
        policy_file = directory / "policy.yaml"
        policy_file.write_text(policy_text)
        with net.entered(net.upstream):
            mqtt = RecordingServer("mqtt", host=MQTT_IP, port=1883)
        world = World(
            net=net,
            directory=directory,
            chain=chain,
            root_file=root_file,
            cert_file=cert_file,
            key_file=key_file,
            policy_file=policy_file,
            policy_text=policy_text,
            api=serve_http(net, "api", API_IP, 443, context),
            plain=serve_http(net, "plain", API_IP, 80, None),
            pinned=serve_http(net, "pinned", PINNED_IP, 443, context),
            probe=serve_http(net, "probe", PROBE_IP, 443, context),
            named=serve_http(net, "named", NAMED_IP, 80, None),
            mqtt=mqtt.start(),
            udp=UdpCounter(net, UDP_IP, 443),
            udp6=UdpCounter(net, UDP_IP6, 443),
            names=NameServer(net, DNS_IP, NAMES),
        )
        world.quic_record = directory / "quic.jsonl"
        quic = net.spawn(
            net.upstream,
            [sys.executable, "-m", "tests.quicpeers", "serve", "--cert", str(cert_file), "--key", str(key_file),
             "--host", QUIC_IP, "--port", "443", "--record", str(world.quic_record)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        world.closers.append(quic)
        net.wait_udp_bound(net.upstream, 443)
        yield world
        for server in (world.api, world.plain, world.pinned, world.probe, world.named):
            server.stop()
        world.mqtt.close()
        world.udp.close()
        world.udp6.close()
        world.names.close()
    finally:
        net.close()


# -- tlsgate on the gateway, one per mode ------------------------------------------------------------


class GatewayTlsgate(Tlsgate):
    """tlsgate inside the gateway namespace (the harness runs `command`); ready once metrics are served too."""

    def start(self, timeout: float = 40) -> GatewayTlsgate:
        super().start(timeout)
        self.wait_for(r"metrics listening at", timeout)
        return self


@dataclass
class Gate:
    mode: str
    world: World
    tlsgate: GatewayTlsgate
    device: str  # the name `devices:` gives this mode's client address
    setup_seconds: float | None = None  # `tlsgate run` start to the first proxied response
    listening_seconds: float | None = None  # `tlsgate run` start to its listener being up
    configured_seconds: float | None = None  # ... to the device's side being configured (WireGuard: its interface up)

    @property
    def net(self) -> netns.Network:
        return self.world.net

    @property
    def ca(self) -> Path:
        return self.tlsgate.workdir / "certs" / "mitmproxy-ca-cert.pem"

    def reaches(self, name: str, port: int) -> list[str]:
        """How the device's client reaches `name`: through the proxy setting, or to the address its DNS gave."""
        if self.mode == "regular":
            return ["-x", f"http://{GATEWAY}:{PORT}"]
        if self.mode == "socks5":
            return ["--socks5-hostname", f"{GATEWAY}:{PORT}"]
        return ["--resolve", f"{name}:{port}:{NAMES[name]}"] if name in NAMES else []

    def curl(self, url: str, *extra: str, by_name: bool = False) -> CurlResult:
        """curl on the device; `by_name`: no proxy, no --resolve: the device's own resolver names the server."""
        name = re.match(r"https?://([^/:]+)", url).group(1)  # type: ignore[union-attr]
        port = 443 if url.startswith("https") else 80
        reaches = [] if by_name else self.reaches(name, port)
        cmd = ["curl", "-sS", "--noproxy", "", "--max-time", "15", "-D", "-", *reaches, *extra, url]
        done = self.net.run(self.net.device, *cmd, check=False, timeout=30)
        return CurlResult.parse(done)

    def findings(self, check: str | None = None, host: str | None = None) -> list[dict]:
        return [
            f for f in self.tlsgate.findings() if (check is None or f["check"] == check) and (host is None or f["host"] == host)
        ]

    def wait_finding(self, check: str, host: str, family: int | None = None) -> dict:
        """The latest `check` finding for `host` (from a client of IP `family`, if given), once it is written."""

        def found() -> list[dict]:
            return [f for f in self.findings(check, host) if family is None or _family(f["client"]) == family]

        assert eventually(lambda: bool(found()), timeout=10), f"no {check} finding for {host}: {self.tlsgate.findings()}"
        return found()[-1]

    def scrape(self) -> str:
        """/metrics as Prometheus would read it from inside the gateway namespace."""
        url = f"{self.tlsgate.metrics_url}/metrics"
        return self.net.run(self.net.gateway, "curl", "-sS", "--noproxy", "*", "--max-time", "10", url).stdout

    def lookup(self, name: str) -> list[str]:
        """The device asks tlsgate's own DNS (WireGuard: 10.0.0.53 in the tunnel; transparent: `dns@53` on the gateway)."""
        server = "10.0.0.53" if self.mode == "wireguard" else GATEWAY
        query = dns.DNSMessage(
            id=4711, query=True, op_code=dns.op_codes.QUERY, authoritative_answer=False, truncation=False,
            recursion_desired=True, recursion_available=False, reserved=0, response_code=dns.response_codes.NOERROR,
            questions=[dns.Question(name, dns.types.A, dns.classes.IN)], answers=[], authorities=[], additionals=[],
        )  # fmt: skip
        with self.net.entered(self.net.device):
            resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with resolver:
            resolver.settimeout(10)
            resolver.sendto(query.packed, (server, 53))
            answer = dns.DNSMessage.unpack(resolver.recv(2048))
        return [str(a.ipv4_address) for a in answer.answers if a.type == dns.types.A]

    def python(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A test client (tests.plainpeers, tests.quicpeers) run on the device."""
        return self.net.run(self.net.device, sys.executable, *args, check=False, timeout=40, cwd=REPO)


# -- the README's recipes, run as printed -------------------------------------------------------------


def readme_recipe(section: str) -> list[str]:
    """The shell lines of the first ```sh block under the heading `section` in the docs, comments and blanks left out."""
    body = docs_section(section, subsections=False)
    block = re.search(r"```sh\n(.*?)```", body, re.S)
    assert block, f"the docs' section {section!r} has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def substituted(line: str, values: dict[str, str]) -> str:
    """`line` with the values the README says to put in (interface names, addresses), whole words only."""
    for old, new in values.items():
        line = re.sub(rf"(?<![\w.:]){re.escape(old)}(?![\w.])", new, line)
    return line


def tlsgate_argv(line: str) -> list[str]:
    """A recipe's `tlsgate ...` line as the argv to run it (shell comments dropped)."""
    words = shlex.split(line, comments=True)
    assert words[0] == "tlsgate", line
    return [sys.executable, "-m", "tlsgate", *words[1:]]


def recipe_shell(net: netns.Network, ns: str, line: str, cwd: Path, env: dict[str, str]) -> None:
    """One recipe line in `ns`, by bash (process substitution, redirections), `tlsgate` from this checkout."""
    if "/etc/resolv.conf" in line:  # written through the namespace's own /etc/netns file, never the host's
        assert (netns.ETC_NETNS / ns / "resolv.conf").exists(), f"{ns} has no resolver file of its own"
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "bash", "-euo", "pipefail", "-c", line],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
    )  # fmt: skip
    assert done.returncode == 0, f"README line failed in {ns}: {line}\n{done.stdout}{done.stderr}"


def recipe_env(workdir: Path) -> dict[str, str]:
    """`tlsgate` on PATH (this checkout's, by its entry point) and the run's CA directory as the default."""
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}  # LOG_LEVEL keeps wireguard-go's pipes open
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TLSGATE_CONFDIR"] = str(workdir / "certs")
    return env


TRANSPARENT = "Transparent mode on a gateway"
WIREGUARD = "WireGuard on a Linux device"
# What the README says to put in: the gateway's interfaces, facing the devices and the internet.
TRANSPARENT_VALUES = {"wlan0": "gw-dev", "eth0": "gw-up"}


def transparent_rule(family: int, protocol: str) -> list[str]:
    """The README's iptables (4) or ip6tables (6) rule for `protocol`, as the words after the command."""
    command = "iptables" if family == 4 else "ip6tables"
    for line in readme_recipe(TRANSPARENT):
        words = shlex.split(substituted(line, TRANSPARENT_VALUES), comments=True)
        if words[0] == command and "-p" in words and words[words.index("-p") + 1] == protocol:
            return words[1:]
    raise AssertionError(f"the README's gateway recipe has no {command} rule for {protocol}")


def _setup_transparent(world: World, workdir: Path) -> list[str]:
    """The gateway's lines of the README recipe; returns the `tlsgate run` argv it prints."""
    net = world.net
    run: list[str] = []
    for line in readme_recipe(TRANSPARENT):
        line = substituted(line, TRANSPARENT_VALUES)
        if line.startswith("tlsgate run"):
            run = tlsgate_argv(line)
        else:
            recipe_shell(net, net.gateway, line, workdir, recipe_env(workdir))
    # What DHCP option 6 would tell the device: the gateway, where tlsgate's `dns@53` answers.
    net.set_resolver(net.device, f"nameserver {GATEWAY}\n")
    assert run, "the README's gateway recipe starts no tlsgate"
    return run


def _setup_wireguard(world: World, workdir: Path) -> list[str]:
    """The README recipe's lines before `tlsgate run` (the peer is created first); returns the run's argv."""
    net = world.net
    for line in readme_recipe(WIREGUARD):
        if line.startswith("tlsgate run"):
            return tlsgate_argv(line)
        recipe_shell(net, net.gateway, line, workdir, recipe_env(workdir))
    raise AssertionError("the README's WireGuard recipe starts no tlsgate")


def wg_link(net: netns.Network) -> str:
    """The device's WireGuard interface: named per test network, because wireguard-go's control socket
    (/var/run/wireguard/NAME.sock) is shared by every namespace, so two test workers' `wg0` would collide."""
    return f"{net.tag}w"[-15:]


def _connect_wireguard(world: World, workdir: Path) -> None:
    """The rest of the README recipe: the config printed on the gateway, then every device line, as printed.

    Put in: the interface name (see wg_link), the endpoint (this network's
    gateway) and the config's own Address values, as the README says.
    """
    net = world.net
    lines = readme_recipe(WIREGUARD)
    after_run = lines[[line.startswith("tlsgate run") for line in lines].index(True) + 1 :]
    show = [line for line in after_run if line.startswith("tlsgate wireguard show")]
    device = [line for line in after_run if line not in show]
    assert len(show) == 1 and device, after_run
    values = {"wg0": wg_link(net), "192.168.50.1": GATEWAY}
    recipe_shell(net, net.gateway, substituted(show[0], values), workdir, recipe_env(workdir))
    conf = (workdir / "phone.conf").read_text()
    (address,) = (line.split("=", 1)[1] for line in conf.splitlines() if line.startswith("Address"))
    v4, v6 = (part.strip() for part in address.split(","))
    documented = {w for line in device for w in line.split() if re.fullmatch(r"[\d.]+/32|[0-9a-f:]+/128", w)}
    assert len(documented) == 2, f"the README's device lines should show the config's two Address values: {documented}"
    for example in documented:
        values[example] = v6 if ":" in example else v4
    net.set_resolver(net.device, "")  # the device's own /etc/resolv.conf, which the recipe writes
    for line in device:
        recipe_shell(net, net.device, substituted(line, values), workdir, recipe_env(workdir))
    link = wg_link(net)
    assert eventually(lambda: net.run(net.device, "ip", "link", "show", link, check=False).returncode == 0, timeout=30)


def _teardown(world: World, mode: str) -> None:
    net = world.net
    if mode == "transparent":
        for command in (net.iptables, net.ip6tables):
            command("-t", "nat", "-F", "PREROUTING")
            command("-t", "nat", "-F", "POSTROUTING")
            command("-F", "FORWARD")
    if mode == "wireguard":
        net.run(net.device, "ip", "link", "del", wg_link(net), check=False)  # wireguard-go exits with its interface
    net.set_resolver(net.device, "")


@pytest.fixture(scope="module", params=MODES)
def gate(request: pytest.FixtureRequest, world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"gate-{mode}")
    extra: list[str] = []
    if mode in ("regular", "socks5"):
        extra += [arg for name, ip in NAMES.items() for arg in ("--resolve", f"{name}:*:{ip}")]
        # '' as in mitmproxy: every address, IPv4 and IPv6 (the README's `--listen-host ''`), public clients refused.
        run = [sys.executable, "-m", "tlsgate", "run", "--listen-host", "", "--mode", mode]
    elif mode == "transparent":
        run = _setup_transparent(world, workdir)
    else:
        run = _setup_wireguard(world, workdir)
    if mode in ("transparent", "wireguard"):
        # tlsgate's own DNS (dns@53 beside transparent mode, 10.0.0.53 in the tunnel) asks the upstream's server.
        extra += ["--set", f"dns_name_servers={DNS_IP}"]
    command = [
        *run, "--listen-port", str(PORT), "--metrics-port", "0", "--confdir", str(workdir / "certs"),
        "--findings", str(workdir / "findings.jsonl"), "--policy", str(world.policy_file),
        "--upstream-ca", str(world.root_file), *extra,
    ]  # fmt: skip
    tlsgate = GatewayTlsgate(workdir, command=world.net.netns_command(world.net.gateway, command))
    started = time.monotonic()
    try:
        tlsgate.start()
        listening = time.monotonic()
        if mode == "wireguard":
            _connect_wireguard(world, workdir)
        configured = time.monotonic()
        if mode != "wireguard":
            world.net.wait_port(world.net.device, GATEWAY, PORT)
        device = TUNNEL_DEVICE if mode == "wireguard" else LAN_DEVICE
        gate = Gate(mode, world, tlsgate, device)
        world.reset()
        first = gate.curl("https://api.example.test/", "--cacert", str(gate.ca))
        assert first.status == 200, f"{mode}: first request failed: {first}\n{tlsgate.output}"
        gate.setup_seconds = time.monotonic() - started
        gate.listening_seconds = listening - started
        gate.configured_seconds = configured - started
        yield gate
    finally:
        tlsgate.stop()
        _teardown(world, mode)


@pytest.fixture
def g(gate: Gate) -> Gate:
    gate.world.reset()
    return gate


# -- the same checks in every mode --------------------------------------------------------------------


def test_https_is_intercepted_and_allowed(g: Gate) -> None:
    result = g.curl("https://api.example.test/v1/items", "--cacert", str(g.ca))
    assert result.status == 200 and result.body == "hello from api\n", result
    assert [r.path for r in g.world.api.requests] == ["/v1/items"]
    assert g.world.api.peers == [netns.GATEWAY_UPSTREAM_SIDE]  # tlsgate's connection, not the device's own
    # Intercepted, not tunnelled: the device saw tlsgate's CA (a different CA fails the handshake).
    refused = g.curl("https://api.example.test/", "--cacert", str(g.world.root_file))
    assert refused.returncode != 0 and refused.status == 0


def test_plain_http_is_blocked_before_the_upstream_sees_a_request(g: Gate) -> None:
    result = g.curl("http://api.example.test/login?password=hunter2", "-H", "Accept: application/json")
    assert result.status == 403, result
    page = json.loads(result.body)
    assert page["check"] == "cleartext" and page["host"] == "api.example.test", page
    assert page["rule"] == f"{g.world.policy_shown}:1" and "cleartext: allow" in page["remedy"]
    assert str(g.world.directory) not in result.body, "a block page must not show the proxy host's paths"
    assert g.world.plain.requests == []
    if g.mode == "regular":
        # Only an HTTP proxy learns the request before connecting; socks5, transparent and WireGuard connect
        # (TCP only, no byte sent) as soon as the device does, which eager judging of TLS needs anyway.
        assert g.world.plain.connections == 0
    finding = g.wait_finding("cleartext", "api.example.test")
    assert finding["action"] == "blocked" and finding["device"] == g.device
    assert finding["evidence"]["url"] == "http://api.example.test/login?password=[REDACTED]"  # the name, not the address
    assert "hunter2" not in json.dumps(finding)


def test_pin_mismatch_is_blocked_and_nothing_is_forwarded(g: Gate) -> None:
    result = g.curl("https://pinned.example.test/secret", "--cacert", str(g.ca), "-H", "Accept: application/json")
    assert result.status == 403, result
    page = json.loads(result.body)
    assert page["check"] == "pin" and page["host"] == "pinned.example.test"
    assert page["rule"] == f"{g.world.policy_shown}:{rule_line(g.world.policy_text, 'name: pinned')}"
    assert g.world.pinned.requests == []
    finding = g.wait_finding("pin", "pinned.example.test")
    assert finding["action"] == "blocked" and finding["device"] == g.device
    # The console's advice holds under tlsgate (mitmproxy's own says `connection_strategy=lazy`, which tlsgate refuses).
    g.tlsgate.wait_for(r"tlsgate keeps connection_strategy=eager")
    assert "`connection_strategy` to `lazy`" not in g.tlsgate.output
    # The console says why, as the finding does: not OpenSSL's "unspecified certificate verification error".
    rule = re.escape(finding["rule"])
    g.tlsgate.wait_for(rf"Server TLS handshake failed: tlsgate refused pinned\.example\.test: pin \(rule {rule}\)")
    assert "unspecified certificate verification error" not in g.tlsgate.output


def test_an_app_accepting_any_certificate_is_caught_by_the_probe(g: Gate) -> None:
    result = g.curl("https://probe.example.test/v1/login", "--insecure", "-H", "Accept: application/json")
    assert result.status == 403, result
    assert g.world.probe.requests == []
    finding = g.wait_finding("client_probe", "probe.example.test")
    assert finding["action"] == "blocked" and finding["severity"] == "critical" and finding["device"] == g.device
    assert finding["rule"] == f"{g.world.policy_shown}:{rule_line(g.world.policy_text, 'name: probed')}"


def test_a_protocol_probe_catches_an_app_that_negotiates_rsa_key_exchange_in_every_mode(g: Gate) -> None:
    # curl verifies tlsgate's (valid) certificate, and OpenSSL's DEFAULT cipher list still has AES128-SHA.
    result = g.curl("https://weak.example.test/v1/login", "--cacert", str(g.ca))
    assert result.status == 403, result
    assert g.world.probe.requests == []
    finding = g.wait_finding("client_probe", "weak.example.test")
    assert (finding["action"], finding["severity"], finding["device"]) == ("blocked", "medium", g.device)
    assert finding["evidence"]["negotiated"] == {"version": "1.2", "suite": "AES128-SHA"}
    assert finding["rule"] == f"{g.world.policy_shown}:{rule_line(g.world.policy_text, 'name: weak-probed')}"
    assert g.curl("https://weak.example.test/v1/login", "--cacert", str(g.ca)).status == 200  # tried once, then served


def test_chain_probes_meet_curl_as_in_the_probe_matrix_in_every_mode(g: Gate) -> None:
    """tests/live/test_probe_matrix.py's ground truth for curl, whatever brought the device to tlsgate: a CA:FALSE
    issuer, a CN-only name and a SHA-1 signature (served at a lowered security level) in WireGuard mode too."""
    from tests.live.test_probe_matrix import ACCEPTS, EXPECTED

    kinds = ("non_ca_issuer", "cn_only", "sha1_signature")
    for host, column, extra in (
        ("chain.example.test", "curl", ("--cacert", str(g.ca))),
        ("chain-k.example.test", "curl-k", ("-k",)),
    ):
        for kind in kinds:
            result = g.curl(f"https://{host}/v1/login", *extra)
            assert (result.status == 403) is (EXPECTED[kind][column] == ACCEPTS), (kind, column, result)
        assert eventually(lambda host=host: len(g.findings("client_probe", host)) == len(kinds), timeout=10), g.findings()
        said = {f["evidence"]["kind"]: f["action"] for f in g.findings("client_probe", host)}
        assert said == {k: "blocked" if EXPECTED[k][column] == ACCEPTS else "passed" for k in kinds}, (column, said)
        assert all(f["device"] == g.device for f in g.findings("client_probe", host))
    assert g.world.probe.requests == []


# One correct and one mistaken configuration per stack, and the host (in the `stack-probed` rule) each one uses.
STACKS_ON_THE_DEVICE = (
    ("node", "node.example.test"),
    ("node-no-reject", "node-bad.example.test"),
    ("java", "java.example.test"),
    ("java-trust-all", "java-bad.example.test"),
    ("go", "go.example.test"),
    ("go-insecure", "go-bad.example.test"),
)


@pytest.mark.parametrize("gate", ["wireguard"], indirect=True)
def test_node_java_and_go_meet_the_probes_as_in_their_matrix_over_wireguard(g: Gate, stack_builds: Builds) -> None:
    """tests/live/test_probe_matrix_stacks.py's ground truth, from the device inside the WireGuard tunnel: no proxy
    setting, the names from the tunnel's DNS (tlsgate's), each client a process of its own in the device's
    namespace making one connection per kind, and tlsgate's verdict for each the client's own outcome."""
    from tests.clients import STACK_CLIENTS, run
    from tests.live.test_probe_matrix_stacks import EXPECTED

    kinds = ("self_signed", "wrong_host", "expired")  # the `stack-probed` rule's order: one per connection
    by_id = {c.id: c for c in STACK_CLIENTS}
    argv = {family: stack_builds(family) for family in ("node", "java", "go")}

    def in_the_device(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return g.net.run(g.net.device, *command, check=False, timeout=120)

    def drive(client_id: str, host: str) -> list[str]:
        client = by_id[client_id]
        outcomes = run(argv[client.family], client.config, "-", g.ca, [f"https://{host}/v1/login"] * len(kinds), in_the_device)
        return [outcome.verdict for outcome in outcomes]

    started = time.monotonic()
    with ThreadPoolExecutor(len(STACKS_ON_THE_DEVICE)) as pool:
        seen = dict(zip(STACKS_ON_THE_DEVICE, pool.map(lambda pair: drive(*pair), STACKS_ON_THE_DEVICE), strict=True))
    print(
        f"WireGuard: {len(STACKS_ON_THE_DEVICE)} Node/Java/Go clients x {len(kinds)} kinds in {time.monotonic() - started:.1f}s"
    )
    assert g.world.probe.requests == [], "a request sent over a probe reached the server"
    for (client_id, host), verdicts in seen.items():
        assert verdicts == [EXPECTED[kind][client_id] for kind in kinds], (client_id, dict(zip(kinds, verdicts, strict=True)))
        assert eventually(lambda host=host: len(g.findings("client_probe", host)) == len(kinds), timeout=10), g.findings()
        said = {f["evidence"]["kind"]: f["action"] for f in g.findings("client_probe", host)}
        assert said == {k: {ACCEPTS: "blocked", REFUSES: "passed"}[v] for k, v in zip(kinds, verdicts, strict=True)}, (
            client_id,
            said,
        )
        assert all(f["device"] == g.device for f in g.findings("client_probe", host))


def test_mqtt_with_credentials_is_blocked_in_every_mode(g: Gate) -> None:
    via = {"regular": ["--connect-proxy", f"{GATEWAY}:{PORT}"], "socks5": ["--socks5", f"{GATEWAY}:{PORT}"]}.get(g.mode, [])
    if via:
        target = "mqtt.example.test:1883"  # tlsgate resolves it (run --resolve)
    else:  # as an IoT app does: look the broker up (tlsgate's DNS), then connect to the address; no SNI, no Host
        (address,) = g.lookup("mqtt.example.test")
        target = f"{address}:1883"
    before = g.world.mqtt.bytes_received
    done = g.python("-m", "tests.plainpeers", "mqtt-connect", target, "--username", "meter-7", "--password", "hunter2", *via)
    transcript = json.loads(done.stdout.strip().splitlines()[-1])
    assert transcript["closed"] and not transcript["timeout"], transcript
    assert transcript.get("connack_code") == 5, transcript  # tlsgate's CONNACK "not authorized", not the broker's
    assert g.world.mqtt.bytes_received == before, "the broker received the device's CONNECT"
    (finding,) = [f for f in g.tlsgate.findings() if f["check"] == "cleartext" and f["evidence"].get("protocol") == "mqtt"]
    assert finding["action"] == "blocked" and finding["device"] == g.device
    assert finding["host"] == "mqtt.example.test"  # named in every mode, by the DNS answer where it is only an address
    assert "hunter2" not in json.dumps(finding)


def test_payload_is_inspected_in_every_mode(g: Gate) -> None:
    """What an HTTPS request carries is judged whatever brought it to tlsgate (README: "Payload inspection")."""
    token = "at-5f3c9a7e1b2d4c6a8e0f1a2b"
    result = g.curl(f"https://api.example.test/v1/me?access_token={token}", "--cacert", str(g.ca))
    assert result.status == 200, result  # `payload: report`, the default: forwarded and recorded
    finding = g.wait_finding("payload", "api.example.test")
    assert finding["evidence"]["kind"] == "secret_in_url" and finding["device"] == g.device
    assert token not in json.dumps(finding) and token not in g.tlsgate.output


def test_the_device_is_named_in_metrics(g: Gate) -> None:
    g.curl("http://api.example.test/", "-H", "Accept: application/json")
    g.wait_finding("cleartext", "api.example.test")
    text = g.scrape()
    assert re.search(rf'tlsgate_findings_total\{{[^}}]*device="{g.device}"[^}}]*\}} [1-9]', text), text[:3000]
    assert 'device="unnamed"' not in text


@pytest.mark.parametrize(
    ("public", "refusal"),
    [
        ("11.0.0.2", "killed by block_global"),  # globally routable, but it only exists inside this test's namespaces
        ("198.51.100.7", "is in a documentation or tunnel range"),  # not `is_global`, yet never a lab device
    ],
    ids=["global", "documentation-range"],
)
def test_public_clients_are_refused(g: Gate, public: str, refusal: str) -> None:
    """The open-proxy guard: a client from a public address gets nothing, in every mode it can reach."""
    net = g.net
    # WireGuard: a configured peer sending from a public source address inside its tunnel.
    link = wg_link(net) if g.mode == "wireguard" else "dev0"
    net.run(net.device, "ip", "addr", "add", f"{public}/32", "dev", link)
    if g.mode != "wireguard":
        net.run(net.gateway, "ip", "route", "add", f"{public}/32", "dev", "gw-dev")
    try:
        result = g.curl("https://api.example.test/", "--cacert", str(g.ca), "--interface", public)
        assert result.status == 0 and result.returncode != 0, result
        assert g.world.api.requests == []
        g.tlsgate.wait_for(rf"{re.escape(public)}.*{re.escape(refusal)}")
    finally:
        net.run(net.gateway, "ip", "route", "del", f"{public}/32", check=False)
        net.run(net.device, "ip", "addr", "del", f"{public}/32", "dev", link, check=False)


def test_a_public_ipv6_client_is_refused(g: Gate) -> None:
    """The open-proxy guard holds for IPv6 too: every mode takes IPv6 on this LAN, none from a global address."""
    net, public = g.net, "2a01:4f8::2"  # globally routable, but it only exists inside this test's namespaces
    link = wg_link(net) if g.mode == "wireguard" else "dev0"
    net.run(net.device, "ip", "-6", "addr", "add", f"{public}/128", "dev", link, "nodad")
    if g.mode != "wireguard":
        net.run(net.gateway, "ip", "-6", "route", "add", f"{public}/128", "dev", "gw-dev")
    try:
        if g.mode in ("regular", "socks5"):  # the proxy setting, by the gateway's IPv6 address
            flag = "-x" if g.mode == "regular" else "--socks5-hostname"
            via = [flag, f"{'http' if g.mode == 'regular' else 'socks5h'}://[{netns.GATEWAY_DEVICE_SIDE6}]:{PORT}"]
        else:
            via = ["--resolve", f"api.example.test:443:[{API_IP6}]"]
        url = "https://api.example.test/"
        # WireGuard: the killed connection often reaches curl only as its timeout (as for IPv4 above): keep it short.
        done = net.run(net.device, "curl", "-sS", "--max-time", "5", "--interface", public, "--cacert", str(g.ca), *via, url,
                       check=False, timeout=30)  # fmt: skip
        assert done.returncode != 0 and "hello from api" not in done.stdout, done
        assert g.world.api.requests == []
        g.tlsgate.wait_for(rf"{re.escape(public)}.*killed by block_global")
    finally:
        net.run(net.gateway, "ip", "-6", "route", "del", f"{public}/128", check=False)
        net.run(net.device, "ip", "-6", "addr", "del", f"{public}/128", "dev", link, check=False)


# A LAN as an ISP delegates it: global unicast (not a documentation range, which is refused on its own), so
# mitmproxy's `block_global` alone refuses its devices. It only exists inside this test's namespaces.
LAN6, WAN6 = "2a01:db9:231:1::", "2a01:db9:231:2::"
GATEWAY_LAN6, DEVICE_LAN6, GATEWAY_WAN6, NEIGHBOUR_WAN6 = f"{LAN6}1", f"{LAN6}2", f"{WAN6}1", f"{WAN6}99"


def _via_ipv6(g: Gate, gateway: str) -> list[str]:
    """How the device's curl reaches api.example.test over IPv6: the proxy at `gateway`, or straight (transparent)."""
    if g.mode == "regular":
        return ["-x", f"http://[{gateway}]:{PORT}"]
    return ["--resolve", f"api.example.test:443:[{API_IP6}]", "--resolve", f"api.example.test:80:[{API_IP6}]"]


@pytest.mark.parametrize("gate", ["regular", "transparent"], indirect=True)
def test_a_device_with_a_global_ipv6_address_on_the_gateways_lan_is_served(g: Gate) -> None:
    """The gateway's LAN has a global prefix (what most ISPs delegate): its devices are LAN clients, served and
    inspected over IPv6. A prefix added while tlsgate runs is followed, and once the gateway no longer has it,
    the same address (still routed to the device) is a public client again and refused."""
    net, device = g.net, ["--interface", DEVICE_LAN6]
    net.run(net.gateway, "ip", "-6", "addr", "add", f"{GATEWAY_LAN6}/64", "dev", "gw-dev", "nodad")
    net.run(net.device, "ip", "-6", "addr", "add", f"{DEVICE_LAN6}/64", "dev", "dev0", "nodad")
    try:
        url = "https://api.example.test/v1/lan"
        # At most a second until tlsgate reads the new prefix; until then the address is refused.
        assert eventually(
            lambda: g.curl(url, "--cacert", str(g.ca), *device, *_via_ipv6(g, GATEWAY_LAN6), by_name=True).status == 200
        )
        g.tlsgate.wait_for(rf"LAN prefixes changed: .*{re.escape(LAN6)}/64 \(gw-dev\)")
        assert [r.path for r in g.world.api.requests][-1:] == ["/v1/lan"]
        # Intercepted (tlsgate's CA, not the server's), and only tlsgate reached the server.
        refused = g.curl(url, "--cacert", str(g.world.root_file), *device, *_via_ipv6(g, GATEWAY_LAN6), by_name=True)
        assert refused.returncode != 0 and refused.status == 0, refused
        assert set(g.world.api.peers) <= {netns.GATEWAY_UPSTREAM_SIDE, netns.GATEWAY_UPSTREAM_SIDE6}, g.world.api.peers
        plain = g.curl("http://api.example.test/login?password=hunter2", "-H", "Accept: application/json", *device,
                       *_via_ipv6(g, GATEWAY_LAN6), by_name=True)  # fmt: skip
        assert plain.status == 403 and json.loads(plain.body)["check"] == "cleartext", plain
        assert g.world.plain.requests == []
        assert set(g.world.plain.peers) <= {netns.GATEWAY_UPSTREAM_SIDE, netns.GATEWAY_UPSTREAM_SIDE6}, g.world.plain.peers
        finding = g.wait_finding("cleartext", "api.example.test", family=6)
        assert finding["client"].startswith(f"[{DEVICE_LAN6}]:") and finding["action"] == "blocked", finding
        # Renumbered away: the gateway drops the prefix, a host route still leads to the device. Not on-link now:
        # refused once tlsgate reads the interfaces again (at most a second later), and from then on.
        net.run(net.gateway, "ip", "-6", "addr", "del", f"{GATEWAY_LAN6}/64", "dev", "gw-dev")
        net.run(net.gateway, "ip", "-6", "route", "add", f"{DEVICE_LAN6}/128", "dev", "gw-dev")
        via = ["--cacert", str(g.ca), "--max-time", "5", *device, *_via_ipv6(g, netns.GATEWAY_DEVICE_SIDE6)]
        assert eventually(lambda: g.curl(url, *via, by_name=True).returncode != 0)
        g.tlsgate.wait_for(rf"{re.escape(DEVICE_LAN6)} killed by block_global: a public address off this host's LAN")
        g.world.reset()
        again = g.curl(url, *via, by_name=True)
        assert again.returncode != 0 and again.status == 0, again
        assert g.world.api.requests == [] and set(g.world.api.peers) <= {netns.GATEWAY_UPSTREAM_SIDE6}
    finally:
        net.run(net.gateway, "ip", "-6", "route", "del", f"{DEVICE_LAN6}/128", check=False)
        net.run(net.gateway, "ip", "-6", "addr", "del", f"{GATEWAY_LAN6}/64", "dev", "gw-dev", check=False)
        net.run(net.device, "ip", "-6", "addr", "del", f"{DEVICE_LAN6}/64", "dev", "dev0", check=False)


@pytest.mark.parametrize("gate", ["regular"], indirect=True)
def test_a_neighbour_on_the_gateways_internet_side_is_refused(g: Gate) -> None:
    """The link the default route leaves by is the ISP's or cloud provider's, shared with other customers: a client
    on its global prefix is on-link but no LAN device, and stays refused, with the option that would accept it."""
    net = g.net
    net.run(net.gateway, "ip", "-6", "addr", "add", f"{GATEWAY_WAN6}/64", "dev", "gw-up", "nodad")
    net.run(net.gateway, "ip", "-6", "route", "add", "default", "via", netns.ip6_of(API_IP), "dev", "gw-up")
    net.run(net.upstream, "ip", "-6", "addr", "add", f"{NEIGHBOUR_WAN6}/64", "dev", "up0", "nodad")
    try:
        why = re.compile(
            rf"{re.escape(NEIGHBOUR_WAN6)} killed by block_global: .*it is on {re.escape(WAN6)}/64 of gw-up, not taken "
            rf"as a LAN because gw-up carries this host's default route.*--set tlsgate_lan_prefixes={re.escape(WAN6)}/64"
        )

        def refused_with_why() -> bool:  # tlsgate reads the new prefix at most a second after it appears
            done = net.run(net.upstream, "curl", "-sS", "--noproxy", "", "--max-time", "5", "--interface", NEIGHBOUR_WAN6,
                           "-x", f"http://[{GATEWAY_WAN6}]:{PORT}", "--cacert", str(g.ca), "https://api.example.test/",
                           check=False, timeout=30)  # fmt: skip
            assert done.returncode != 0 and "hello from api" not in done.stdout, done
            return any(why.search(line) for line in g.tlsgate.lines)

        assert eventually(refused_with_why), g.tlsgate.output[-3000:]
        assert g.world.api.requests == []
    finally:
        net.run(net.upstream, "ip", "-6", "addr", "del", f"{NEIGHBOUR_WAN6}/64", "dev", "up0", check=False)
        net.run(net.gateway, "ip", "-6", "route", "del", "default", check=False)
        net.run(net.gateway, "ip", "-6", "addr", "del", f"{GATEWAY_WAN6}/64", "dev", "gw-up", check=False)


@pytest.mark.parametrize("gate", ["regular", "socks5"], indirect=True)
def test_an_empty_listen_host_serves_the_lan_over_ipv4_and_ipv6(g: Gate) -> None:
    """`--listen-host ''` is mitmproxy's every address: the device reaches the proxy by either of the gateway's."""
    for gateway in (GATEWAY, f"[{netns.GATEWAY_DEVICE_SIDE6}]"):
        via = ["-x", f"http://{gateway}:{PORT}"] if g.mode == "regular" else ["--socks5-hostname", f"{gateway}:{PORT}"]
        result = g.curl("https://api.example.test/", "--cacert", str(g.ca), *via, by_name=True)
        assert result.status == 200, (gateway, result)
    assert len(g.world.api.requests) == 2


# -- what only some modes can do ----------------------------------------------------------------------


# A proxy setting (regular, socks5) carries TCP only: QUIC never reaches tlsgate there (README: "Devices and modes").
@pytest.mark.parametrize("gate", ["transparent", "wireguard"], indirect=True)
def test_quic_is_refused_by_default_and_never_reaches_the_upstream(g: Gate) -> None:
    record = g.world.quic_record
    assert record is not None
    before = record.read_text() if record.exists() else ""
    done = g.python(
        "-m", "tests.quicpeers", "get", "https://quic.example.test/secret", "--connect", f"{QUIC_IP}:443",
        "--server-name", "quic.example.test", "--ca", str(g.ca), "--timeout", "5",
    )  # fmt: skip
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 1 and outcome["status"] is None, outcome
    after = record.read_text() if record.exists() else ""
    assert '"request"' not in after[len(before) :], "the QUIC upstream received a request"
    if g.mode == "wireguard":
        finding = g.wait_finding("quic", "quic.example.test")
        assert finding["device"] == g.device and finding["evidence"]["kind"] == "quic_refused"
        # The console says why, as the finding does: not aioquic's "No common ALPN protocols".
        rule = re.escape(finding["rule"])
        g.tlsgate.wait_for(rf"Client QUIC handshake failed: tlsgate refused quic\.example\.test: quic \(rule {rule}\)")
        assert "No common ALPN protocols" not in g.tlsgate.output, [x for x in g.tlsgate.lines if "ALPN" in x]


@pytest.mark.parametrize("gate", ["transparent"], indirect=True)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_udp_443_does_not_get_around_transparent_mode(g: Gate, family: int) -> None:
    """mitmproxy's transparent mode takes TCP only, so the gateway must reject UDP/443 (QUIC) or apps bypass tlsgate."""
    net = g.net
    udp, target = (g.world.udp, UDP_IP) if family == 4 else (g.world.udp6, UDP_IP6)
    rule = transparent_rule(family, "udp")  # the README's, as the gateway runs it
    table = net.iptables if family == 4 else net.ip6tables
    with net.entered(net.device):
        sender = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    with sender:
        sender.sendto(b"quic-initial-with-rule", (target, 443))
        # Control: without the rule, the same datagram does arrive, so the assertion below can fail.
        table("-D", *rule[1:])
        try:
            sender.sendto(b"control-without-rule", (target, 443))
            assert eventually(lambda: b"control-without-rule" in udp.payloads, timeout=10)
        finally:
            table(*rule)
    assert b"quic-initial-with-rule" not in udp.payloads, f"UDP/443 over IPv{family} passed the gateway around tlsgate"


# -- IPv6 on the dual-stack LAN: what the recipes leave out of IPv6 goes around tlsgate -------------------


@pytest.mark.parametrize("gate", ["transparent", "wireguard"], indirect=True)
def test_over_ipv6_https_by_name_is_intercepted_and_recorded(g: Gate) -> None:
    """The device looks the name up with its own resolver (AAAA) and connects over IPv6, as an app does."""
    token = "rt-6b1d2e3f4a5c6d7e8f9a0b1c"  # refresh_token: a finding of its own (payload findings are said once)
    result = g.curl(f"https://api.example.test/v1/six?refresh_token={token}", "-6", "--cacert", str(g.ca), by_name=True)
    assert result.status == 200 and result.body == "hello from api\n", result
    assert [r.path.split("?")[0] for r in g.world.api.requests] == ["/v1/six"]
    # Carried by tlsgate: the server saw the gateway's IPv6 address, never the device's (LAN or tunnel).
    assert g.world.api.peers == [netns.GATEWAY_UPSTREAM_SIDE6], g.world.api.peers
    finding = g.wait_finding("payload", "api.example.test", family=6)
    assert finding["device"] == g.device and token not in json.dumps(finding), finding
    # Intercepted, not tunnelled: with only the servers' own CA the device refuses tlsgate's certificate.
    refused = g.curl("https://api.example.test/", "-6", "--cacert", str(g.world.root_file), by_name=True)
    assert refused.returncode != 0 and refused.status == 0, refused
    text = g.scrape()
    assert re.search(rf'tlsgate_findings_total\{{[^}}]*check="payload"[^}}]*device="{g.device}"', text), text[:3000]


@pytest.mark.parametrize("gate", ["transparent", "wireguard"], indirect=True)
def test_over_ipv6_plain_http_is_blocked_before_the_upstream_sees_a_request(g: Gate) -> None:
    result = g.curl("http://api.example.test/login?password=hunter2", "-6", "-H", "Accept: application/json", by_name=True)
    assert result.status == 403, result
    page = json.loads(result.body)
    assert page["check"] == "cleartext" and page["host"] == "api.example.test", page
    assert g.world.plain.requests == []
    assert set(g.world.plain.peers) <= {netns.GATEWAY_UPSTREAM_SIDE6}, g.world.plain.peers  # at most tlsgate's connect
    finding = g.wait_finding("cleartext", "api.example.test", family=6)
    assert finding["device"] == g.device and finding["action"] == "blocked", finding


@pytest.mark.parametrize("gate", ["transparent"], indirect=True)
def test_a_proxy_setting_against_the_transparent_listener_is_refused_with_a_remedy_that_works(g: Gate) -> None:
    """A device still set to use a proxy sends its requests to tlsgate's own address (not redirected): refused, and
    the finding says to remove the setting, not to use --resolve (which transparent mode refuses)."""
    before = len(g.findings("destination"))  # the fixture's own readiness probe is such a connection too
    result = g.curl("http://api.example.test/v1/items", "-x", f"http://{GATEWAY}:{PORT}", "-H", "Accept: application/json")
    assert result.status != 200, result
    assert g.world.plain.requests == [] and g.world.api.requests == []
    assert eventually(lambda: len(g.findings("destination")) > before, timeout=10), g.tlsgate.findings()
    finding = g.findings("destination")[-1]
    assert finding["evidence"]["kind"] == "proxy_host" and finding["action"] == "blocked" and finding["port"] == PORT
    assert "--resolve" not in finding["remedy"] and "proxy setting" in finding["remedy"], finding


@pytest.mark.parametrize("gate", ["wireguard"], indirect=True)
def test_raw_udp_is_judged_as_unknown_cleartext_and_not_relayed(g: Gate) -> None:
    """Neither QUIC nor DNS (CoAP, syslog, a custom protocol): under `cleartext: block` not one datagram leaves."""
    net = g.net
    coap = UdpCounter(net, UDP_IP, 5683)
    try:
        with net.entered(net.device):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            for _ in range(3):
                sender.sendto(b"\x40\x01\x12\x34coap-like-datagram", (UDP_IP, 5683))
            finding = g.wait_finding("cleartext", UDP_IP)
        assert finding["action"] == "blocked" and finding["evidence"]["kind"] == "plain_unknown"
        assert finding["evidence"]["transport"] == "udp" and finding["device"] == g.device
        time.sleep(1)  # the datagrams had every chance to arrive
        assert coap.payloads == [], "a raw UDP datagram got past tlsgate"
    finally:
        coap.close()


# In proxy modes tlsgate resolves the names itself; the device's DNS is not involved.
@pytest.mark.parametrize("gate", ["transparent", "wireguard"], indirect=True)
def test_an_address_is_named_by_tlsgates_own_dns_answer(g: Gate) -> None:
    """A request with neither SNI nor Host header still meets the rule for the name the device looked up.

    WireGuard: the tunnel's DNS (10.0.0.53) is tlsgate. Transparent: the gateway runs `--mode dns@53` beside it
    and hands itself out as the devices' DNS, as the README describes.
    """
    assert g.lookup("named.example.test") == [NAMED_IP]
    # HTTP/1.0 without a Host header: the connection carries nothing but the address.
    result = g.curl(f"http://{NAMED_IP}/report-me", "-0", "-H", "Host:")
    assert result.status == 200, result  # the rule for named.example.test is `mode: report`: forwarded
    assert [r.path for r in g.world.named.requests] == ["/report-me"]
    finding = g.wait_finding("cleartext", "named.example.test")
    assert (
        finding["action"] == "reported"
        and finding["rule"] == f"{g.world.policy_shown}:{rule_line(g.world.policy_text, 'named-by-dns')}"
    )


@pytest.mark.parametrize("gate", ["wireguard"], indirect=True)
def test_wireguard_setup_time_is_reported(g: Gate) -> None:
    """Not a timing assertion: the measured set-up time is printed for the report (`-s` / `-rA`)."""
    assert g.setup_seconds is not None
    assert g.listening_seconds is not None and g.configured_seconds is not None
    print(
        f"WireGuard: `tlsgate run` start to first proxied response {g.setup_seconds:.2f}s: tlsgate listening "
        f"{g.listening_seconds:.2f}s, device configured (`tlsgate wireguard show`, the README's device lines) "
        f"+{g.configured_seconds - g.listening_seconds:.2f}s, handshake and first HTTPS response "
        f"+{g.setup_seconds - g.configured_seconds:.2f}s"
    )


def test_stale_namespaces_of_killed_runs_are_removed_and_live_ones_kept(world: World) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now names no process: a namespace carrying it was left by a killed run
    stale = f"{netns.PREFIX}{dead.pid}n1dev"
    netns.ip("netns", "add", stale)
    try:
        removed = netns.remove_stale()
        listed = netns.ip("netns", "list").stdout
        assert stale in removed and stale not in listed
        assert all(name in listed for name in (world.net.device, world.net.gateway, world.net.upstream))
    finally:
        netns.ip("netns", "delete", stale, check=False)


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    missing = [tool for tool in ("ip", "iptables", "curl", "wireguard-go", "wg", "ss") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: .ci/run installs them (iproute2 iptables curl wireguard-go wireguard-tools)")
