"""What a hostile body costs payload inspection at the largest `max_bytes` a policy accepts (16 MiB), and what
it costs every other device meanwhile.

    .venv/bin/python benchmarks/payload_hostile.py              # ~2-4 min; prints a markdown table
    .venv/bin/python benchmarks/payload_hostile.py --only jwt   # the classes whose name contains "jwt"
    .venv/bin/python benchmarks/payload_hostile.py --size 1048576 --quick   # a smoke run

One tlsgate (`payload: report` for every check, four seeded identifiers, `max_bytes: 16777216`) in front of a
local HTTPS upstream. For each hostile class, one client uploads the body while a second client (another
device's app, on its own keep-alive connection) sends a small GET through the same tlsgate every 50 ms. Per
body the table shows:

* proxy CPU-s: the tlsgate process's CPU time from the upload's start until its answer (/proc/PID/stat), the
  prober's few requests included (about 1 ms each);
* RSS growth: the process's peak RSS during the upload (VmHWM, reset through /proc/PID/clear_refs before
  each body) minus its RSS before it;
* worst stall: the longest any of the prober's requests took during the upload (an idle proxy answers in
  1-3 ms): how long tlsgate kept every other device waiting.

The `baseline` row is the same 16 MiB through a host whose rule says `payload: ignore`: the cost of moving the
bytes through TLS twice, which no scanning change can remove. Numbers only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.certgen import make_chain, write_pem, write_server_files  # noqa: E402
from tests.harness import Upstream  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
MAX_BYTES = 16 * 1024 * 1024
EMAIL = "bench.user@example.org"
POLICY = f"""\
version: 1
defaults:
  mode: report
  payload: {{ecb: report, secrets: report, identifiers: report, max_bytes: {MAX_BYTES}}}
devices:
  127.0.0.1: bench-phone
identifiers:
  bench-phone:
    email: {EMAIL}
    phone: "+1 555 0100 999"
    advertising_id: 38400000-8cf0-11bd-b23e-10b96e40000d
    username: bench_user_01
rules:
  - hosts: plain.test
    payload: ignore
"""
HOSTS = ("api.test", "probe.test", "plain.test")


def fill(unit: bytes, size: int) -> bytes:
    return (unit * (size // len(unit) + 1))[:size]


@dataclass(frozen=True)
class Hostile:
    name: str
    content_type: str
    make: Callable[[int], bytes]
    encoding: str = ""
    host: str = "api.test"


def _b64_runs(size: int, run: int) -> bytes:
    rng = random.Random(7)
    piece = base64.b64encode(rng.randbytes(run * 3 // 4)) + b" "
    return fill(piece, size)


def _key_line() -> bytes:
    keys = [
        "ghp_" + "a1B2c3D4" * 5,
        "xoxb-" + "12345-67890-abcdefABCDEF",
        "sk" + "_live_" + "Ab3dEf6hIj9kLm2nOp5q",
        "AIza" + "Sy" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        "npm_" + "A1b2C3d4E5" * 3 + "f6G7h8",
        "glpat-" + "x" * 20,
        "SK" + "0123456789abcdef" * 2,
        "SG." + "a" * 22 + "." + "b" * 43,
        "shpat_" + "0a1b2c3d" * 4,
    ]
    return (" ".join(keys) + "\n").encode()


def _multipart_parts(size: int) -> bytes:
    return fill(b'--XX\r\nContent-Disposition: form-data; name="a"\r\n\r\nv\r\n', size)


def _multipart_headers(size: int) -> bytes:
    head = b'--XX\r\nContent-Disposition: form-data; name="a"; ' + b"x" * (1 << 20) + b"\r\n\r\nv\r\n"
    return fill(head, size)


def _wide_json(size: int) -> bytes:
    count = size // 16
    text = b"{" + b",".join(b'"k%07d":"v"' % i for i in range(count)) + b"}"
    return text[: size - 1].rsplit(b",", 1)[0] + b"}"


def _json_b64_strings(size: int) -> bytes:
    rng = random.Random(3)
    items = [b'"' + base64.b64encode(rng.randbytes(32)) + b'"' for _ in range(4096)]
    unit = b",".join(items) + b","
    return b"[" + fill(unit, size - 64).rsplit(b",", 1)[0].rstrip(b",") + b"]"


def _giant_b64_json(size: int) -> bytes:
    blob = base64.b64encode(random.Random(5).randbytes((size - 64) * 3 // 4))
    return b'{"blob":"' + blob + b'"}'


def _gzip_bomb(size: int) -> bytes:
    return gzip.compress(fill(b"AKIAABCDEFGHIJKLMNOP " + _key_line(), size), compresslevel=9)


def _identifier_dense(size: int) -> bytes:
    md5 = hashlib.md5(EMAIL.encode()).hexdigest()
    return fill(f"{EMAIL} {md5} {base64.b64encode(EMAIL.encode()).decode()}\n".encode(), size)


HOSTILE: tuple[Hostile, ...] = (
    Hostile("aws key-shaped tokens", "text/plain", lambda n: fill(b"AKIAABCDEFGHIJKLMNOP ", n)),
    Hostile("mixed provider keys", "text/plain", lambda n: fill(_key_line(), n)),
    Hostile("1.9M form fields", "application/x-www-form-urlencoded", lambda n: fill(b"k1=v2345&", n)),
    Hostile(
        "form, 1 MiB base64 values",
        "application/x-www-form-urlencoded",
        lambda n: fill(b"f=" + _b64_runs(1 << 20, 1 << 20).strip().replace(b"+", b"-").replace(b"/", b"_") + b"&", n),
    ),
    Hostile("wide JSON object", "application/json", _wide_json),
    Hostile("deep JSON nesting", "application/json", lambda n: b"[" * (n // 2) + b"]" * (n // 2)),
    Hostile("long JSON number array", "application/json", lambda n: b"[" + fill(b"0,", n - 3) + b"0]"),
    Hostile("JSON base64 strings", "application/json", _json_b64_strings),
    Hostile("one giant base64 JSON value", "application/json", _giant_b64_json),
    Hostile("1 MiB base64 runs in text", "text/plain", lambda n: _b64_runs(n, 1 << 20)),
    Hostile("4 KiB hex runs in text", "text/plain", lambda n: fill(random.Random(2).randbytes(2048).hex().encode() + b" ", n)),
    Hostile("unsigned JWTs", "text/plain", lambda n: fill(b"eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. ", n)),
    Hostile("undecodable JWT shapes", "text/plain", lambda n: fill(b"eyJzzzz.a.b ", n)),
    Hostile("multipart, tiny parts", "multipart/form-data; boundary=XX", _multipart_parts),
    Hostile("multipart, 1 MiB part headers", "multipart/form-data; boundary=XX", _multipart_headers),
    Hostile("gzip bomb of key tokens", "text/plain", _gzip_bomb, encoding="gzip"),
    Hostile("NUL and control bytes", "application/octet-stream", lambda n: fill(bytes(range(32)), n)),
    Hostile("random ciphertext", "application/octet-stream", lambda n: random.Random(9).randbytes(n)),
    Hostile("invalid UTF-8, astral chars", "text/plain", lambda n: fill(b"\xed\xa0\x80\xf0\x9f\x98\x80ab\xff", n)),
    Hostile("seeded identifiers, dense", "text/plain", _identifier_dense),
)
BASELINE = Hostile(
    "baseline (payload: ignore)", "application/x-www-form-urlencoded", lambda n: fill(b"k1=v2345&", n), host="plain.test"
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> bool:
    """Start VmHWM afresh (Linux 4.0+): without it, one body's peak would hide every later one's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prober(threading.Thread):
    """Another device: a small GET every 50 ms on its own keep-alive connection; keeps (start, seconds) per request."""

    def __init__(self, proxy: str, ca: Path, url: str) -> None:
        super().__init__(daemon=True)
        self.proxy, self.ca, self.url = proxy, ca, url
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = threading.Event()
        self.in_flight: float | None = None

    def run(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca))
        with httpx.Client(proxy=self.proxy, verify=context, timeout=120) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                self.in_flight = start
                try:
                    client.get(self.url)
                except httpx.HTTPError:
                    self.errors += 1
                self.in_flight = None
                self.samples.append((start, time.monotonic() - start))
                self.stop.wait(max(0.0, 0.05 - (time.monotonic() - start)))

    def worst(self, since: float, until: float) -> float:
        """The longest request that overlapped [since, until] (one still waiting counts up to now)."""
        worst = max((d for s, d in list(self.samples) if s + d >= since and s <= until), default=0.0)
        pending = self.in_flight
        return max(worst, time.monotonic() - pending) if pending is not None and pending <= until else worst


def measure(pid: int, prober: Prober, client: httpx.Client, url: str, item: Hostile, body: bytes) -> dict[str, float | str]:
    headers = {"Content-Type": item.content_type, **({"Content-Encoding": item.encoding} if item.encoding else {})}
    time.sleep(0.3)  # a few idle probes between bodies
    reset_peak(pid)
    rss, cpu, start = status_kib(pid, "VmRSS"), cpu_seconds(pid), time.monotonic()
    try:
        status: int | str = client.post(url, content=body, headers=headers).status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    end = time.monotonic()
    time.sleep(0.12)  # the probe in flight at the end finishes and is counted
    return {
        "cpu": cpu_seconds(pid) - cpu,
        "rss": (status_kib(pid, "VmHWM") - rss) / 1024,
        "stall": prober.worst(start, end),
        "wall": end - start,
        "status": status,
        "sent": len(body),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=MAX_BYTES, help="bytes per hostile body (default 16 MiB)")
    parser.add_argument("--only", default="", help="only the classes whose name contains this")
    parser.add_argument("--quick", action="store_true", help="the first three classes only")
    args = parser.parse_args()
    items = [h for h in HOSTILE if args.only.lower() in h.name.lower()]
    items = [BASELINE, *(items[:3] if args.quick else items)]
    with tempfile.TemporaryDirectory(prefix="tlsgate-hostile-bench-") as tmp:
        work = Path(tmp)
        chain = make_chain(dns=HOSTS, ips=("127.0.0.1",))
        root = write_pem(work / "root.pem", chain.root)
        cert, key = write_server_files(work, chain.leaf, chain.intermediate)
        upstream = Upstream("bench", cert, key).start()
        # headers and body leave in two writes: without this, Nagle and delayed ACKs add 40 ms to every probe
        upstream._server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
        policy = work / "policy.yaml"
        policy.write_text(POLICY)
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "tlsgate",
            "run",
            "--listen-port",
            str(port),
            "--confdir",
            str(work / "ca"),
            "--upstream-ca",
            str(root),
            "--findings",
            str(work / "findings.jsonl"),
            "--metrics-port",
            "0",
            "--policy",
            str(policy),
            "--set",
            "termlog_verbosity=warn",
            "--set",
            "flow_detail=0",
        ]
        for host in HOSTS:
            argv += ["--resolve", f"{host}:{upstream.port}:127.0.0.1"]
        with open(work / "tlsgate.log", "wb") as log:
            proc = subprocess.Popen(argv, cwd=work, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError((work / "tlsgate.log").read_text()[-3000:])
                    time.sleep(0.1)
                proxy, ca = f"http://127.0.0.1:{port}", work / "ca" / "mitmproxy-ca-cert.pem"
                prober = Prober(proxy, ca, f"https://probe.test:{upstream.port}/ping")
                prober.start()
                rows = []
                context = ssl.create_default_context(cafile=str(ca))
                with httpx.Client(proxy=proxy, verify=context, timeout=300) as client:
                    client.get(f"https://api.test:{upstream.port}/warm")
                    time.sleep(1)
                    idle = max((d for _, d in prober.samples[-10:]), default=0.0)
                    for item in items:
                        body = item.make(args.size)
                        rows.append(
                            (item, measure(proc.pid, prober, client, f"https://{item.host}:{upstream.port}/up", item, body))
                        )
                        upstream.requests.clear()
                        del body
                prober.stop.set()
                prober.join(10)
                findings = (work / "findings.jsonl").read_text().splitlines() if (work / "findings.jsonl").exists() else []
                longest = max((len(line) for line in findings), default=0)
            finally:
                proc.terminate()
                proc.wait(30)
                upstream.stop()
    print(f"# hostile bodies at max_bytes {MAX_BYTES:,} ({args.size:,} bytes each)\n")
    print(f"idle probe latency before the first body: {idle * 1000:.1f} ms; prober errors: {prober.errors}\n")
    print("| body | sent bytes | answer | proxy CPU-s | peak RSS growth MiB | worst stall for another client ms | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for item, row in rows:
        print(
            f"| {item.name} | {row['sent']:,} | {row['status']} | {row['cpu']:.2f} | {row['rss']:.0f} | "
            f"{float(row['stall']) * 1000:.0f} | {row['wall']:.2f} |"
        )
    print(f"\nfindings lines: {len(findings)}, longest line: {longest:,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
