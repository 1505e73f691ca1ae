"""tlsgate vs plain mitmdump, measured in one session on this machine.

    .venv/bin/python benchmarks/run.py            # full run (~10 min), writes BENCHMARKS.md
    .venv/bin/python benchmarks/run.py --quick    # a smoke run (the test suite uses it)

Upstream: nginx (TLS, loopback). Load: hey through the proxy. Configurations,
interleaved round by round so drift hits all alike: plain mitmdump (same
mitmproxy, no addons), tlsgate with the default policy, tlsgate with a
generated 10,000-rule policy, and tlsgate with 2 workers. Workloads:
keep-alive requests, and one new TLS connection per request.
Proxy CPU comes from the proxy processes' own accounting (/proc/PID/stat).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.policygen import big_policy, sample_hosts  # noqa: E402
from proxy.policy import Match, Policy, load_policy, load_texts  # noqa: E402
from tests.certgen import Chain, make_chain, write_pem, write_server_files  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
# Both proxies log at the same level (warnings and findings, not per-connection chatter), so the
# comparison measures the checks, not how much each prints.
QUIET = "warn"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def family(pid: int) -> list[int]:
    """The process and its children (tlsgate workers run under a supervisor)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(p for c in children for p in family(int(c)))]


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in family(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def peak_rss_mib(pid: int) -> float:
    total = 0
    for p in family(pid):
        match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        total += int(match.group(1)) if match else 0
    return total / 1024


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


@dataclass
class Proxy:
    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    results: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def start(self, workdir: Path) -> None:
        log = open(workdir / f"{self.name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(self.argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        time.sleep(1.0 if "workers" in self.name else 0.3)

    @property
    def pid(self) -> int:
        """The proxy's process id: it is measured only between `start` and `stop`."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def nginx(workdir: Path, cert: Path, key: Path, plain_port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """nginx answering "ok" over TLS on a free port (returned), and over plain HTTP on `plain_port` if given."""
    port = free_port()
    plain = f"listen 127.0.0.1:{plain_port};" if plain_port else ""
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
user root;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port} ssl;
    {plain}
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""
    )
    proc = subprocess.Popen([shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(workdir)])
    wait_port(port)
    return proc, port


def hey(proxy_port: int, url: str, requests: int, concurrency: int, keepalive: bool) -> dict[str, float]:
    requests -= requests % concurrency  # hey sends n rounded down to a multiple of c; ask for exactly that
    argv = ["hey", "-n", str(requests), "-c", str(concurrency), "-x", f"http://127.0.0.1:{proxy_port}"]
    if not keepalive:
        argv.append("-disable-keepalive")
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=600).stdout
    rps_line = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50_line = re.search(r"50% in ([\d.]+) secs", out)
    # hey leaves the 99% line empty for small runs; the slowest request is the honest stand-in then.
    p99_line = re.search(r"99% in ([\d.]+) secs", out) or re.search(r"Slowest:\s+([\d.]+) secs", out)
    if rps_line is None or p50_line is None or p99_line is None:
        raise RuntimeError(f"hey through {proxy_port} failed:\n{out}")
    rps, p50, p99 = float(rps_line.group(1)), float(p50_line.group(1)), float(p99_line.group(1))
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    ok = int(codes.get("200", 0))
    if ok != requests:
        raise RuntimeError(f"only {ok}/{requests} requests got 200 through {proxy_port}:\n{out}")
    return {"rps": rps, "p50": p50 * 1000, "p99": p99 * 1000}


def bench_upstream(prefix: str, plain_port: int | None = None) -> tuple[Path, Chain, Path, subprocess.Popen[bytes], int]:
    """A fresh work dir, a test PKI (root, intermediate, leaf for localhost and 127.0.0.1) and nginx serving with it:
    (work dir, chain, root PEM, nginx process, TLS port)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    chain = make_chain(dns=("localhost",), ips=("127.0.0.1",))
    root = write_pem(work / "root.pem", chain.root)
    cert, key = write_server_files(work, chain.leaf, chain.intermediate)
    upstream, port = nginx(work, cert, key, plain_port)
    return work, chain, root, upstream, port


def have_tools(*tools: str) -> bool:
    for tool in tools:
        if not shutil.which(tool) and not (Path(sys.executable).parent / tool).exists():
            print(f"benchmark needs {tool} (apt-get install nginx hey; mitmdump comes with the venv)", file=sys.stderr)
            return False
    return True


def tlsgate_proxy(work: Path, name: str, root: Path, resolve: Sequence[str], *extra: str) -> Proxy:
    """tlsgate on a free port with the shared CA in `work/ca`, findings in `work/NAME.jsonl`, trusting `root` upstream."""
    argv = [sys.executable, "-m", "proxy", "run", "--listen-port", str(port := free_port()), "--confdir", str(work / "ca")]
    argv += ["--upstream-ca", str(root), "--findings", str(work / f"{name}.jsonl"), "--metrics-port", "0"]
    argv += ["--set", f"termlog_verbosity={QUIET}", "--set", "flow_detail=0"]  # as mitmdump below: no per-flow lines
    # The upstream runs on this host: tlsgate refuses loopback destinations unless the operator names them.
    for entry in resolve:
        argv += ["--resolve", entry]
    return Proxy(name, [*argv, *extra], port)


def mitmdump_proxy(work: Path, root: Path) -> Proxy:
    """Plain mitmdump (same mitmproxy, no addons) with the CA tlsgate created in `work/ca`."""
    argv = [str(Path(sys.executable).parent / "mitmdump"), "--set", f"termlog_verbosity={QUIET}", "--set", "flow_detail=0"]
    argv += ["--listen-host", "127.0.0.1", "--listen-port", str(port := free_port())]
    argv += ["--set", f"confdir={work / 'ca'}", "--set", f"ssl_verify_upstream_trusted_ca={root}"]
    return Proxy("mitmdump", argv, port)


# -- micro-benchmarks -----------------------------------------------------------------------------


def _match_all(policy: Policy, hosts: list[str]) -> list[Match]:
    return [policy.match(h) for h in hosts]


def micro(rule_counts: list[int]) -> list[str]:
    lines = ["| rules | match µs/host (mixed hits) | load + validate (s) |", "| ---: | ---: | ---: |"]
    for count in rule_counts:
        text = big_policy(count, pins=True)
        start = time.perf_counter()
        policy = load_texts([("big.yaml", text)])
        load_s = time.perf_counter() - start
        hosts = sample_hosts(count)
        hits = sum(policy.match(h).rule is not None for h in hosts)
        assert hits, "the sample hosts must exercise rule hits, not only misses"
        loops = 20
        seconds = timeit.timeit(functools.partial(_match_all, policy, hosts), number=loops)
        lines.append(f"| {count:,} | {seconds / loops / len(hosts) * 1e6:.2f} ({hits}/{len(hosts)} hit) | {load_s:.3f} |")
    return lines


async def distinct_hosts(port: int, count: int, connections: int = 8) -> None:
    """Plain-HTTP requests to `count` distinct host names (each blocked, so no upstream is needed)."""

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(offset, count, connections):
            host = f"host{i}.distinct.test"
            writer.write(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"content-length: (\d+)", head, re.I)
            if found is None:
                raise RuntimeError(f"tlsgate's answer for {host} has no Content-Length: {head!r}")
            length = int(found.group(1))
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))


# -- the run --------------------------------------------------------------------------------------


def machine() -> str:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    mem = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    gib = f"{int(mem.group(1)) / 1024 / 1024:.0f}" if mem else "?"
    from mitmproxy import version

    return (
        f"{os.cpu_count()} cores ({cpu.group(1) if cpu else platform.processor()}), "
        f"{gib} GiB, Linux {platform.release()}, Python {platform.python_version()}, "
        f"mitmproxy {version.VERSION}, nginx + hey on the same machine (they share the cores with the proxy)"
    )


OWN_SECTIONS = ("keep-alive", "new connection per request", "Policy matching and loading", "Memory with many distinct hosts")


def kept_sections(path: Path, own: tuple[str, ...]) -> list[str]:
    """The `## ` sections of an existing BENCHMARKS.md that this script does not write, so a re-run keeps them."""
    if not path.exists():
        return []
    kept: list[str] = []
    keep = False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keep = not line[3:].startswith(own)
        if keep:
            kept.append(line)
    return kept


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}×" if base else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run to prove the harness works")
    parser.add_argument("--rounds", type=int, default=4, help="each configuration goes first once per 4 rounds")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.concurrency = 1, 60, 4
    if not have_tools("nginx", "hey", "mitmdump"):
        return 2
    work, chain, root, upstream, up_port = bench_upstream("tlsgate-bench-")
    big = work / "big.yaml"
    big.write_text(big_policy(10_000, pins=True, bench_chain=chain))
    url = f"https://localhost:{up_port}/"

    def tlsgate(name: str, *extra: str) -> Proxy:
        return tlsgate_proxy(work, name, root, [f"localhost:{up_port}:127.0.0.1"], *extra)

    proxies = [
        mitmdump_proxy(work, root),
        tlsgate("tlsgate-default"),
        tlsgate("tlsgate-10k", "--policy", str(big)),
        tlsgate("tlsgate-2-workers", "--workers", "2"),
    ]
    workloads = {"keep-alive": True, "new connection per request": False}
    try:
        # tlsgate creates the CA the others share; start it first so mitmdump finds it.
        for proxy in proxies[1:2] + proxies[:1] + proxies[2:]:
            proxy.start(work)
        for proxy in proxies:  # warm up: certificate generation, caches
            hey(proxy.port, url, max(20, args.requests // 20), args.concurrency, True)
        # A TLS handshake per request is ~5x slower: fewer requests keep both workloads' wall time alike.
        counts = {"keep-alive": args.requests, "new connection per request": max(20, args.requests // 3)}
        cpu = {p.name: {w: 0.0 for w in workloads} for p in proxies}
        for round_ in range(args.rounds):
            # Rotate who goes first: later runs in a round inherit the earlier runs' TIME_WAIT sockets.
            order = proxies[round_ % len(proxies) :] + proxies[: round_ % len(proxies)]
            for workload, keepalive in workloads.items():
                for proxy in order:
                    before = cpu_seconds(proxy.pid)
                    result = hey(proxy.port, url, counts[workload], args.concurrency, keepalive)
                    cpu[proxy.name][workload] += cpu_seconds(proxy.pid) - before
                    proxy.results.setdefault(workload, []).append(result)
        peaks = {p.name: peak_rss_mib(p.pid) for p in proxies}

        memory_lines = []
        default = proxies[1]
        base_rss = rss_mib(default.pid)
        for count in (1_000, 10_000) if not args.quick else (200,):
            asyncio.run(distinct_hosts(default.port, count))
            now = rss_mib(default.pid)
            memory_lines.append(f"| after {count:,} distinct hosts | {now:.1f} MiB ({now - base_rss:+.1f}) |")
    finally:
        for proxy in proxies:
            proxy.stop()
        upstream.terminate()
        upstream.wait(10)

    lines = [
        "# Benchmarks",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `.venv/bin/python benchmarks/run.py"
        f"{' --quick' if args.quick else ''}`: {args.rounds} interleaved rounds of {counts['keep-alive']} keep-alive and "
        f"{counts['new connection per request']} new-connection requests per configuration, "
        f"concurrency {args.concurrency}; every proxy logs at termlog_verbosity={QUIET}.",
        "",
        f"Machine: {machine()}.",
        "",
    ]
    base = proxies[0]
    for workload in workloads:
        lines += [
            f"## {workload}",
            "",
            "| configuration | req/s | p50 ms | p99 ms | CPU s / 1k req | peak RSS MiB | req/s vs mitmdump "
            "| CPU/req vs mitmdump |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        base_rps = statistics.median(r["rps"] for r in base.results[workload])
        total = args.rounds * counts[workload]
        base_cpu = cpu[base.name][workload] / total * 1000
        for proxy in proxies:
            runs = proxy.results[workload]
            rps = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            cpu_k = cpu[proxy.name][workload] / total * 1000
            lines.append(
                f"| {proxy.name} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {cpu_k:.3f} | {peaks[proxy.name]:.0f} | "
                f"{ratio(rps, base_rps)} | {ratio(cpu_k, base_cpu)} |"
            )
        lines.append("")
    lines += ["## Policy matching and loading", "", *micro([100, 1_000, 10_000] if not args.quick else [100, 1_000]), ""]
    tracemalloc.start()
    load_policy([big])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    lines += [
        f"Loading the generated 10,000-rule policy file from disk peaks at {peak / 2**20:.1f} MiB of Python allocations.",
        "",
    ]
    lines += [
        "## Memory with many distinct hosts (tlsgate, default policy)",
        "",
        "| | RSS |",
        "| --- | ---: |",
        f"| before | {base_rss:.1f} MiB |",
        *memory_lines,
        "",
    ]
    # Sections written by other benchmark scripts (e.g. "## Reports" from report_scale.py) are kept.
    lines += kept_sections(args.out, OWN_SECTIONS)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
