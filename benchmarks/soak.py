"""Soak: tlsgate and plain mitmdump under the same mixed load for minutes, side by side.

    .venv/bin/python benchmarks/soak.py                      # 5 minutes, 150 clients per proxy
    .venv/bin/python benchmarks/soak.py --duration 3m --clients 200
    .venv/bin/python benchmarks/soak.py --quick              # 20 s, 30 clients (the test suite runs it)

Both proxies run at the same time against the same nginx upstream, each loaded
by its own load-generator process (benchmarks/soakload.py) with the same mix:
keep-alive HTTPS, a new TLS connection per request, plain http:// (tlsgate:
403 cleartext), a host whose policy pins a key the upstream lacks (tlsgate: 403
pin) and a few slow clients. Running them together means whatever else the
machine does hits both alike. Error rates compare what means the same on both:
transport errors, timeouts and 5xx answers that are not a verdict.

Every --interval seconds the RSS and open file descriptors of each proxy are
printed and recorded; the summary gives their growth between the first and
last third of the run (flat is the goal). At the end tlsgate is killed with
SIGKILL while its load runs; then the findings file must hold only whole JSON
lines, and tlsgate restarted on the same --confdir must present the same CA
(byte-identical, same fingerprint) to a client that trusted it before.

Writes the "## Soak" section of BENCHMARKS.md and keeps every other section.
Exit status 1 if the kill -9 check fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

from benchmarks.policygen import fake_pin  # noqa: E402
from benchmarks.run import (  # noqa: E402
    Proxy,
    bench_upstream,
    cpu_seconds,
    family,
    free_port,
    have_tools,
    machine,
    mitmdump_proxy,
    tlsgate_proxy,
)
from benchmarks.soakload import MIX, SHARES, split_clients  # noqa: E402
from tests.harness import curl  # noqa: E402

SECTION = "Soak"
ERRORS = ("transport", "timeout", "5xx")  # mean the same through both proxies


def duration(text: str) -> float:
    """`300`, `300s`, `5m` or `1h` as seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 300, 90s or 5m")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def mix(text: str) -> dict[str, float]:
    """`keepalive=40,newconn=30,...`: each share's weight (shares left out get no clients)."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        share, _, weight = part.partition("=")
        if share.strip() not in SHARES or not re.fullmatch(r"\d+(\.\d+)?", weight.strip()):
            raise argparse.ArgumentTypeError(f"{part!r}: write SHARE=WEIGHT with SHARE one of {', '.join(SHARES)}")
        weights[share.strip()] = float(weight)
    if not any(weights.values()):
        raise argparse.ArgumentTypeError("the weights add up to nothing")
    return weights


def rss_and_fds(pid: int) -> tuple[float, int]:
    """Resident MiB and open descriptors of the process and its children (tlsgate --workers)."""
    rss, fds = 0, 0
    for p in family(pid):
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        rss += int(match.group(1)) if match else 0
        fds += len(os.listdir(f"/proc/{p}/fd"))
    return rss / 1024, fds


def kind(outcome: str) -> str:
    """An outcome from soakload as one of ok, transport, timeout, 5xx, unexpected."""
    head = outcome.split(":", 1)[0]
    return head if head in ("ok", "transport", "timeout", "5xx") else "unexpected"


def tally(bucket: dict[str, int]) -> dict[str, Counter[str]]:
    """{share: Counter(kind: n)} plus "all"."""
    out: dict[str, Counter[str]] = {share: Counter() for share in (*SHARES, "all")}
    for key, count in bucket.items():
        share, _, outcome = key.partition("|")
        out[share][kind(outcome)] += count
        out["all"][kind(outcome)] += count
    return out


def error_rate(counts: Counter[str]) -> float:
    total = sum(counts.values())
    return sum(counts[k] for k in ERRORS) / total if total else 0.0


class Load:
    """A soakload process driving one proxy, asked for its counters over a pipe."""

    def __init__(self, name: str, config: dict[str, Any], log: Path) -> None:
        self.name = name
        self.timeout = config["timeout"]
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.soakload", json.dumps(config)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def ask(self, word: str, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"load generator for {self.name} did not answer {word!r} (exit {self.proc.poll()})")
        return json.loads(line)

    def stop(self) -> dict[str, Any]:
        final = self.ask("stop", timeout=self.timeout + 30)
        self.proc.wait(30)
        return final

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Sample:
    elapsed: float
    rss: float
    fds: int
    cpu: float  # proxy CPU seconds so far
    answers: int  # requests answered (or failed) so far
    errors: int  # transport + timeout + 5xx so far


@dataclass
class Run:
    proxy: Proxy
    load: Load
    samples: list[Sample] = field(default_factory=list)
    base: Sample | None = None  # when the load started: CPU spent starting up is not the run's
    final: dict[str, Any] = field(default_factory=dict)
    load_cpu: float = 0.0

    def sample(self, elapsed: float, load: bool = True) -> Sample:
        assert self.proxy.proc
        pid = self.proxy.proc.pid
        rss, fds = rss_and_fds(pid)
        counts = tally(self.load.ask("snap")["buckets"][0])["all"] if load else Counter[str]()
        return Sample(elapsed, rss, fds, cpu_seconds(pid), sum(counts.values()), sum(counts[k] for k in ERRORS))


def thirds(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last third (first and last value when there are fewer than 3)."""
    if len(values) < 3:
        return values[0], values[-1]
    n = len(values) // 3
    return statistics.fmean(values[:n]), statistics.fmean(values[-n:])


def slope_per_minute(samples: list[Sample], attr: str) -> float:
    """Least-squares growth per minute after the first third: the ramp-up and warm-up (certificates, caches,
    connection pools filling) are not a leak; growth that goes on after them is."""
    samples = samples[len(samples) // 3 :] if len(samples) >= 6 else samples
    if len(samples) < 2:
        return 0.0
    xs = [s.elapsed / 60 for s in samples]
    return statistics.linear_regression(xs, [float(getattr(s, attr)) for s in samples]).slope


def sample_line(elapsed: float, runs: dict[str, Run]) -> str:
    cells = []
    for run in runs.values():
        now = run.samples[-1]
        before = run.samples[-2] if len(run.samples) > 1 else run.base or now
        span = max(1e-9, now.elapsed - before.elapsed)
        cells.append(
            f"{now.rss:.1f} | {now.fds} | {(now.cpu - before.cpu) / span * 100:.0f}% | "
            f"{(now.answers - before.answers) / span:.0f} | {now.errors - before.errors}"
        )
    # The machine's 1-minute load average: how much else wanted the cores during the interval.
    return f"| {elapsed:.0f} | " + " | ".join(cells) + f" | {os.getloadavg()[0]:.1f} |"


# -- the kill -9 check ----------------------------------------------------------------------------


def fingerprint(pem: bytes) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


def torn_lines(path: Path) -> tuple[int, list[str], Counter[str]]:
    """(whole lines, lines that are not one JSON object, findings by check). A last line without its newline is torn."""
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    torn, checks = [], Counter[str]()
    for index, line in enumerate(lines):
        if index == len(lines) - 1:
            if line:
                torn.append(f"last line has no newline: {line[:120]!r}")
            break
        try:
            checks[json.loads(line)["check"]] += 1
        except (ValueError, KeyError, TypeError):
            torn.append(f"line {index + 1}: {line[:120]!r}")
    return len(lines) - 1, torn, checks


def kill_check(tlsgate: Run, work: Path, ca_before: bytes, trusted: Path, targets: dict[str, str]) -> tuple[list[str], bool]:
    """SIGKILL tlsgate under load, then check its findings file and its CA across a restart."""
    proxy = tlsgate.proxy
    assert proxy.proc
    pre = tlsgate.load.ask("mark")  # outcomes from here on are the kill's, not tlsgate's error rate
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.proc.wait(10)
    time.sleep(2)  # the clients keep trying the dead port for a moment
    tlsgate.final = tlsgate.load.stop()
    tlsgate.final["buckets"][0] = pre["buckets"][0]
    after_kill = tally(tlsgate.final["buckets"][1])["all"] if len(tlsgate.final["buckets"]) > 1 else Counter()
    findings = work / f"{proxy.name}.jsonl"
    whole, torn, checks = torn_lines(findings)
    # A finding is written before its 403 is sent, so every verdict a client got before the mark has its line.
    answered = {share: tally(pre["buckets"][0])[share]["ok"] for share in ("cleartext", "pin")}
    unrecorded = {share: n - checks[share] for share, n in answered.items() if n > checks[share]}
    ok = not torn and not unrecorded
    lines = [
        f"- SIGKILL under load (its clients then tried {sum(after_kill.values()):,} more requests in 2 s, refused): "
        "the findings file "
        f"({findings.stat().st_size / 2**20:.1f} MiB) holds {whole:,} lines, {len(torn)} torn"
        + (f": {torn[:3]}" if torn else " (every line is one JSON object and ends in a newline)")
        + f"; findings by check {dict(checks)}, verdicts clients received before the kill {answered}"
        + (f": {unrecorded} without a finding line." if unrecorded else ", each with its finding line.")
    ]
    proxy.start(work)  # same argv: same --confdir, same --findings
    ca_after = (work / "ca" / "mitmproxy-ca-cert.pem").read_bytes()
    same = ca_after == ca_before
    key_mode = (work / "ca" / "mitmproxy-ca.pem").stat().st_mode & 0o777
    good = curl(f"http://127.0.0.1:{proxy.port}", f"https://{targets['https']}/", "--cacert", str(trusted))
    pinned = curl(f"http://127.0.0.1:{proxy.port}", f"https://{targets['pin']}/", "--cacert", str(trusted))
    whole_after, torn_after, _ = torn_lines(findings)
    ok = ok and same and key_mode == 0o600 and good.status == 200 and pinned.headers.get("x-tlsgate-check") == "pin"
    ok = ok and not torn_after and whole_after > whole
    lines += [
        f"- Restarted on the same --confdir: CA certificate {'byte-identical' if same else 'CHANGED'} "
        f"(SHA-256 {fingerprint(ca_before)[:16]}… before, {fingerprint(ca_after)[:16]}… after), CA key mode {key_mode:o}; "
        f"a client trusting the CA saved before the kill got {good.status or good.stderr.strip()[:80]} from the upstream, "
        f"and the pinned host got {pinned.status} ({pinned.headers.get('x-tlsgate-check', 'no verdict')}).",
        f"- The findings file after the restart: {whole_after:,} lines, {len(torn_after)} torn (appending resumed).",
        f"- Kill -9 check: {'PASS' if ok else 'FAIL'}.",
    ]
    return lines, ok


# -- report ---------------------------------------------------------------------------------------


def summary(runs: dict[str, Run], seconds: float, clients: dict[str, int]) -> list[str]:
    tallies = {name: tally(run.final["buckets"][0]) for name, run in runs.items()}
    names = list(runs)
    lines = [f"| | {' | '.join(names)} |", "| --- |" + " ---: |" * len(names)]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | {' | '.join(values)} |")

    row("answers (before the kill)", [f"{sum(t['all'].values()):,}" for t in tallies.values()])
    row("answers/s", [f"{sum(t['all'].values()) / seconds:,.0f}" for t in tallies.values()])
    for k in ("transport", "timeout", "5xx", "unexpected"):
        label = "error" if k in ERRORS else "a verdict or status this share should not get"
        row(f"{k} ({label})", [f"{t['all'][k]:,}" for t in tallies.values()])
    row("**error rate** (transport + timeout + 5xx)", [f"**{error_rate(t['all']) * 100:.3f}%**" for t in tallies.values()])
    for share, count in clients.items():
        cells = []
        for name, run in runs.items():
            counts = tallies[name][share]
            lat = run.final.get("latency_ms", {}).get(share, {})
            cells.append(
                f"{counts['ok']:,}/{sum(counts.values()):,} ok, {error_rate(counts) * 100:.2f}% err, "
                f"p50 {lat.get('p50', 0):.0f} / p99 {lat.get('p99', 0):.0f} ms"
            )
        row(f"{share} ({count} clients)", cells)
    cpu = {name: run.samples[-1].cpu - (run.base or run.samples[0]).cpu for name, run in runs.items()}
    row("proxy CPU (share of one core)", [f"{cpu[name] / seconds * 100:.0f}%" for name in runs])
    # Same moment for both numbers: CPU and answers are read together at the last sample.
    per_answer = {name: cpu[name] / max(1, run.samples[-1].answers) * 1000 for name, run in runs.items()}
    base = per_answer[names[0]]
    row(f"proxy CPU ms per answer (vs {names[0]})", [f"{v:.2f} ({v / base if base else 0:.2f}×)" for v in per_answer.values()])
    for run in runs.values():
        run.load_cpu = run.final["cpu"]
    row("load generator CPU (share of one core)", [f"{r.load_cpu / seconds * 100:.0f}%" for r in runs.values()])
    for attr in ("rss", "fds"):
        cells = []
        for run in runs.values():
            first, last = thirds([float(getattr(s, attr)) for s in run.samples])
            slope = slope_per_minute(run.samples, attr)
            cells.append(f"{first:.1f} → {last:.1f} ({last - first:+.1f}; {slope:+.2f}/min)")
        what = "RSS MiB" if attr == "rss" else "open fds"
        row(f"{what}: first third → last third (change; slope per minute after the first third)", cells)
    return lines


def replace_section(path: Path, title: str, body: list[str]) -> None:
    """Write `## title` into a Markdown file in place of its old version (or at the end), keeping the rest."""
    old = path.read_text().splitlines() if path.exists() else ["# Benchmarks", ""]
    out: list[str] = []
    skipping = placed = False
    for line in old:
        if line.startswith("## "):
            skipping = line[3:].strip() == title
            if skipping and not placed:
                out += body
                placed = True
        if not skipping:
            out.append(line)
    if not placed:
        out += ["", *body] if out and out[-1] else body
    path.write_text("\n".join(out).rstrip("\n") + "\n")


POLICY = """version: 1
pin_sets:
  absent:  # keys the upstream does not have
    pins: [{pin_a}, {pin_b}]
defaults:
  mode: enforce
  cleartext: block
rules:
  - hosts: ['127.0.0.1']
    local_destinations: allow  # the soak's upstream runs on this host
    pins: absent
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=duration, default=300.0, help="how long the load runs (300, 90s, 5m)")
    parser.add_argument("--clients", type=int, default=150, help="concurrent clients per proxy")
    parser.add_argument("--interval", type=duration, default=10.0, help="seconds between RSS/fd samples")
    parser.add_argument("--think", type=float, default=0.05, help="mean pause between a client's requests, seconds")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request; a slower answer counts as a timeout")
    parser.add_argument("--mix", type=mix, default=MIX, help="share weights, e.g. keepalive=1 (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="20 s, 30 clients: proves the harness works")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--samples", type=Path, help="also write every sample as a JSON line here")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.clients, args.interval = 20.0, 30, 4.0
    if not have_tools("nginx", "mitmdump", "curl"):
        return 2
    plain_port = free_port()
    work, _, root, upstream, up_port = bench_upstream("tlsgate-soak-", plain_port)
    targets = {"https": f"localhost:{up_port}", "pin": f"127.0.0.1:{up_port}", "plain": f"localhost:{plain_port}"}
    policy = work / "soak.yaml"
    policy.write_text(POLICY.format(pin_a=fake_pin("soak-a"), pin_b=fake_pin("soak-b")))
    resolve = [f"localhost:{up_port}:127.0.0.1", f"localhost:{plain_port}:127.0.0.1"]
    tlsgate = tlsgate_proxy(work, "tlsgate", root, resolve, "--policy", str(policy))
    mitmdump = mitmdump_proxy(work, root)
    runs: dict[str, Run] = {}
    started_at = dt.datetime.now(dt.UTC)
    load_avg = os.getloadavg()
    try:
        tlsgate.start(work)  # creates the CA mitmdump shares
        mitmdump.start(work)
        ca_before = (work / "ca" / "mitmproxy-ca-cert.pem").read_bytes()
        trusted = work / "trusted-ca.pem"  # what a device installed before the kill
        trusted.write_bytes(ca_before)
        ramp = min(10.0, args.duration / 4)
        for proxy in (mitmdump, tlsgate):
            config = {"proxy_port": proxy.port, "ca": str(trusted), "targets": targets, "clients": args.clients}
            config |= {"think": args.think, "timeout": args.timeout, "slow_gap": 1.0, "ramp": ramp}
            config |= {"tlsgate": proxy is tlsgate, "seed": 1, "mix": args.mix}
            runs[proxy.name] = Run(proxy, Load(proxy.name, config, work / f"load-{proxy.name}.log"))
        header = (
            "| s | " + " | ".join(f"{n} RSS MiB | {n} fds | {n} CPU | {n} req/s | {n} errors" for n in runs) + " | load avg |"
        )
        sample_rows = [header, "| ---: |" + " ---: |" * (5 * len(runs) + 1)]
        print(f"soak: {args.clients} clients per proxy for {args.duration:.0f} s; work dir {work}", flush=True)
        print(sample_rows[0], flush=True)
        nginx_cpu = cpu_seconds(upstream.pid)
        for run in runs.values():
            run.base = run.sample(0.0, load=False)
        begin = time.monotonic()
        tick = 0
        while (elapsed := time.monotonic() - begin) < args.duration:
            tick += 1
            time.sleep(max(0.0, min(begin + tick * args.interval, begin + args.duration) - time.monotonic()))
            elapsed = time.monotonic() - begin
            for run in runs.values():
                run.samples.append(run.sample(elapsed))
            sample_rows.append(sample_line(elapsed, runs))
            print(sample_rows[-1], flush=True)
            if args.samples:
                with args.samples.open("a") as handle:
                    for name, run in runs.items():
                        handle.write(json.dumps({"proxy": name, **run.samples[-1].__dict__}) + "\n")
        seconds = time.monotonic() - begin
        nginx_cpu = cpu_seconds(upstream.pid) - nginx_cpu
        runs["mitmdump"].final = runs["mitmdump"].load.stop()
        kill_lines, kill_ok = kill_check(runs["tlsgate"], work, ca_before, trusted, targets)
    finally:
        for run in runs.values():
            run.load.close()
        for proxy in (tlsgate, mitmdump):
            proxy.stop()
        upstream.terminate()
        upstream.wait(10)
    table = summary(runs, seconds, split_clients(args.clients, args.mix))
    body = [
        f"## {SECTION}",
        "",
        f"Run {started_at:%Y-%m-%d %H:%M} UTC with `.venv/bin/python benchmarks/soak.py"
        f"{' --quick' if args.quick else ''} --duration {args.duration:.0f}s --clients {args.clients} --interval "
        f"{args.interval:g}`: both proxies at "
        f"once, {args.clients} clients each (mix {split_clients(args.clients, args.mix)}, mean think time "
        f"{args.think * 1000:.0f} ms, request timeout {args.timeout:.0f} s), one nginx upstream; load average "
        f"{load_avg[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"Machine: {machine().replace('nginx + the load client', 'nginx and both load generators')}. "
        "For mitmdump the cleartext and pin shares simply pass (200); for tlsgate their "
        "expected answer is its 403 verdict. The error rate counts only what means the same through both: "
        "transport errors, timeouts and 5xx answers that are not a verdict.",
        "",
        *table,
        "",
        f"nginx, the upstream of both, used {nginx_cpu / seconds * 100:.0f}% of one core. Shares of a core are "
        "CPU seconds over the run's wall time, from /proc/PID/stat.",
        "",
        "### kill -9",
        "",
        *kill_lines,
        "",
        f"### Samples (every {args.interval:.0f} s; CPU is of one core, req/s and errors over the interval)",
        "",
        *sample_rows,
        "",
    ]
    print("\n".join(body))
    replace_section(args.out, SECTION, body)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if kill_ok else 1


if __name__ == "__main__":
    sys.exit(main())
