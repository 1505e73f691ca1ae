"""The soak's load generator: many concurrent HTTP clients through one proxy, in a process of its own.

    .venv/bin/python -m benchmarks.soakload '<json config>'    # started by benchmarks/soak.py

It runs in its own process so its CPU is measured apart from the proxy's (the
soak reports both, to show the client is not the bottleneck). Raw asyncio
streams and the stdlib `ssl` rather than an HTTP library keep the client's
share of the CPU small.

Shares (each client keeps one share for the whole run):

- `keepalive`: HTTPS over one CONNECT tunnel, many requests per TLS connection
  (a new one after 50-200 requests, as apps' pools do);
- `newconn`: a new TCP connection, CONNECT and TLS handshake per request;
- `cleartext`: plain `http://` through the proxy (tlsgate answers 403, mitmdump forwards);
- `pin`: HTTPS to a host whose policy pins a key the upstream does not have
  (tlsgate answers 403 `pin`, mitmdump forwards), a new connection per request;
- `slow`: keep-alive HTTPS whose request head dribbles in over a few seconds,
  with pauses between requests.

Control is line-based on stdin: `snap` prints the counters so far as one JSON
line; `mark` does the same and sends every later outcome to a second bucket
(the soak marks just before it kills the proxy, so the refused connections
that follow are not mistaken for the proxy's error rate); `stop` ends the
clients and prints the final counters with latency percentiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import ssl
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SHARES = ("keepalive", "newconn", "cleartext", "pin", "slow")
MIX = {"keepalive": 0.40, "newconn": 0.30, "cleartext": 0.12, "pin": 0.12, "slow": 0.06}
# Shares whose expected answer from tlsgate is its 403 verdict by this check; mitmdump forwards them (200).
VERDICT_SHARES = {"cleartext": "cleartext", "pin": "pin"}
RESERVOIR = 20_000  # latencies kept per share: bounded memory whatever the duration
MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The proxy's answer was not HTTP/1.1 we can read."""


def split_clients(total: int, mix: dict[str, float] = MIX) -> dict[str, int]:
    """`total` clients across the shares by `mix`, largest remainders first; at least one per share when possible."""
    weights = sum(mix.values())
    exact = {share: total * weight / weights for share, weight in mix.items()}
    counts = {share: int(value) for share, value in exact.items()}
    for share in sorted(exact, key=lambda s: exact[s] - counts[s], reverse=True)[: total - sum(counts.values())]:
        counts[share] += 1
    for share in mix:
        if counts[share] == 0 and total >= len(mix):
            donor = max(counts, key=counts.__getitem__)
            counts[donor] -= 1
            counts[share] = 1
    return counts


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    closed: bool  # the proxy ends the connection after this answer


def classify(share: str, response: Response, tlsgate: bool) -> str:
    """What one answer means: `ok` (what this share should get from this proxy), `5xx` (a failure that is not a
    policy verdict), `verdict:CHECK` (a verdict this share should not get) or `status:N`."""
    check = response.headers.get("x-tlsgate-check")
    verdict = check is not None and check != "fault"
    expected = VERDICT_SHARES.get(share) if tlsgate else None
    if expected is not None:
        if response.status == 403 and check == expected:
            return "ok"
    elif response.status == 200 and not verdict:
        return "ok"
    if response.status >= 500 and not verdict:
        return "5xx"
    return f"verdict:{check}" if verdict else f"status:{response.status}"


async def read_response(reader: asyncio.StreamReader, connect: bool = False) -> Response:
    """One HTTP/1.1 answer, body read and dropped (a 2xx to CONNECT has none: the tunnel follows)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"status line {lines[0][:80]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    closed = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
    if connect and parts[1].startswith("2"):
        pass
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
    elif int(parts[1]) not in (204, 304) and not parts[1].startswith("1"):
        await reader.read()  # delimited by the close
        closed = True
    return Response(int(parts[1]), headers, closed)


@dataclass
class Stats:
    buckets: list[Counter[str]] = field(default_factory=lambda: [Counter()])
    latencies: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SHARES})
    seen: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def add(self, share: str, outcome: str, seconds: float) -> None:
        self.buckets[-1][f"{share}|{outcome}"] += 1
        if len(self.buckets) > 1:
            return  # after `mark`: the proxy is being killed, its latencies are not the run's
        self.seen[share] += 1
        kept = self.latencies[share]
        if len(kept) < RESERVOIR:
            kept.append(seconds)
        else:  # reservoir sampling: every answer equally likely to be kept
            slot = self.rng.randrange(self.seen[share])
            if slot < RESERVOIR:
                kept[slot] = seconds

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        times = os.times()
        snap: dict[str, Any] = {"time": time.monotonic(), "cpu": times.user + times.system}
        snap["buckets"] = [dict(bucket) for bucket in self.buckets]
        if final:
            snap["latency_ms"] = {share: percentiles(values) for share, values in self.latencies.items() if values}
        return snap


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50": round(pick(0.50), 1), "p99": round(pick(0.99), 1)}


class Client:
    """One simulated app connection; `run` loops until told to stop."""

    def __init__(self, share: str, config: dict[str, Any], stats: Stats, stop: asyncio.Event, seed: int) -> None:
        self.share = share
        self.config = config
        self.stats = stats
        self.stop = stop
        self.rng = random.Random(seed)
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        target = {"cleartext": "plain", "pin": "pin"}.get(share, "https")
        host, _, port = config["targets"][target].rpartition(":")
        self.host, self.port = host, int(port)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | Response:
        """A connection ready for requests, or the proxy's refusal of the CONNECT (which may be a verdict)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.config["proxy_port"], limit=MAX_HEAD)
        if self.share == "cleartext":
            return reader, writer
        writer.write(f"CONNECT {self.host}:{self.port} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        answer = await read_response(reader, connect=True)
        if answer.status // 100 != 2:
            writer.close()
            return Response(answer.status, answer.headers, closed=True)
        await writer.start_tls(self.config["context"], server_hostname=self.host)
        return reader, writer

    async def exchange(self) -> Response:
        if self.conn is None:
            opened = await self.open()
            if isinstance(opened, Response):
                return opened
            self.conn = opened
        reader, writer = self.conn
        target = f"http://{self.host}:{self.port}/" if self.share == "cleartext" else "/"
        head = f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: tlsgate-soak/1\r\n"
        head += "Accept: */*\r\n\r\n"
        if self.share == "slow":  # the head arrives in three pieces over about two seconds
            data = head.encode()
            for start, end in ((0, 10), (10, 40), (40, len(data))):
                if start:
                    await asyncio.sleep(self.config["slow_gap"])
                writer.write(data[start:end])
                await writer.drain()
        else:
            writer.write(head.encode())
            await writer.drain()
        return await read_response(reader)

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn[1].wait_closed(), 2)

    async def run(self, delay: float) -> None:
        await asyncio.sleep(delay)  # ramp up: 150 simultaneous first handshakes would measure a thundering herd
        reuse = self.rng.randint(50, 200)
        served = 0
        think = self.config["think"] * (30 if self.share == "slow" else 1)
        while not self.stop.is_set():
            started = time.monotonic()
            response: Response | None = None
            try:
                async with asyncio.timeout(self.config["timeout"]):
                    response = await self.exchange()
            except TimeoutError:
                outcome = "timeout"
            # ssl.SSLError is an OSError, a truncated answer an IncompleteReadError; ValueError: a bad length.
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError, ValueError) as exc:
                outcome = f"transport:{type(exc).__name__}"
            except Exception as exc:  # a bug of ours: counted as unexpected, never a silently vanished client
                outcome = f"client:{type(exc).__name__}"
            else:
                outcome = classify(self.share, response, self.config["tlsgate"])
            # Latency ends with the answer: closing the connection afterwards is the client's time, not the proxy's.
            self.stats.add(self.share, outcome, time.monotonic() - started)
            served += 1
            if response is None or response.closed or self.share in ("newconn", "pin") or served >= reuse:
                await self.close()
                served, reuse = 0, self.rng.randint(50, 200)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.rng.uniform(0, 2 * think))
        await self.close()


async def run(config: dict[str, Any]) -> None:
    context = ssl.create_default_context(cafile=config["ca"])
    context.set_alpn_protocols(["http/1.1"])
    config["context"] = context
    stats, stop = Stats(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def command(line: str) -> None:
        """Runs in the loop: answers the soak's `snap`, `mark` and `stop`."""
        word = line.strip()
        if word == "stop":
            stop.set()
            return
        print(json.dumps(stats.snapshot()), flush=True)
        if word == "mark":
            stats.buckets.append(Counter())

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(command, line)
            if line.strip() == "stop":
                return
        loop.call_soon_threadsafe(stop.set)  # the soak went away: stop rather than load a proxy forever

    threading.Thread(target=read_stdin, daemon=True).start()
    clients = []
    seed = config.get("seed", 1)
    for share, count in split_clients(config["clients"], config.get("mix", MIX)).items():
        clients += [Client(share, config, stats, stop, seed := seed + 1) for _ in range(count)]
    ramp = config["ramp"]
    tasks = [asyncio.create_task(c.run(ramp * i / max(1, len(clients)))) for i, c in enumerate(clients)]
    await stop.wait()
    # A client in the middle of a request finishes it (bounded by the request timeout), then closes.
    await asyncio.wait(tasks, timeout=config["timeout"] + 5)
    for task in tasks:
        task.cancel()
    print(json.dumps(stats.snapshot(final=True)), flush=True)


def main() -> int:
    config = json.loads(sys.argv[1])
    asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
