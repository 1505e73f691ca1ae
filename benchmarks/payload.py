"""What payload inspection costs: tlsgate with `payload: report` (and seeded identifiers) against `payload: ignore`.

    .venv/bin/python benchmarks/payload.py            # ~2 min; prints a markdown table
    .venv/bin/python benchmarks/payload.py --quick    # a smoke run

Two tlsgate processes, identical but for the `payload:` setting, take the same
realistic body mix over HTTPS (keep-alive, one client thread per proxy at a
time, rounds interleaved so drift hits both alike) to a local Python HTTPS
upstream. The cost is the proxy's own CPU time per request (/proc/PID/stat),
so a slow upstream or client does not blur it; wall time is shown too.
In-process, the scan of each body kind alone is timed as well.

The body mix (per 20 requests): 6 small JSON (logins, events), 4 JSON event
batches of 2-8 KiB, 3 form posts (one with AES-ECB base64), 2 base64 AES-GCM
blobs, 2 gzip JSON, 1 40 KiB PNG-like binary, 1 200 KiB JSON upload (64 KiB
inspected), 1 GET with a query string.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import random
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.certgen import make_chain, write_pem, write_server_files  # noqa: E402
from tests.harness import Upstream  # noqa: E402
from tests.payload_corpus import app_json, ecb, gcm, png  # noqa: E402
from tlsgate.payload.fields import body_fields  # noqa: E402
from tlsgate.payload.identifiers import SeedIndex  # noqa: E402
from tlsgate.payload.scan import scan  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
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
    advertising_id: 38400000-8cf0-11bd-b23e-10b96e40000d
    username: bench_user_01
"""


def body_mix(rng: random.Random) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(name, path, body, headers) for 20 requests, as the module docstring lists them."""
    key = b"mysecretkey12345"
    json_h = {"Content-Type": "application/json"}
    form_h = {"Content-Type": "application/x-www-form-urlencoded"}
    out: list[tuple[str, str, bytes, dict[str, str]]] = []
    out += [("small json", "/v1/event", app_json(rng), json_h) for _ in range(6)]
    batch = [json.dumps({"events": [json.loads(app_json(rng)) for _ in range(rng.randrange(15, 60))]}).encode() for _ in range(4)]
    out += [("event batch", "/v1/batch", b, json_h) for b in batch]
    ecb_value = base64.b64encode(ecb(key, app_json(rng))).decode()
    out += [("form", "/v1/login", f"user=alice&password=pw{i}&encryptedData={ecb_value}".encode(), form_h) for i in range(3)]
    sealed = [base64.b64encode(gcm(rng, key, app_json(rng) * 8)).decode() for _ in range(2)]
    out += [("gcm blob", "/v1/secure", json.dumps({"data": value}).encode(), json_h) for value in sealed]
    out += [("gzip json", "/v1/batch", gzip.compress(batch[0]), {**json_h, "Content-Encoding": "gzip"}) for _ in range(2)]
    image = png(rng)
    image = image + os.urandom(max(0, 40_000 - len(image)))
    out.append(("image", "/v1/avatar", image, {"Content-Type": "image/png"}))
    big = json.dumps({"items": [json.loads(app_json(rng)) for _ in range(1500)]}).encode()[: 200 * 1024]
    out.append(("200 KiB upload", "/v1/upload", big, json_h))
    out.append(("query GET", "/v1/search?q=coffee&page=2&lang=en", b"", {}))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gate:
    def __init__(self, work: Path, setting: str, root: Path, upstream_port: int) -> None:
        self.name = f"payload-{setting.split(',')[0].strip('{} ')}"
        policy = work / f"{self.name}.yaml"
        policy.write_text(POLICY.format(setting=setting))
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "tlsgate",
            "run",
            "--listen-port",
            str(self.port),
            "--confdir",
            str(work / "ca"),
            "--upstream-ca",
            str(root),
            "--findings",
            str(work / f"{self.name}.jsonl"),
            "--metrics-port",
            "0",
            "--policy",
            str(policy),
            "--resolve",
            f"api.test:{upstream_port}:127.0.0.1",
            "--set",
            "termlog_verbosity=warn",
            "--set",
            "flow_detail=0",
        ]
        self.log = open(work / f"{self.name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(argv, cwd=work, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start: {(work / f'{self.name}.log').read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


Mix = list[tuple[str, str, bytes, dict[str, str]]]


def run_round(gate: Gate, ca: Path, upstream_port: int, mix: Mix, repeat: int) -> tuple[float, float, int]:
    """(proxy CPU seconds, wall seconds, requests) for `repeat` passes over the mix on one keep-alive connection."""
    context = ssl.create_default_context(cafile=str(ca))
    before, start, done = cpu_seconds(gate.proc.pid), time.perf_counter(), 0
    with httpx.Client(proxy=f"http://127.0.0.1:{gate.port}", verify=context, timeout=30) as client:
        for _ in range(repeat):
            for _name, path, body, headers in mix:
                url = f"https://api.test:{upstream_port}{path}"
                response = client.post(url, content=body, headers=headers) if body else client.get(url)
                if response.status_code != 200:
                    raise RuntimeError(f"{gate.name}: {path} answered {response.status_code}")
                done += 1
    return cpu_seconds(gate.proc.pid) - before, time.perf_counter() - start, done


def micro(mix: list[tuple[str, str, bytes, dict[str, str]]]) -> list[str]:
    """The scan alone, per body kind, with four seeded identifiers (what one request costs the add-on)."""
    forms = SeedIndex(
        {
            "p": {
                "email": ("bench.user@example.org",),
                "phone": ("+15550100999",),
                "username": ("bench_user_01",),
                "advertising_id": ("38400000-8cf0-11bd-b23e-10b96e40000d",),
            }
        }
    ).forms_for("p")
    lines = ["| body | bytes | scan (µs) |", "|---|---:|---:|"]
    seen: set[str] = set()
    for name, _path, body, headers in mix:
        if name in seen or not body:
            continue
        seen.add(name)
        data = gzip.decompress(body) if headers.get("Content-Encoding") == "gzip" else body
        data = data[:65536]

        def once(data: bytes = data, headers: dict[str, str] = headers) -> None:
            fields = body_fields(headers.get("Content-Type", ""), data, True)
            scan(fields, host="api.test", namer=".".join, forms=forms)

        runs = 20
        best = min(timeit.repeat(once, number=runs, repeat=3)) / runs
        lines.append(f"| {name} | {len(body):,} | {best * 1e6:,.0f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 1 pass")
    args = parser.parse_args()
    rounds, repeat = (1, 1) if args.quick else (4, 10)
    rng = random.Random(14)
    mix = body_mix(rng)
    with tempfile.TemporaryDirectory(prefix="tlsgate-payload-bench-") as tmp:
        work = Path(tmp)
        chain = make_chain(dns=("api.test",), ips=("127.0.0.1",))
        root = write_pem(work / "root.pem", chain.root)
        cert, key = write_server_files(work, chain.leaf, chain.intermediate)
        upstream = Upstream("bench", cert, key).start()
        on = Gate(work, "report", root, upstream.port)
        off = Gate(work, "ignore", root, upstream.port)
        ca = work / "ca" / "mitmproxy-ca-cert.pem"
        results: dict[str, list[tuple[float, float, int]]] = {on.name: [], off.name: []}
        try:
            run_round(on, ca, upstream.port, mix, 1)  # warm-up: imports, CA, first connections
            run_round(off, ca, upstream.port, mix, 1)
            for index in range(rounds):
                order = (on, off) if index % 2 == 0 else (off, on)
                for gate in order:
                    results[gate.name].append(run_round(gate, ca, upstream.port, mix, repeat))
        finally:
            on.stop()
            off.stop()
            upstream.stop()
        findings = len((work / f"{on.name}.jsonl").read_text().splitlines()) if (work / f"{on.name}.jsonl").exists() else 0
    per = {name: [cpu / count * 1e3 for cpu, _wall, count in rows] for name, rows in results.items()}
    wall = {name: [w / count * 1e3 for _cpu, w, count in rows] for name, rows in results.items()}
    base = statistics.median(per[off.name])
    print(f"# payload inspection cost ({rounds} rounds x {repeat} passes x {len(mix)} requests per proxy)\n")
    print("| config | proxy CPU ms/request (median) | ratio | wall ms/request (median) |")
    print("|---|---:|---:|---:|")
    for name in (off.name, on.name):
        cpu = statistics.median(per[name])
        print(f"| {name} | {cpu:.2f} | {cpu / base:.2f}x | {statistics.median(wall[name]):.2f} |")
    print(f"\nfindings recorded with the section on: {findings} (reported ones are recorded once per host, kind and detail)\n")
    print("\n".join(micro(mix)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
