"""How long `tlsgate report` takes on a big findings file, and how much memory it needs, per format.

    .venv/bin/python benchmarks/report_scale.py [--lines 1000000] [--out-md BENCHMARKS-section.md]

Each format runs in a fresh process (so peak RSS is that format's alone) over
the same generated file: a device-farm-like mix of repeated findings from a
few devices and a few hundred hosts, with realistic evidence sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FORMATS = ("json", "markdown", "junit", "sarif", "html")


def generate(path: Path, lines: int, seed: int = 12) -> None:
    rng = random.Random(seed)
    devices = ["pixel-7", "galaxy-s23", "iphone-15", None]
    checks: list[tuple[str, str | None, str, str, dict[str, Any]]] = [
        ("cleartext", None, "medium", "blocked", {"protocol": "http", "method": "GET", "credentials": []}),
        ("cleartext", None, "high", "blocked", {"protocol": "http", "method": "POST", "credentials": [{"kind": "bearer"}]}),
        ("pin", "pin_mismatch", "critical", "blocked", {"negotiated_version": "TLSv1.3", "pin_set": "api"}),
        ("protocol", "legacy_version", "medium", "reported", {"negotiated_version": "TLSv1.1"}),
        ("client_probe", "self_signed", "info", "passed", {"sni": "x"}),
        ("client_hello", "weak_suites_offered", "low", "reported", {"best_offered_version": "TLSv1.3"}),
    ]
    start = 1_700_000_000
    with path.open("w") as handle:
        for i in range(lines):
            check, kind, severity, action, extra = checks[rng.randrange(len(checks))]
            host = f"svc{rng.randrange(400)}.example.test"
            evidence = {"kind": kind, "ja4": f"t13d1516h2_8daaf6152771_{rng.randrange(6):012x}", **extra} if kind else dict(extra)
            evidence.update({"user_agent": "okhttp/4.12.0 (Android 14)", "url": f"http://{host}/v1/items?id=REDACTED"})
            record = {
                "check": check,
                "action": action,
                "severity": severity,
                "host": host,
                "port": 443 if check != "cleartext" else 80,
                "client": f"10.0.0.{rng.randrange(2, 12)}:{rng.randrange(1024, 65535)}",
                "rule": f"policies/app.yaml:{10 + rng.randrange(40)}",
                "detail": f"{check} finding about {host}",
                "remedy": "use https:// in the app",
                "device": devices[rng.randrange(len(devices))],
                "evidence": evidence,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + i // 50)) + ".000+00:00",
            }
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")


CHILD = """
import resource, sys, time
from tlsgate.report.cli import main
started = time.perf_counter()
code = main(sys.argv[1:])
elapsed = time.perf_counter() - started
print(f"RESULT {code} {elapsed:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


def measure(findings: Path, fmt: str, out: Path) -> tuple[float, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "report", str(findings), "--format", fmt, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("RESULT "))
    _, code, seconds, maxrss_kib = line.split()
    assert code == "0", done.stderr[-2000:]
    return float(seconds), int(maxrss_kib) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--out-md", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        findings = Path(tmp) / "findings.jsonl"
        started = time.perf_counter()
        generate(findings, args.lines)
        size = findings.stat().st_size / 2**20
        print(f"generated {args.lines:,} lines ({size:.0f} MiB) in {time.perf_counter() - started:.1f}s", flush=True)
        rows = []
        for fmt in FORMATS:
            out = Path(tmp) / f"report.{fmt}"
            seconds, rss = measure(findings, fmt, out)
            rows.append((fmt, seconds, rss, out.stat().st_size / 1024))
            print(f"{fmt:9} {seconds:6.1f} s  peak RSS {rss:6.0f} MiB  output {out.stat().st_size / 1024:8.0f} KiB", flush=True)
    table = [
        f"`benchmarks/report_scale.py --lines {args.lines}`: {args.lines:,} findings ({size:.0f} MiB), "
        f"Python {platform.python_version()}, {os.cpu_count()} cores; each format in a fresh process.",
        "",
        "| format | time s | peak RSS MiB | output KiB |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {fmt} | {seconds:.1f} | {rss:.0f} | {kib:.0f} |" for fmt, seconds, rss, kib in rows],
    ]
    if args.out_md:
        args.out_md.write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
