"""What judging every WebSocket message costs, and whether a flood of them starves other clients.

    .venv/bin/python benchmarks/websocket.py               # 100,000 messages per proxy; prints a markdown table
    .venv/bin/python benchmarks/websocket.py --quick       # 2,000 messages: a smoke run
    .venv/bin/python benchmarks/websocket.py --mitmdump    # mitmdump (no add-ons) as a third proxy

Two tlsgate processes, identical but for `payload: report` against `payload: ignore` (inspection off), each
relay the same flood: one wss:// connection (a wsproto client, TLS through tlsgate's CA) sending small chat,
telemetry and Socket.IO messages as fast as it can to a local wss:// server that counts them. The cost is the
proxy's own CPU time per message (/proc/PID/stat). While the flood runs, a second client sends an HTTPS GET
through the same proxy every 20 ms; its latency (median, 99th percentile, worst) against the same probe with no
flood is what "starving" would show. The proxy's resident memory is read before and after the flood.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from wsproto import ConnectionType, WSConnection  # noqa: E402
from wsproto.events import AcceptConnection, Request, TextMessage  # noqa: E402

from benchmarks.payload import cpu_seconds  # noqa: E402
from tests.certgen import make_chain, write_pem, write_server_files  # noqa: E402
from tests.harness import Upstream, read_head  # noqa: E402
from tests.wspeers import WsServer, server_context  # noqa: E402

POLICY = """\
version: 1
defaults:
  payload: {setting}
devices:
  127.0.0.1: bench-phone
identifiers:
  bench-phone:
    email: bench.user@example.org
    phone: "+1 555 0100 999"
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proxy:
    def __init__(self, work: Path, name: str, argv: list[str], resolves: bool = True) -> None:
        self.name = name
        self.resolves = resolves  # knows the test names (tlsgate's --resolve); mitmdump is sent to 127.0.0.1
        self.port = free_port()
        self.log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*argv, "--listen-port", str(self.port)], cwd=work, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not start: {(work / f'{name}.log').read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def tlsgate(work: Path, setting: str, root: Path, ports: dict[str, int]) -> Proxy:
    name = f"payload-{setting}"
    policy = work / f"{name}.yaml"
    policy.write_text(POLICY.format(setting=setting))
    argv = [sys.executable, "-m", "tlsgate", "run", "--confdir", str(work / "ca"), "--upstream-ca", str(root)]
    argv += ["--findings", str(work / f"{name}.jsonl"), "--metrics-port", "0", "--policy", str(policy)]
    for host, port in ports.items():
        argv += ["--resolve", f"{host}:{port}:127.0.0.1"]
    argv += ["--set", "termlog_verbosity=warn", "--set", "flow_detail=0"]
    return Proxy(work, name, argv)


def mitmdump(work: Path, root: Path) -> Proxy:
    exe = Path(sys.executable).with_name("mitmdump")
    argv = [str(exe), "--set", f"confdir={work / 'ca'}", "--set", f"ssl_verify_upstream_trusted_ca={root}", "-q"]
    return Proxy(work, "mitmdump", argv, resolves=False)


def messages(rng: random.Random, count: int) -> list[str]:
    """Small messages as chat, telemetry and Socket.IO apps send them (60-200 bytes)."""
    out = []
    for n in range(count):
        kind = n % 3
        if kind == 0:
            out.append(json.dumps({"type": "message", "room": "general", "id": n, "text": "hello " * rng.randrange(1, 12)}))
        elif kind == 1:
            out.append(json.dumps({"device": "d-17", "seq": n, "hr": rng.randrange(50, 180), "ts": 1732000000 + n}))
        else:
            out.append(f"42/chat,{n}" + json.dumps(["typing", {"room": "general", "nonce": f"{rng.getrandbits(64):016x}"}]))
    return out


def connect(proxy: Proxy, host: str, port: int, ca: Path) -> tuple[ssl.SSLSocket, WSConnection]:
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=60)
    target = host if proxy.resolves else "127.0.0.1"
    raw.sendall(f"CONNECT {target}:{port} HTTP/1.1\r\nHost: {target}:{port}\r\n\r\n".encode())
    head = read_head(raw)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{proxy.name}: CONNECT answered {head[:40]!r}")
    sock = ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname=host)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=host, target="/ws")))
    while True:
        ws.receive_data(sock.recv(65536))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            return sock, ws


def probe(proxy: Proxy, ca: Path, url: str, stop: threading.Event, out: list[float]) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    url = url if proxy.resolves else url.replace("api.test", "127.0.0.1")
    with httpx.Client(proxy=f"http://127.0.0.1:{proxy.port}", verify=context, timeout=60) as client:
        while not stop.is_set():
            start = time.perf_counter()
            client.get(url)
            out.append(time.perf_counter() - start)
            stop.wait(0.02)


def flood(proxy: Proxy, server: WsServer, ca: Path, batch: list[str], url: str) -> dict[str, float]:
    """One connection sends `batch`; returns CPU and wall per message, the probe's latencies and memory."""
    server.received.clear()
    sock, ws = connect(proxy, "ws.test", server.port, ca)
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(proxy, ca, url, stop, latencies), daemon=True)
    rss_before = rss_mib(proxy.proc.pid)
    before, start = cpu_seconds(proxy.proc.pid), time.perf_counter()
    prober.start()
    for index in range(0, len(batch), 256):
        sock.sendall(b"".join(ws.send(TextMessage(m)) for m in batch[index : index + 256]))
    deadline = time.monotonic() + 600
    while len(server.received) < len(batch) and time.monotonic() < deadline:
        time.sleep(0.01)
    wall, cpu = time.perf_counter() - start, cpu_seconds(proxy.proc.pid) - before
    stop.set()
    prober.join()
    rss_after = rss_mib(proxy.proc.pid)
    sock.close()
    if len(server.received) < len(batch):
        raise RuntimeError(f"{proxy.name}: {len(server.received)} of {len(batch)} messages arrived")
    return {
        "cpu_us": cpu / len(batch) * 1e6,
        "wall_us": wall / len(batch) * 1e6,
        "probes": len(latencies),
        "p50_ms": statistics.median(latencies) * 1e3 if latencies else 0.0,
        "p99_ms": (sorted(latencies)[int(len(latencies) * 0.99)] if latencies else 0.0) * 1e3,
        "max_ms": max(latencies, default=0.0) * 1e3,
        "rss_growth_mib": rss_after - rss_before,
    }


def idle_probe(proxy: Proxy, ca: Path, url: str, seconds: float) -> float:
    latencies: list[float] = []
    stop = threading.Event()
    thread = threading.Thread(target=probe, args=(proxy, ca, url, stop, latencies), daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join()
    return statistics.median(latencies) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 messages instead of 100,000")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--mitmdump", action="store_true", help="also relay the flood through plain mitmdump")
    args = parser.parse_args()
    count = args.messages or (2000 if args.quick else 100_000)
    batch = messages(random.Random(24), count)
    with tempfile.TemporaryDirectory(prefix="tlsgate-ws-bench-") as tmp:
        work = Path(tmp)
        chain = make_chain(dns=("ws.test", "api.test"), ips=("127.0.0.1",))
        root = write_pem(work / "root.pem", chain.root)
        cert, key = write_server_files(work, chain.leaf, chain.intermediate)
        server = WsServer(server_context(cert, key)).start()
        upstream = Upstream("bench", cert, key).start()
        ports = {"ws.test": server.port, "api.test": upstream.port}
        url = f"https://api.test:{upstream.port}/probe"
        proxies = [tlsgate(work, "ignore", root, ports), tlsgate(work, "report", root, ports)]
        if args.mitmdump:
            proxies.insert(0, mitmdump(work, root))
        ca = work / "ca" / "mitmproxy-ca-cert.pem"
        rows: dict[str, dict[str, float]] = {}
        idle: dict[str, float] = {}
        try:
            for proxy in proxies:
                flood(proxy, server, ca, batch[:200], url)  # warm-up: imports, certificates, first connections
                idle[proxy.name] = idle_probe(proxy, ca, url, 2.0)
                rows[proxy.name] = flood(proxy, server, ca, batch, url)
        finally:
            for proxy in proxies:
                proxy.stop()
            server.stop()
            upstream.stop()
        findings = work / "payload-report.jsonl"
        found = len(findings.read_text().splitlines()) if findings.exists() else 0
    base = rows["payload-ignore"]["cpu_us"]
    print(f"# WebSocket flood: {count:,} small messages on one wss:// connection per proxy\n")
    print(
        "| proxy | CPU µs/message | ratio to inspection off | wall µs/message "
        "| probe GET p50 idle → flood (ms) | p99 (ms) | worst (ms) | RSS growth (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['cpu_us']:.0f} | {row['cpu_us'] / base:.2f}x | {row['wall_us']:.0f} | "
            f"{idle[name]:.1f} → {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} | {row['rss_growth_mib']:.1f} |"
        )
    print(f"\nfindings with inspection on: {found} (the flood is ordinary traffic: expected 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
