"""What inspecting streamed uploads costs: chunked uploads through plain mitmdump, tlsgate with `payload: ignore`,
and tlsgate holding and judging each body's first `max_bytes` (64 KiB, and 4 MiB).

    .venv/bin/python benchmarks/payload_stream.py            # ~2 min; prints markdown tables and the ratios
    .venv/bin/python benchmarks/payload_stream.py --quick    # a smoke run

Each proxy takes the same uploads over HTTPS (HTTP/1.1, `Transfer-Encoding:
chunked`, 64 KiB writes, the body a JSON-lines event log) to a local upstream
that records when each body's first byte arrived. Rounds are interleaved so
drift hits every proxy alike. Reported per proxy: its own CPU time per MiB
uploaded (/proc/PID/stat), wall time per upload, the delay between the
upload's head and its first body byte at the upstream (what holding adds:
mitmproxy itself buffers 1 MiB of a chunked body before it streams it), and
the proxy's peak RSS (VmHWM). mitmdump runs with `stream_large_bodies=1m`, as
tlsgate sets it, so all of them stream the same way.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.payload import cpu_seconds  # noqa: E402
from tests.certgen import make_chain, write_pem, write_server_files  # noqa: E402
from tests.tlsservers import BodyRecorder  # noqa: E402

MiB = 1 << 20
POLICY = """\
version: 1
defaults:
  payload: {setting}
"""
CONFIGS = {  # name -> tlsgate's `payload:` (None: plain mitmdump)
    "mitmdump": None,
    "tlsgate payload: ignore": "ignore",
    "tlsgate payload: report (64 KiB held)": "report",
    "tlsgate payload: report, max_bytes 4 MiB": "{ecb: report, secrets: report, identifiers: report, max_bytes: 4194304}",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Proxy:
    def __init__(self, work: Path, name: str, setting: str | None, root: Path, upstream_port: int) -> None:
        self.name = name
        self.port = free_port()
        slug = name.split()[0] + str(abs(hash(name)) % 1000)
        common = ["--set", "termlog_verbosity=warn", "--set", "flow_detail=0"]
        if setting is None:
            argv = [str(Path(sys.executable).parent / "mitmdump"), *common, "--listen-host", "127.0.0.1"]
            argv += ["--listen-port", str(self.port), "--set", f"confdir={work / 'ca'}"]
            argv += ["--set", f"ssl_verify_upstream_trusted_ca={root}", "--set", "stream_large_bodies=1m"]
        else:
            policy = work / f"{slug}.yaml"
            policy.write_text(POLICY.format(setting=setting))
            argv = [sys.executable, "-m", "tlsgate", "run", "--listen-port", str(self.port), "--confdir", str(work / "ca")]
            argv += ["--upstream-ca", str(root), "--findings", str(work / f"{slug}.jsonl"), "--metrics-port", "0"]
            argv += ["--policy", str(policy), "--resolve", f"api.test:{upstream_port}:127.0.0.1", *common]
        self.log = open(work / f"{slug}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(argv, cwd=work, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not start: {(work / f'{slug}.log').read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def event_log(size: int) -> bytes:
    line = b'{"event": "frame", "ts": 1733500000, "screen": "player", "note": "' + b"n" * 150 + b'"}\n'
    return (line * (size // len(line) + 1))[:size]


def pieces(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for at in range(0, len(body), size):
        yield body[at : at + size]


def run_round(proxy: Proxy, ca: Path, recorder: BodyRecorder, body: bytes, uploads: int) -> dict[str, float]:
    context = ssl.create_default_context(cafile=str(ca))
    # mitmdump has no --resolve: it is sent to 127.0.0.1 by name (the upstream's certificate has the IP too)
    host = "127.0.0.1" if proxy.name == "mitmdump" else "api.test"
    before, start, holds = cpu_seconds(proxy.proc.pid), time.perf_counter(), []
    with httpx.Client(proxy=f"http://127.0.0.1:{proxy.port}", verify=context, timeout=120) as client:
        for _ in range(uploads):
            recorder.received.clear()
            response = client.post(f"https://{host}:{recorder.port}/v1/upload", content=pieces(body))
            if response.status_code != 200:
                raise RuntimeError(f"{proxy.name}: answered {response.status_code}")
            (seen,) = recorder.received
            if len(seen.body) != len(body) or seen.first_byte_at is None:
                raise RuntimeError(f"{proxy.name}: the upstream got {len(seen.body)} of {len(body)} bytes")
            holds.append(seen.first_byte_at - seen.head_at)
            seen.body = bytearray()
    wall = time.perf_counter() - start
    mib = uploads * len(body) / MiB
    return {"cpu_per_mib": (cpu_seconds(proxy.proc.pid) - before) / mib, "wall": wall / uploads, "hold": statistics.median(holds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 1 upload of 8 MiB")
    args = parser.parse_args()
    rounds, uploads, size = (1, 1, 8 * MiB) if args.quick else (4, 3, 16 * MiB)
    body = event_log(size)
    with tempfile.TemporaryDirectory(prefix="tlsgate-stream-bench-") as tmp:
        work = Path(tmp)
        chain = make_chain(dns=("api.test",), ips=("127.0.0.1",))
        root = write_pem(work / "root.pem", chain.root)
        cert, key = write_server_files(work, chain.leaf, chain.intermediate)
        recorder = BodyRecorder(cert, key).start()
        proxies: list[Proxy] = []
        results: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
        try:
            for name, setting in CONFIGS.items():
                proxies.append(Proxy(work, name, setting, root, recorder.port))  # the first tlsgate makes the CA
                if setting is not None and not (work / "ca" / "mitmproxy-ca-cert.pem").exists():
                    time.sleep(1)
            proxies.sort(key=lambda proxy: proxy.name != "mitmdump")
            ca = work / "ca" / "mitmproxy-ca-cert.pem"
            for proxy in proxies:
                run_round(proxy, ca, recorder, event_log(2 * MiB), 1)  # warm-up: imports, certificates
            for index in range(rounds):
                for proxy in proxies[index % len(proxies) :] + proxies[: index % len(proxies)]:
                    results[proxy.name].append(run_round(proxy, ca, recorder, body, uploads))
            rss = {proxy.name: peak_rss_mib(proxy.proc.pid) for proxy in proxies}
        finally:
            for proxy in proxies:
                proxy.stop()
            recorder.stop()
    median = {name: {key: statistics.median(row[key] for row in rows) for key in rows[0]} for name, rows in results.items()}
    base, off = median["mitmdump"], median["tlsgate payload: ignore"]
    print(f"# streamed uploads ({rounds} rounds x {uploads} chunked uploads of {size // MiB} MiB per proxy)\n")
    print("| proxy | CPU s / MiB | vs mitmdump | vs payload: ignore | wall s / upload | head → body (ms) | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in median.items():
        print(
            f"| {name} | {row['cpu_per_mib']:.4f} | {row['cpu_per_mib'] / base['cpu_per_mib']:.2f}x "
            f"| {row['cpu_per_mib'] / off['cpu_per_mib']:.2f}x | {row['wall']:.2f} | {row['hold'] * 1e3:.0f} | {rss[name]:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
