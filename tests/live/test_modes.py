"""Every documented mode, end to end, in a simulated network: a device namespace, tlsgate on a gateway, real servers.

One tlsgate per mode (a module-scoped, parametrised fixture), the device's
clients reaching it the way a phone would:

- regular:     curl -x http://GATEWAY:8080 (tlsgate resolves names: `run --resolve`)
- socks5:      curl --socks5-hostname GATEWAY:8080 (the same)
- transparent: no proxy setting; the gateway redirects TCP with iptables (the README's rules, UDP/443 rejected)
- wireguard:   wireguard-go on the device with `tlsgate wireguard add/show`'s config; routes into the tunnel

In the last two the device resolves names itself (`curl --resolve`) and
connects to the server's address, as an app does after its own DNS lookup.
Upstream servers live in the upstream namespace and count what reaches them;
"nothing forwarded" is asserted on those counters, never on timing.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mitmproxy import dns

from tests import netns
from tests.certgen import Chain, make_chain, write_pem, write_server_files
from tests.harness import REPO, CurlResult, Tlsgate, Upstream, _Handler, _Server, eventually
from tests.plainpeers import RecordingServer

MODES = ("regular", "socks5", "transparent", "wireguard")
PORT = 8080
GATEWAY = netns.GATEWAY_DEVICE_SIDE

# Upstream addresses (all in the upstream namespace), by role.
API_IP, PINNED_IP, PROBE_IP, MQTT_IP, QUIC_IP, UDP_IP, NAMED_IP = (f"{netns.UPSTREAM_NET}.{10 + i}" for i in range(7))
DNS_IP = API_IP  # the upstream's name server, for tlsgate's own DNS in WireGuard mode
NAMES = {
    "api.example.test": API_IP,
    "pinned.example.test": PINNED_IP,
    "probe.example.test": PROBE_IP,
    "mqtt.example.test": MQTT_IP,
    "quic.example.test": QUIC_IP,
    "named.example.test": NAMED_IP,
}
LAN_DEVICE, TUNNEL_DEVICE = "phone-lan", "phone-tunnel"

POLICY = """\
version: 1
devices:
  10.231.1.2: phone-lan
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
  - name: named-by-dns
    hosts: [named.example.test]
    mode: report
"""


def rule_line(text: str, needle: str) -> int:
    """The 1-based line of the rule holding `needle` (its `- name:` line, as findings cite rules)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if needle in line)
    return next(i for i in range(at, -1, -1) if lines[i].lstrip().startswith("- ")) + 1


# -- servers inside the upstream namespace ------------------------------------------------------------


def serve_http(net: netns.Network, name: str, address: str, port: int, context: ssl.SSLContext | None) -> Upstream:
    """tests.harness's counting server, bound inside the upstream namespace."""
    upstream = Upstream(name)
    with net.entered(net.upstream):
        server = _Server((address, port), _Handler)
    server.owner = upstream
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    upstream._server = server  # type: ignore[attr-defined]  # Upstream.stop() closes it
    upstream.port = port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return upstream


class UdpCounter:
    """Counts datagrams to one UDP port: proof that UDP/443 did or did not get around tlsgate."""

    def __init__(self, net: netns.Network, address: str, port: int) -> None:
        with net.entered(net.upstream):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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
            if address is None or question.type != dns.types.A:
                answer = query.fail(dns.response_codes.NXDOMAIN)
            else:
                import ipaddress

                answer = query.succeed([dns.ResourceRecord.A(question.name, ipaddress.IPv4Address(address))])
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
    api: Upstream
    plain: Upstream
    pinned: Upstream
    probe: Upstream
    named: Upstream
    mqtt: RecordingServer
    udp: UdpCounter
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
        from proxy.tls.pins import spki_pin

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

    def curl(self, url: str, *extra: str) -> CurlResult:
        name = re.match(r"https?://([^/:]+)", url).group(1)  # type: ignore[union-attr]
        port = 443 if url.startswith("https") else 80
        cmd = ["curl", "-sS", "--noproxy", "", "--max-time", "15", "-D", "-", *self.reaches(name, port), *extra, url]
        done = self.net.run(self.net.device, *cmd, check=False, timeout=30)
        return CurlResult.parse(done)

    def findings(self, check: str | None = None, host: str | None = None) -> list[dict]:
        return [
            f for f in self.tlsgate.findings() if (check is None or f["check"] == check) and (host is None or f["host"] == host)
        ]

    def wait_finding(self, check: str, host: str) -> dict:
        assert eventually(lambda: bool(self.findings(check, host)), timeout=10), (
            f"no {check} finding for {host}: {self.tlsgate.findings()}"
        )
        return self.findings(check, host)[-1]

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


# The gateway set-up the README documents (section "Devices and modes"), with this network's interface names.
TRANSPARENT_RULES = (
    ("-t", "nat", "-A", "PREROUTING", "-i", "gw-dev", "-p", "tcp", "!", "-d", GATEWAY, "-j", "REDIRECT", "--to-ports", str(PORT)),
    ("-A", "FORWARD", "-i", "gw-dev", "-p", "udp", "--dport", "443", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"),
)


def _setup_wireguard(world: World, workdir: Path) -> list[str]:
    """Create the device's peer before `run` (tlsgate loads peers at start)."""
    cmd = [sys.executable, "-m", "proxy", "wireguard", "add", "phone", "--confdir", str(workdir / "certs")]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, cwd=workdir)
    return ["--set", f"dns_name_servers={DNS_IP}"]


def wg_link(net: netns.Network) -> str:
    """The device's WireGuard interface: named per test network, because wireguard-go's control socket
    (/var/run/wireguard/NAME.sock) is shared by every namespace, so two test workers' `wg0` would collide."""
    return f"{net.tag}w"[-15:]


def _connect_wireguard(world: World, workdir: Path) -> None:
    """The device side: wireguard-go, the config `tlsgate wireguard show` prints, a route for the upstream net."""
    net = world.net
    link = wg_link(net)
    show = [sys.executable, "-m", "proxy", "wireguard", "show", "phone", "--endpoint", f"{GATEWAY}:51820"]
    conf = subprocess.run(
        [*show, "--confdir", str(workdir / "certs")], check=True, capture_output=True, text=True, timeout=60, cwd=workdir
    ).stdout
    address = next(line.split("=", 1)[1].split(",")[0].strip() for line in conf.splitlines() if line.startswith("Address"))
    # `wg setconf` takes the keys and peer only; wg-quick's Address and DNS are applied with ip(8) below.
    stripped = "\n".join(line for line in conf.splitlines() if not line.startswith(("Address", "DNS")))
    conf_file = workdir / "wg.conf"
    conf_file.write_text(stripped + "\n")
    conf_file.chmod(0o600)
    net.spawn(net.device, ["wireguard-go", "-f", link], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert eventually(lambda: net.run(net.device, "ip", "link", "show", link, check=False).returncode == 0, timeout=30)  # wireguard-go starts slowly on a busy machine
    net.run(net.device, "wg", "setconf", link, str(conf_file))
    net.run(net.device, "ip", "addr", "add", address, "dev", link)
    net.run(net.device, "ip", "link", "set", link, "mtu", "1380", "up")
    # The upstream network and tlsgate's in-tunnel DNS go through the tunnel; the endpoint stays on the veth.
    net.run(net.device, "ip", "route", "add", netns.UPSTREAM_SUBNET, "dev", link)
    net.run(net.device, "ip", "route", "add", "10.0.0.53/32", "dev", link)


def _teardown(world: World, mode: str) -> None:
    net = world.net
    if mode == "transparent":
        net.iptables("-t", "nat", "-F", "PREROUTING")
        net.iptables("-F", "FORWARD")
    if mode == "wireguard":
        net.run(net.device, "ip", "link", "del", wg_link(net), check=False)  # wireguard-go exits with its interface


@pytest.fixture(scope="module", params=MODES)
def gate(request: pytest.FixtureRequest, world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"gate-{mode}")
    extra: list[str] = []
    if mode in ("regular", "socks5"):
        extra += [arg for name, ip in NAMES.items() for arg in ("--resolve", f"{name}:*:{ip}")]
    if mode == "wireguard":
        extra += _setup_wireguard(world, workdir)
    if mode == "transparent":
        for rule in TRANSPARENT_RULES:
            world.net.iptables(*rule)
        # The devices' DNS: tlsgate's own, so it knows which name each address it answered stands for.
        extra += ["--mode", "dns@53", "--set", f"dns_name_servers={DNS_IP}"]
    listen = [] if mode == "transparent" else ["--listen-host", "0.0.0.0"]  # transparent: its own default
    command = [
        sys.executable, "-m", "proxy", "run", *listen, "--listen-port", str(PORT), "--mode", mode,
        "--metrics-port", "0", "--confdir", str(workdir / "certs"), "--findings", str(workdir / "findings.jsonl"),
        "--policy", str(world.policy_file), "--upstream-ca", str(world.root_file), *extra,
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


def test_an_app_accepting_any_certificate_is_caught_by_the_probe(g: Gate) -> None:
    result = g.curl("https://probe.example.test/v1/login", "--insecure", "-H", "Accept: application/json")
    assert result.status == 403, result
    assert g.world.probe.requests == []
    finding = g.wait_finding("client_probe", "probe.example.test")
    assert finding["action"] == "blocked" and finding["severity"] == "critical" and finding["device"] == g.device
    assert finding["rule"] == f"{g.world.policy_shown}:{rule_line(g.world.policy_text, 'name: probed')}"


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


@pytest.mark.parametrize("gate", ["transparent"], indirect=True)
def test_udp_443_does_not_get_around_transparent_mode(g: Gate) -> None:
    """mitmproxy's transparent mode takes TCP only, so the gateway must reject UDP/443 (QUIC) or apps bypass tlsgate."""
    net, udp = g.net, g.world.udp
    with net.entered(net.device):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        sender.sendto(b"quic-initial-with-rule", (UDP_IP, 443))
        # Control: without the rule, the same datagram does arrive, so the assertion below can fail.
        rule = TRANSPARENT_RULES[1]
        net.iptables("-D", *rule[1:])
        try:
            sender.sendto(b"control-without-rule", (UDP_IP, 443))
            assert eventually(lambda: b"control-without-rule" in udp.payloads, timeout=10)
        finally:
            net.iptables(*rule)
    assert b"quic-initial-with-rule" not in udp.payloads, "UDP/443 passed the gateway around tlsgate"


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
    assert finding["action"] == "reported" and finding["rule"] == f"{g.world.policy_shown}:{rule_line(g.world.policy_text, 'named-by-dns')}"


@pytest.mark.parametrize("gate", ["wireguard"], indirect=True)
def test_wireguard_setup_time_is_reported(g: Gate) -> None:
    """Not a timing assertion: the measured set-up time is printed for the report (`-s` / `-rA`)."""
    assert g.setup_seconds is not None
    assert g.listening_seconds is not None and g.configured_seconds is not None
    print(
        f"WireGuard: `tlsgate run` start to first proxied response {g.setup_seconds:.2f}s: tlsgate listening "
        f"{g.listening_seconds:.2f}s, device configured (`tlsgate wireguard show`, wireguard-go, wg setconf) "
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
