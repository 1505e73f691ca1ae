"""tlsgate vs plain mitmdump, measured in one session on this machine.

    .venv/bin/python benchmarks/run.py            # full run (~20 min), writes BENCHMARKS.md
    .venv/bin/python benchmarks/run.py --quick    # a smoke run (the test suite uses it)

Upstream: nginx (TLS, loopback). Load: benchmarks/loadclient.py through the
proxy, a client that verifies certificates as a correct app does (hey does
not, and would accept every probe of the catalogue). Configurations,
interleaved round by round so drift hits all alike: plain mitmdump (same
mitmproxy, no addons), tlsgate with the default policy, with a generated
10,000-rule policy, with a policy that turns on every section
(benchpolicies.py), with a noisy policy (a finding per connection), with 2
workers, and a CPU-pinned mitmdump/tlsgate pair (proxy on CPU 0, the load and
nginx on CPU 1; `--no-pinned` leaves it out). Workloads: keep-alive requests,
and one new TLS connection per request. Each round's run is also divided by
mitmdump's run of the same round, and the spread of those ratios is printed.
Proxy CPU comes from the proxy processes' own accounting (/proc/PID/stat).
Memory: peak RSS, RSS over 10,000 distinct hosts, and over `--connections`
(100,000) new plain-HTTP connections through tlsgate and mitmdump alike
(mitmdump forwards ~200 of those a second here: about 8 minutes of the run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.benchpolicies import ALL_SECTIONS_TEXT, NOISY_TEXT, PROBES, all_sections_policy, noisy_policy  # noqa: E402
from benchmarks.policygen import big_policy, sample_hosts  # noqa: E402
from tests.certgen import Chain, make_chain, write_pem, write_server_files  # noqa: E402
from tlsgate.policy import Match, Policy, load_policy, load_texts  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
# Both proxies log at the same level (warnings and findings, not per-connection chatter), so the
# comparison measures the checks, not how much each prints.
QUIET = "warn"
# The "pinned" pair: the proxy alone on one core, the load client and nginx on the other (only on a machine with 2+ cores).
PROXY_CPU, LOAD_CPU = 0, 1


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
    """One configuration. `base` is the configuration its per-round ratios are taken against; a `pinned` one runs
    on PROXY_CPU while the load client and nginx are held on LOAD_CPU during its runs."""

    name: str
    argv: list[str]
    port: int
    base: str = "mitmdump"
    pinned: bool = False
    proc: subprocess.Popen[bytes] | None = None
    results: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    warm: dict[str, float] = field(default_factory=dict)

    def start(self, workdir: Path) -> None:
        log = open(workdir / f"{self.name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        argv = ["taskset", "-c", str(PROXY_CPU), *self.argv] if self.pinned else self.argv
        self.proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
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


def hey(proxy_port: int, url: str, requests: int, concurrency: int, keepalive: bool, cpu: int | None = None) -> dict[str, float]:
    requests -= requests % concurrency  # hey sends n rounded down to a multiple of c; ask for exactly that
    argv = ["hey", "-n", str(requests), "-c", str(concurrency), "-x", f"http://127.0.0.1:{proxy_port}"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
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
    return {"rps": rps, "p50": p50 * 1000, "p99": p99 * 1000, "requests": requests}


def load(
    proxy_port: int, url: str, ca: Path, requests: int, concurrency: int, keepalive: bool, source: str, cpu: int | None = None
) -> dict[str, float]:
    """The verifying load client (loadclient.py) through the proxy from `source`: hey's numbers, plus `probes`, the
    handshakes it refused (each a probe: it trusts the proxy's CA, so nothing else fails to verify)."""
    argv = [sys.executable, "-m", "benchmarks.loadclient", "--proxy", f"127.0.0.1:{proxy_port}", "--ca", str(ca)]
    argv += ["-n", str(requests), "-c", str(concurrency), "--source", source, url]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    if not keepalive:
        argv.append("--disable-keepalive")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    try:
        out = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"the load client through {proxy_port} failed:\n{done.stdout}{done.stderr}") from None
    if out["ok"] != requests or out["other"]:
        raise RuntimeError(f"only {out['ok']}/{requests} requests got 200 through {proxy_port}: {out}")
    refused: dict[str, int] = out["refused"]
    probes = sum(refused.values())
    return {
        "rps": out["rps"],
        "p50": out["p50"],
        "p99": out["p99"],
        "requests": requests,
        "concurrency": concurrency,
        "probes": probes,
    }


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
    argv = [sys.executable, "-m", "tlsgate", "run", "--listen-port", str(port := free_port()), "--confdir", str(work / "ca")]
    argv += ["--upstream-ca", str(root), "--findings", str(work / f"{name}.jsonl"), "--metrics-port", "0"]
    argv += ["--set", f"termlog_verbosity={QUIET}", "--set", "flow_detail=0"]  # as mitmdump below: no per-flow lines
    # The upstream runs on this host: tlsgate refuses loopback destinations unless the operator names them.
    for entry in resolve:
        argv += ["--resolve", entry]
    return Proxy(name, [*argv, *extra], port)


def mitmdump_proxy(work: Path, root: Path, name: str = "mitmdump") -> Proxy:
    """Plain mitmdump (same mitmproxy, no addons) with the CA tlsgate created in `work/ca`."""
    argv = [str(Path(sys.executable).parent / "mitmdump"), "--set", f"termlog_verbosity={QUIET}", "--set", "flow_detail=0"]
    argv += ["--listen-host", "127.0.0.1", "--listen-port", str(port := free_port())]
    argv += ["--set", f"confdir={work / 'ca'}", "--set", f"ssl_verify_upstream_trusted_ca={root}"]
    return Proxy(name, argv, port)


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


async def new_connections(
    port: int,
    target: str,
    count: int,
    checkpoints: Sequence[int],
    on_checkpoint: Callable[[int], None],
    statuses: dict[int, int],
    parallel: int = 16,
) -> None:
    """`count` plain-HTTP requests to `target` (host:port), each on a new TCP connection to the proxy at `port`;
    `on_checkpoint(n)` is called once n connections are done, for each n in `checkpoints`; `statuses` counts the
    answers' status codes."""
    request = f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode()
    done = 0
    marks = sorted(checkpoints)
    next_index = 0
    turn = asyncio.Lock()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 "):
                raise RuntimeError(f"no HTTP answer through {port}: {head[:200]!r}")
            code = int(head[9:12])
            statuses[code] = statuses.get(code, 0) + 1
            await asyncio.wait_for(reader.read(), 30)  # the proxy closes (Connection: close): its side holds TIME_WAIT
        finally:
            writer.close()

    async def worker(share: int) -> None:
        nonlocal done, next_index
        for _ in range(share):
            await one()
            async with turn:
                done += 1
                while next_index < len(marks) and done >= marks[next_index]:
                    on_checkpoint(marks[next_index])
                    next_index += 1

    shares = [count // parallel + (1 if i < count % parallel else 0) for i in range(parallel)]
    await asyncio.gather(*(worker(share) for share in shares))


LOAD_TEXT = (
    "every configuration is driven by benchmarks/loadclient.py, one asyncio process (concurrency = its tasks), which "
    "verifies the proxy's certificate as a correct app does: Python's default context (chain, dates, key usage, "
    "basicConstraints, name constraints, OpenSSL security level 2, TLS 1.2 or newer, forward-secret suites without "
    "SHA-1) and `hostname_checks_common_name = False`, because Python's default falls back to the subject CN when a "
    "certificate has no subjectAltName and would accept the `cn_only` probe (Android, iOS, browsers and Go do not). "
    "It refuses every probe of the catalogue, and retries the request on a new connection, as an app does: a probe "
    "costs the client a connection, never a request, and every request must still get 200. hey, used before, skips "
    "verification (Go's `InsecureSkipVerify`, hard-coded) and would accept every probe; this client is slower than "
    "hey, so these numbers are not comparable with runs before 2026-12-06 18:00. Each run connects from its own "
    "loopback address (127.1.x.y): a new device to tlsgate, so every run meets the catalogue from its start."
)


def probe_lines(proxies: Sequence[Proxy], all_sections: Proxy, findings: dict[str, int]) -> list[str]:
    """How many of each configuration's connections were probes (handshakes the load client refused), checked against
    the `client_probe` findings tlsgate wrote: a correct client refusing a connection no probe explains is a false
    block, and the run fails on it."""
    lines = [
        "## Probes",
        "",
        "Connections the load client refused (each a probe: it trusts tlsgate's CA, so nothing else fails to verify), "
        "per workload over all rounds (warm-up excluded), out of all connections it opened (one per worker with "
        "keep-alive, one per request without, plus one per refused probe):",
        "",
        f"| configuration | {' | '.join(WORKLOADS)} |",
        "| --- | ---: | ---: |",
    ]
    for proxy in proxies:
        cells = []
        for workload, keepalive in WORKLOADS.items():
            runs = proxy.results[workload]
            probes = sum(int(r["probes"]) for r in runs)
            opened = probes + sum(r["concurrency"] if keepalive else r["requests"] for r in runs)
            cells.append(f"{probes:,} of {int(opened):,} ({probes / opened:.1%})" if opened else "0")
            if probes and proxy is not all_sections:
                raise RuntimeError(f"{proxy.name} probes nothing, yet the load client refused {probes} handshakes")
        lines.append(f"| {proxy.name} | {' | '.join(cells)} |")
    passed = {key: n for key, n in findings.items() if key.startswith("client_probe/") and key.endswith("(passed)")}
    passed.pop("client_probe/campaign_summary (passed)", None)
    accepted = {key: n for key, n in findings.items() if key.startswith("client_probe/") and "(passed)" not in key}
    refused_total = sum(int(r.get("probes", 0)) for runs in all_sections.results.values() for r in runs)
    refused_total += int(all_sections.warm.get("probes", 0))
    lines += [
        "",
        f"tlsgate-all-sections recorded {sum(passed.values()):,} refused probes (`client_probe` findings with action "
        f"`passed`, warm-up included) over {len(passed)} kinds, and the load client counted {refused_total:,} refused "
        "handshakes, warm-up included"
        + (": they agree." if sum(passed.values()) == refused_total else ": **they differ**.")
        + " Accepted probes (a wrong finding for this client): "
        + (", ".join(f"{key}: {n}" for key, n in sorted(accepted.items())) or "none")
        + ". Kinds never run: "
        + (
            ", ".join(f"`{kind}`" for kind in PROBES if not any(key.startswith(f"client_probe/{kind} ") for key in findings))
            or "none"
        )
        + " (the campaign summaries give each one's reason: for `localhost`, a single label, `wildcard_wrong_label` "
        "has no second label to misplace the wildcard in, and `ip_name_only` applies to IP literals only).",
        "",
    ]
    return lines


def findings_by_kind(path: Path) -> dict[str, int]:
    """`check/kind` -> count, over the findings file and its rotated predecessors."""
    counts: dict[str, int] = {}
    for file in [path, *sorted(path.parent.glob(f"{path.name}.*"))]:
        if not file.exists():
            continue
        for line in file.read_text().splitlines():
            finding = json.loads(line)
            key = f"{finding['check']}/{finding.get('evidence', {}).get('kind', '?')} ({finding['action']})"
            counts[key] = counts.get(key, 0) + 1
    return counts


def spread(values: Sequence[float]) -> str:
    """Median and min–max of per-round ratios."""
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"


# -- the run --------------------------------------------------------------------------------------


def machine() -> str:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    mem = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    gib = f"{int(mem.group(1)) / 1024 / 1024:.0f}" if mem else "?"
    from mitmproxy import version

    return (
        f"{os.cpu_count()} cores ({cpu.group(1) if cpu else platform.processor()}), "
        f"{gib} GiB, Linux {platform.release()}, Python {platform.python_version()}, "
        f"mitmproxy {version.VERSION}, nginx + the load client on the same machine (they share the cores with the proxy)"
    )


OWN_SECTIONS = (
    "How the runs are compared",
    "Probes",
    "keep-alive",
    "new connection per request",
    "Issue 16 targets",
    "Cost of findings",
    "Workers",
    "Pinned",
    "Policy matching and loading",
    "Memory",
)


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


WORKLOADS = {"keep-alive": True, "new connection per request": False}


def per_round(proxy: Proxy, base: Proxy, workload: str, key: str) -> list[float]:
    """The ratio of each round's run to the base's run of the same round."""
    pairs = zip(proxy.results[workload], base.results[workload], strict=True)
    return [run[key] / other[key] for run, other in pairs if other[key]]


def per_round_cpu(proxy: Proxy, base: Proxy, workload: str) -> list[float]:
    """Each round's CPU per request divided by the base's in the same round."""
    pairs = zip(proxy.results[workload], base.results[workload], strict=True)
    return [(run["cpu"] / run["requests"]) / (other["cpu"] / other["requests"]) for run, other in pairs if other["cpu"]]


def median_rps(proxy: Proxy, workload: str) -> float:
    return statistics.median(r["rps"] for r in proxy.results[workload])


def cpu_per_k(proxy: Proxy, workload: str) -> float:
    runs = proxy.results[workload]
    return sum(r["cpu"] for r in runs) / sum(r["requests"] for r in runs) * 1000


def set_affinity(pids: Sequence[int], cpus: set[int]) -> None:
    for pid in pids:
        os.sched_setaffinity(pid, cpus)


def validated(path: Path, text: str) -> Path:
    """Write a policy and check it with `tlsgate validate`, as an operator would, before any proxy loads it."""
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "tlsgate", "validate", str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{path.name} is not a valid policy:\n{done.stdout}{done.stderr}")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run to prove the harness works")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (the order rotates each round)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--connections", type=int, default=100_000, help="new connections for the memory check (>= 10)")
    parser.add_argument("--no-pinned", action="store_true", help="leave out the CPU-pinned mitmdump/tlsgate pair")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.concurrency, args.connections = 1, 60, 4, 300
    if args.connections < 10:
        parser.error("--connections must be at least 10 (RSS is sampled at a tenth, half and all of them)")
    if not have_tools("nginx", "mitmdump"):
        return 2
    cpus = os.sched_getaffinity(0)
    pinned = not args.no_pinned and {PROXY_CPU, LOAD_CPU} <= cpus and shutil.which("taskset") is not None
    plain_port = free_port()
    work, chain, root, upstream, up_port = bench_upstream("tlsgate-bench-", plain_port=plain_port)
    big = validated(work / "big.yaml", big_policy(10_000, pins=True, bench_chain=chain))
    every = validated(work / "all-sections.yaml", all_sections_policy(chain))
    noisy_policy_file = validated(work / "noisy.yaml", noisy_policy())
    url = f"https://localhost:{up_port}/"

    def tlsgate(name: str, *extra: str) -> Proxy:
        return tlsgate_proxy(work, name, root, [f"localhost:{up_port}:127.0.0.1"], *extra)

    mitmdump = mitmdump_proxy(work, root)
    default = tlsgate("tlsgate-default")
    all_sections = tlsgate("tlsgate-all-sections", "--policy", str(every))
    noisy = tlsgate("tlsgate-noisy", "--policy", str(noisy_policy_file))
    workers = tlsgate("tlsgate-2-workers", "--workers", "2")
    proxies = [mitmdump, default, tlsgate("tlsgate-10k", "--policy", str(big)), all_sections, noisy, workers]
    if pinned:
        base_pinned = mitmdump_proxy(work, root, "mitmdump-pinned")
        base_pinned.base, base_pinned.pinned = base_pinned.name, True
        one_core = tlsgate("tlsgate-pinned")
        one_core.base, one_core.pinned = base_pinned.name, True
        proxies += [base_pinned, one_core]
    by_name = {p.name: p for p in proxies}
    nginx_pids = family(upstream.pid)  # nginx and its worker

    ca = work / "ca" / "mitmproxy-ca-cert.pem"
    load_runs = 0

    def run_load(proxy: Proxy, requests: int, keepalive: bool) -> dict[str, float]:
        # Every run connects from its own loopback address: a new device to tlsgate, whose probe schedule is per
        # (client address, host), so each run of the all-sections policy meets the catalogue from its start.
        nonlocal load_runs
        load_runs += 1
        source = f"127.1.{load_runs // 250}.{load_runs % 250 + 1}"
        if not proxy.pinned:
            return load(proxy.port, url, ca, requests, args.concurrency, keepalive, source)
        set_affinity(nginx_pids, {LOAD_CPU})
        try:
            return load(proxy.port, url, ca, requests, args.concurrency, keepalive, source, cpu=LOAD_CPU)
        finally:
            set_affinity(nginx_pids, cpus)

    # A TLS handshake per request is ~5x slower: fewer requests keep both workloads' wall time alike.
    counts = {"keep-alive": args.requests, "new connection per request": max(20, args.requests // 3)}
    warm = max(20, args.requests // 20)
    connection_marks = sorted({args.connections // 10, args.connections // 2, args.connections} - {0})
    connection_rss: dict[str, dict[int, float]] = {}
    connection_status: dict[str, dict[int, int]] = {}
    connection_findings: dict[str, int] = {}
    memory_counts = (1_000, 10_000) if not args.quick else (200,)
    memory_rss: list[float] = []
    connection_seconds: dict[str, float] = {}
    try:
        # tlsgate creates the CA the others share; start it first so mitmdump finds it.
        for proxy in [default, *(p for p in proxies if p is not default)]:
            proxy.start(work)
        for proxy in proxies:  # warm up: certificate generation, caches
            proxy.warm = run_load(proxy, warm, True)
        for round_ in range(args.rounds):
            # Rotate who goes first: later runs in a round inherit the earlier runs' TIME_WAIT sockets. The starting
            # point moves by len/rounds, so with fewer rounds than configurations the first places are still spread.
            shift = round_ * len(proxies) // max(1, args.rounds) % len(proxies)
            order = proxies[shift:] + proxies[:shift]
            for workload, keepalive in WORKLOADS.items():
                for proxy in order:
                    before = cpu_seconds(proxy.pid)
                    result = run_load(proxy, counts[workload], keepalive)
                    result["cpu"] = cpu_seconds(proxy.pid) - before
                    proxy.results.setdefault(workload, []).append(result)
        peaks = {p.name: peak_rss_mib(p.pid) for p in proxies}
        findings = {p.name: findings_by_kind(work / f"{p.name}.jsonl") for p in proxies if p.name.startswith("tlsgate")}
        # The load client opens one connection per worker with keep-alive (warm-up included), one per request
        # without (plus one per probe it refused: none through the noisy policy, which probes nothing).
        warm_requests = warm - warm % args.concurrency
        noisy_connections = min(args.concurrency, warm_requests) + sum(
            args.concurrency if keepalive else r["requests"]
            for workload, keepalive in WORKLOADS.items()
            for r in noisy.results[workload]
        )

        memory_lines = []
        base_rss = rss_mib(default.pid)
        for count in memory_counts:
            asyncio.run(distinct_hosts(default.port, count))
            now = rss_mib(default.pid)
            memory_rss.append(now)
            memory_lines.append(f"| after {count:,} distinct hosts | {now:.1f} MiB ({now - base_rss:+.1f}) |")

        # Memory after many connections: plain-HTTP requests, each on a new connection. tlsgate's default policy
        # answers them itself (403: 127.0.0.1 is the proxy host); mitmdump forwards them to nginx's plain port.
        # Both proxies are driven at once (each is one process, CPU-bound here): the run takes half the time.
        async def connections(proxy: Proxy) -> None:
            samples = connection_rss[proxy.name] = {0: rss_mib(proxy.pid)}
            statuses = connection_status[proxy.name] = {}

            def sample(done: int) -> None:
                samples[done] = rss_mib(proxy.pid)

            start = time.monotonic()
            await new_connections(proxy.port, f"127.0.0.1:{plain_port}", args.connections, connection_marks, sample, statuses)
            connection_seconds[proxy.name] = time.monotonic() - start

        async def both() -> None:
            await asyncio.gather(connections(mitmdump), connections(default))

        before_connections = findings_by_kind(work / "tlsgate-default.jsonl")
        asyncio.run(both())
        after_connections = findings_by_kind(work / "tlsgate-default.jsonl")
        connection_findings = {k: n - before_connections.get(k, 0) for k, n in after_connections.items()}
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
        "## How the runs are compared",
        "",
        "- **Configurations**: `mitmdump` is plain mitmdump (same mitmproxy, no add-ons, the CA tlsgate created); "
        "`tlsgate-default` the embedded default policy; `tlsgate-10k` a generated 10,000-rule policy (pins, suites, "
        "cleartext and report rules, plus a pinned rule for the benchmark host); `tlsgate-2-workers` the default "
        "policy with `--workers 2`"
        + (
            f"; `mitmdump-pinned` and `tlsgate-pinned` (default policy) run on CPU {PROXY_CPU} with the load client "
            f"and nginx on "
            f"CPU {LOAD_CPU} (see Pinned)."
            if pinned
            else "."
        ),
        f"- **Load**: {LOAD_TEXT}",
        f"- **`tlsgate-all-sections`** turns on every policy section for the benchmark host: {ALL_SECTIONS_TEXT}",
        f"- **Noisy**: {NOISY_TEXT}",
        "- **Against order effects**: all configurations run side by side in one session; each round runs every "
        "configuration once per workload, in an order rotated every round by configurations/rounds places "
        f"({len(proxies)}/{args.rounds}), so the first and last places go to configurations spread over the list, not "
        "to the same ones (later runs in a round inherit earlier runs' TIME_WAIT sockets and a warmer nginx); a "
        "configuration and its base always run in the same round, so each per-round ratio compares runs minutes, "
        "not a quarter of an hour, apart. Before the first round every proxy gets the same keep-alive warm-up "
        f"({warm_requests} requests: certificate generation, caches). Every proxy logs at the same level "
        f"(termlog_verbosity={QUIET}, flow_detail=0), so the comparison measures the checks, not the printing.",
        "- **Spread**: each round's run is divided by the base's run of the same round (the base is `mitmdump`, "
        "for `tlsgate-pinned` it is `mitmdump-pinned`). The tables give the ratio of the medians, and next to it the "
        "median and min–max of those per-round ratios: a difference between two configurations smaller than "
        "their min–max ranges is within what this machine's drift produces, not evidence.",
        "- **CPU** is the proxy processes' own user+system time (/proc/PID/stat, workers included) during each run, "
        "divided by the requests of that run.",
        "",
    ]
    lines += [
        "## Issue 16 targets",
        "",
        "Against mitmdump in this run: the ratio of the medians, and in how many rounds that round's own ratio met the target "
        "(issue 16's, and issue 23's for `tlsgate-all-sections` with the whole probe catalogue on: at least 1.00×).",
        "",
        f"| target | {' | '.join(WORKLOADS)} |",
        "| --- | --- | --- |",
    ]
    goals = [
        ("tlsgate-default", "req/s", 1.0),
        ("tlsgate-default", "CPU/req", 1.0),
        ("tlsgate-10k", "req/s", 0.95),
        ("tlsgate-all-sections", "req/s", 1.0),  # issue 23, with the whole probe catalogue on
    ]
    for name, what, goal in goals:
        proxy, cells = by_name[name], []
        for workload in WORKLOADS:
            if what == "req/s":
                value = median_rps(proxy, workload) / median_rps(mitmdump, workload)
                rounds, met = per_round(proxy, mitmdump, workload, "rps"), value >= goal
                in_rounds = sum(r >= goal for r in rounds)
            else:
                value = cpu_per_k(proxy, workload) / (cpu_per_k(mitmdump, workload) or 1)
                rounds, met = per_round_cpu(proxy, mitmdump, workload), value <= goal
                in_rounds = sum(r <= goal for r in rounds)
            cells.append(f"{value:.2f}× {'met' if met else '**missed**'} ({in_rounds}/{len(rounds)} rounds)")
        sign = "≥" if what == "req/s" else "≤"
        lines.append(f"| {name} {what} {sign} {goal:.2f}× mitmdump | {' | '.join(cells)} |")
    peak_gap = peaks["tlsgate-default"] - peaks["mitmdump"]
    lines += [
        "",
        f"- Peak RSS: tlsgate-default {peak_gap:+.1f} MiB from mitmdump (target ≤ +10 MiB: "
        f"{'met' if peak_gap <= 10 else '**missed**'}).",
        f"- RSS over {memory_counts[-1]:,} distinct hosts: {memory_rss[-1] - base_rss:+.1f} MiB (tlsgate-default).",
        "- RSS from the first to the last checkpoint of the new-connection step "
        f"({connection_marks[0]:,} → {connection_marks[-1]:,} connections): "
        + ", ".join(
            f"{name} {connection_rss[name][connection_marks[-1]] - connection_rss[name][connection_marks[0]]:+.1f} MiB"
            for name in ("tlsgate-default", "mitmdump")
        )
        + ".",
        "",
    ]
    base_of = {p.name: by_name[p.base] for p in proxies}
    for workload in WORKLOADS:
        lines += [
            f"## {workload}",
            "",
            "| configuration | req/s | p50 ms | p99 ms | CPU s / 1k req | peak RSS MiB | req/s vs mitmdump "
            "| per round: median (min–max) | CPU/req vs mitmdump | per round: median (min–max) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for proxy in proxies:
            base = base_of[proxy.name]
            runs = proxy.results[workload]
            rps, base_rps = median_rps(proxy, workload), median_rps(base, workload)
            p50 = statistics.median(r["p50"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            cpu_k, base_cpu = cpu_per_k(proxy, workload), cpu_per_k(base, workload)
            cpu_rounds = per_round_cpu(proxy, base, workload)
            lines.append(
                f"| {proxy.name} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {cpu_k:.3f} | {peaks[proxy.name]:.0f} | "
                f"{ratio(rps, base_rps)} | {spread(per_round(proxy, base, workload, 'rps'))} | "
                f"{ratio(cpu_k, base_cpu)} | {spread(cpu_rounds)} |"
            )
        if pinned:
            lines += ["", "`mitmdump-pinned` and `tlsgate-pinned` are compared with each other (see Pinned below)."]
        lines.append("")

    noisy_count = sum(n for key, n in findings["tlsgate-noisy"].items() if key.startswith("pin/pin_mismatch"))
    counts_match = abs(noisy_count - noisy_connections) <= 0.1 * noisy_connections
    if not counts_match:
        print(f"tlsgate-noisy: {noisy_count} pin_mismatch findings for ~{noisy_connections} connections", file=sys.stderr)
    lines += [
        "## Cost of findings (tlsgate-noisy vs tlsgate-default)",
        "",
        NOISY_TEXT,
        "",
        f"Findings file check: {noisy_count:,} `pin_mismatch` findings for about {noisy_connections:,} connections the "
        "load client "
        f"opened through `tlsgate-noisy` ({ratio(noisy_count, noisy_connections)}: "
        f"{'as expected' if counts_match else '**does not match**'}"
        "; its keep-alive connections are counted as one per worker). The same traffic left "
        f"{sum(findings['tlsgate-default'].values()):,} findings with the default policy"
        + "".join(f"; {key}: {n:,}" for key, n in sorted(findings["tlsgate-default"].items()))
        + ".",
        "",
        "| workload | req/s noisy / default | per round: median (min–max) | CPU/req noisy / default "
        "| per round: median (min–max) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for workload in WORKLOADS:
        rps = median_rps(noisy, workload) / median_rps(default, workload)
        cpu_ratio = cpu_per_k(noisy, workload) / cpu_per_k(default, workload) if cpu_per_k(default, workload) else 0
        cpu_rounds = per_round_cpu(noisy, default, workload)
        lines.append(
            f"| {workload} | {rps:.2f}× | {spread(per_round(noisy, default, workload, 'rps'))} | {cpu_ratio:.2f}× | "
            f"{spread(cpu_rounds)} |"
        )
    lines += ["", "Findings recorded by `tlsgate-all-sections` over the whole run (check/kind (action): count):", ""]
    lines += [f"- {key}: {n:,}" for key, n in sorted(findings["tlsgate-all-sections"].items())] or ["- none"]
    lines.append("")

    lines += probe_lines(proxies, all_sections, findings["tlsgate-all-sections"])
    lines += ["## Workers", ""]
    for workload in WORKLOADS:
        one, two = median_rps(default, workload), median_rps(workers, workload)
        lines.append(
            f"- {workload}: 1 worker {one:,.0f} req/s, 2 workers {two:,.0f} req/s ({ratio(two, one)}, per round "
            f"{spread(per_round(workers, default, workload, 'rps'))}): the added worker brings {two - one:+,.0f} req/s, "
            f"{(two - one) / one:+.0%} of what one worker serves; CPU per request "
            f"{ratio(cpu_per_k(workers, workload), cpu_per_k(default, workload))} of one worker's."
        )
    lines += [
        "",
        f"This machine has {os.cpu_count()} cores, and the load client and nginx run on them too: a second worker can "
        "only use "
        "what the load generator and upstream leave over, so these numbers are a floor for a host where the load "
        "comes from elsewhere.",
        "",
    ]

    lines += ["## Pinned (proxy on one core, load on the other)", ""]
    if pinned:
        lines.append(
            f"`mitmdump-pinned` and `tlsgate-pinned` (default policy, 1 worker) run under `taskset -c {PROXY_CPU}`; "
            f"during their runs the load client (`taskset -c {LOAD_CPU}`) and nginx (its affinity set to CPU {LOAD_CPU}, then "
            "restored) share the other core, so neither proxy competes with the load for its core."
        )
        lines += ["", "| workload | req/s tlsgate / mitmdump | per round: median (min–max) | CPU/req tlsgate / mitmdump |"]
        lines.append("| --- | ---: | ---: | ---: |")
        pinned_base, pinned_one = by_name["mitmdump-pinned"], by_name["tlsgate-pinned"]
        for workload in WORKLOADS:
            one, mitm = median_rps(pinned_one, workload), median_rps(pinned_base, workload)
            lines.append(
                f"| {workload} | {ratio(one, mitm)} | {spread(per_round(pinned_one, pinned_base, workload, 'rps'))} | "
                f"{ratio(cpu_per_k(pinned_one, workload), cpu_per_k(pinned_base, workload))} |"
            )
    else:
        lines.append(f"Not measured: needs CPUs {PROXY_CPU} and {LOAD_CPU} and `taskset` (or `--no-pinned` was given).")
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
        "## Memory: peak RSS (VmHWM over the throughput runs, workers included)",
        "",
        "| configuration | peak RSS MiB | vs mitmdump |",
        "| --- | ---: | ---: |",
        *(f"| {p.name} | {peaks[p.name]:.1f} | {peaks[p.name] - peaks[p.base]:+.1f} MiB |" for p in proxies),
        "",
        f"tlsgate-default's peak RSS is {peaks['tlsgate-default'] - peaks['mitmdump']:+.1f} MiB from mitmdump's "
        "(issue 16 asks for at most +10 MiB).",
        "",
        "## Memory with many distinct hosts (tlsgate, default policy)",
        "",
        "| | RSS |",
        "| --- | ---: |",
        f"| before | {base_rss:.1f} MiB |",
        *memory_lines,
        "",
        f"## Memory with {args.connections:,} new connections",
        "",
        "Plain-HTTP requests to 127.0.0.1, each on a new TCP connection: tlsgate's default policy answers them "
        "itself (403, `destination`: 127.0.0.1 is the proxy host; the upstream is never contacted), mitmdump "
        "forwards them to nginx's plain port. RSS (VmRSS), starting after the distinct-hosts step above.",
        "",
        "| | mitmdump | tlsgate-default |",
        "| --- | ---: | ---: |",
    ]
    for mark in [0, *connection_marks]:
        label = "before" if mark == 0 else f"after {mark:,} connections"
        cells = []
        for name in ("mitmdump", "tlsgate-default"):
            rss = connection_rss[name]
            cells.append(f"{rss[mark]:.1f} MiB" + (f" ({rss[mark] - rss[0]:+.1f})" if mark else ""))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += [
        "",
        "Answers and pace (both proxies driven at the same time, each by 16 connections in flight):",
        "",
        *(
            f"- {name}: {', '.join(f'{n:,}× {code}' for code, n in sorted(connection_status[name].items()))}, "
            f"{args.connections / max(connection_seconds[name], 1e-9):,.0f} connections/s"
            for name in ("mitmdump", "tlsgate-default")
        ),
        "- tlsgate-default's findings file gained "
        + (", ".join(f"{key}: {n:,}" for key, n in sorted(connection_findings.items()) if n) or "nothing"),
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
