"""The benchmark's load client: HTTPS through a proxy, verifying the certificate as a correct app does.

    python -m benchmarks.loadclient --proxy 127.0.0.1:8080 --ca ca.pem -n 3000 -c 20 [--disable-keepalive]
        [--source 127.0.0.5] https://localhost:8443/

hey, which the benchmark used before, skips certificate verification (Go's `InsecureSkipVerify`, hard-coded): it
accepts every probe of `client.probes`, and tlsgate then answers the request itself, so hey could not run against
a policy that probes. This client refuses them. Its context is Python's default (chain, dates, key usage,
basicConstraints, name constraints, security level 2, TLS 1.2 or newer, forward-secret AEAD/CBC suites without
SHA-1) plus `hostname_checks_common_name = False`: Python's default still falls back to the subject CN when a
certificate has no subjectAltName, which would accept the `cn_only` probe; apps on Android, iOS, Chrome and Go
ignore the CN, and so does this client. A handshake that fails (a verification error, or the server hanging up on
a hello it will not serve: a protocol probe the client's versions and suites rule out) is counted as refused and
the request retried on a new connection, as an app does, so a probe costs a connection, not a request.

It prints one JSON object: requests answered 200, requests/s over the run, p50/p99 latency in ms (a request's time
includes the connections it needed), `refused` handshakes by the alert OpenSSL reported, and other answers.
Each concurrent worker is one asyncio task in this one process (the proxy, not the client, should be the
bottleneck: at the benchmark's rates this client uses a fraction of a core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HEAD_LIMIT = 65536


def strict_context(ca: str) -> ssl.SSLContext:
    """Python's default verifying context, without its CN fallback (see the module docstring)."""
    context = ssl.create_default_context(cafile=ca)
    context.hostname_checks_common_name = False
    return context


class Refused(Exception):
    """The client refused the server's handshake (a probe, as far as a correct client can tell)."""


@dataclass
class Tally:
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > HEAD_LIMIT:
        raise ValueError("response head too long")
    return head


class Connection:
    """One CONNECT tunnel through the proxy with TLS on top, reused while the server keeps it open."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, proxy: tuple[str, int], host: str, port: int, context: ssl.SSLContext, source: str | None) -> Connection:
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection(*proxy, local_addr=local, limit=HEAD_LIMIT * 2)
        try:
            writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            answer = await _read_head(reader)
            if not answer.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(f"CONNECT answered {answer[:60]!r}")
            try:
                await writer.start_tls(context, server_hostname=host)
            except ssl.SSLError as error:
                raise Refused(error.reason or type(error).__name__) from error
            except (OSError, EOFError) as error:  # the probe server hung up on a hello it would not serve
                raise Refused(type(error).__name__) from error
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer)

    async def get(self, request: bytes) -> tuple[int, bool]:
        """(status, whether the server keeps the connection open)."""
        self.writer.write(request)
        await self.writer.drain()
        head = await _read_head(self.reader)
        status = int(head[9:12])
        length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        if length is None:
            raise ValueError("answer without content-length")
        await self.reader.readexactly(int(length.group(1)))
        return status, not re.search(rb"\r\nconnection:\s*close", head, re.I)

    def close(self) -> None:
        self.writer.close()


async def run(
    url: str, proxy: tuple[str, int], ca: str, requests: int, concurrency: int, keepalive: bool, source: str | None
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    close = "" if keepalive else "Connection: close\r\n"
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n{close}\r\n".encode()
    context = strict_context(ca)
    tally = Tally()
    shares = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]

    async def worker(share: int) -> None:
        conn: Connection | None = None
        for _ in range(share):
            start = time.perf_counter()
            for _attempt in range(64):  # a request gets at most this many connections (probes) before it gives up
                try:
                    if conn is None:
                        conn = await Connection.open(proxy, host, port, context, source)
                    status, open_ = await conn.get(request)
                except Refused as refusal:
                    tally.refused[str(refusal)] += 1
                    conn = None
                    continue
                except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as error:
                    tally.other[type(error).__name__] += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    break
                if status == 200:
                    tally.ok += 1
                    tally.latencies.append((time.perf_counter() - start) * 1000)
                else:
                    tally.other[f"status {status}"] += 1
                if not (open_ and keepalive):
                    conn.close()
                    conn = None
                break
        if conn is not None:
            conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker(share) for share in shares))
    seconds = time.perf_counter() - began
    latencies = sorted(tally.latencies) or [0.0]
    return {
        "ok": tally.ok,
        "requests": requests,
        "seconds": seconds,
        "rps": tally.ok / seconds if seconds else 0.0,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "refused": dict(tally.refused),
        "other": dict(tally.other),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--proxy", required=True, help="host:port of the HTTP proxy")
    parser.add_argument("--ca", required=True, help="the CA file the client trusts (the proxy's CA)")
    parser.add_argument("-n", type=int, default=200, help="requests")
    parser.add_argument("-c", type=int, default=10, help="concurrent connections")
    parser.add_argument("--disable-keepalive", action="store_true", help="a new connection per request")
    parser.add_argument("--source", help="the client's source address (the device the proxy sees)")
    args = parser.parse_args(argv)
    proxy_host, _, proxy_port = args.proxy.rpartition(":")
    result = asyncio.run(
        run(args.url, (proxy_host, int(proxy_port)), args.ca, args.n, args.c, not args.disable_keepalive, args.source)
    )
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
