"""What inspecting gRPC costs per message: tlsgate with `payload: report` against `payload: ignore`, real grpcio.

    .venv/bin/python benchmarks/grpc_cost.py            # ~1 min; prints a markdown table
    .venv/bin/python benchmarks/grpc_cost.py --quick    # a smoke run

Two tlsgate processes, identical but for the `payload:` setting, carry the
same gRPC calls (HTTP/2 over TLS, one channel each, rounds interleaved) from a
grpcio client to a grpcio server: unary calls with a Firestore-like write
(about 600 bytes), gzip-compressed telemetry batches (about 4 KiB before
compression), and client-streaming calls of 500 small messages (60 bytes
each). The cost is each proxy's own CPU time (/proc/PID/stat) per gRPC
message. In-process, the walk and scan of each kind alone is timed as well.

Streams (gRPC calls are judged message by message as they pass,
tlsgate/payload/grpc_gate.py): one client-streaming call of `--stream`
small messages (20,000 by default; each its own HTTP/2 DATA frame, as grpcio
sends them) through plain mitmdump, tlsgate `payload: ignore` and
`payload: report`, rounds interleaved: proxy CPU per message, and wall time
per call. And whether a bidirectional call that waits for each echo before
sending the next message works through each (mitmdump buffers the request
body until the app half-closes it: it does not).
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from benchmarks.payload import Gate, cpu_seconds  # noqa: E402
from tests.certgen import make_chain, write_pem, write_server_files  # noqa: E402
from tests.tlsservers import GrpcServer  # noqa: E402
from tlsgate.payload.bounds import Budget  # noqa: E402
from tlsgate.payload.fields import body_field_steps  # noqa: E402
from tlsgate.payload.grpc import encode  # noqa: E402
from tlsgate.payload.scan import scan  # noqa: E402

STREAM_CONFIGS = {  # name -> tlsgate's `payload:` (None: plain mitmdump)
    "mitmdump": None,
    "tlsgate payload: ignore": "ignore",
    "tlsgate payload: report": "report",
}

SMALL_STREAM = 500


def messages(rng: random.Random) -> dict[str, list[bytes]]:
    database = "projects/bench-1234/databases/(default)"
    words = ("title", "city", "score", "tags", "updated", "owner", "status", "price")

    def value() -> bytes:
        kind = rng.randrange(4)
        if kind == 0:
            return encode([(17, " ".join(rng.choice(words) for _ in range(rng.randrange(1, 6))))])
        if kind == 1:
            return encode([(2, rng.randrange(2**40))])
        if kind == 2:
            return encode([(10, encode([(1, 1_732_000_000 + rng.randrange(86400)), (2, rng.randrange(10**9))]))])
        return encode([(18, rng.randbytes(16))])

    documents: list[tuple[int, int | bytes | str]] = []
    for i in range(2):
        fields: list[tuple[int, int | bytes | str]] = [(2, encode([(1, rng.choice(words)), (2, value())])) for _ in range(8)]
        documents.append((3, encode([(1, encode([(1, f"{database}/documents/users/u{i}"), *fields]))])))
    write = encode([(2, "c3RyZWFtLWlk"), *documents, (4, rng.randbytes(16))])
    spans = [encode([(1, rng.randbytes(16)), (2, rng.randbytes(8)), (5, "GET /api/feed"), (6, 2)]) for _ in range(60)]
    telemetry = encode([(1, encode([(2, encode([(2, span) for span in spans]))]))])
    small = [encode([(1, i), (2, str(uuid.UUID(int=rng.getrandbits(128)))), (3, 1_732_000_000 + i)]) for i in range(SMALL_STREAM)]
    return {"firestore write (unary)": [write], "telemetry batch, gzip (unary)": [telemetry], "small messages (stream)": small}


def run_round(gate: Gate, ca: Path, port: int, mix: dict[str, list[bytes]], repeat: int) -> tuple[float, float, int]:
    """(proxy CPU seconds, wall seconds, gRPC messages) for `repeat` passes over the mix on one channel."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    options = [("grpc.http_proxy", f"http://127.0.0.1:{gate.port}")]
    before, start, sent = cpu_seconds(gate.proc.pid), time.perf_counter(), 0
    with grpc.secure_channel(f"api.test:{port}", credentials, options=options) as channel:
        unary = channel.unary_unary(f"/{GrpcServer.SERVICE}/Push")
        stream = channel.stream_unary(f"/{GrpcServer.SERVICE}/Upload")
        for _ in range(repeat):
            for name, batch in mix.items():
                if name.endswith("(stream)"):
                    stream(iter(batch), timeout=60)
                else:
                    compression = grpc.Compression.Gzip if "gzip" in name else None
                    for message in batch:
                        unary(message, timeout=60, compression=compression)
                sent += len(batch)
    return cpu_seconds(gate.proc.pid) - before, time.perf_counter() - start, sent


def micro(mix: dict[str, list[bytes]]) -> list[str]:
    """Framing, protobuf walk and scan alone, per message, as the add-on runs them on a request body."""
    lines = ["| messages | body bytes | walk + scan per message (µs) |", "|---|---:|---:|"]
    for name, batch in mix.items():
        compressed = "gzip" in name
        body = b"".join(
            bytes([int(compressed)]) + len(m).to_bytes(4, "big") + m
            for m in ((gzip.compress(x) if compressed else x) for x in batch)
        )

        def once(body: bytes = body, compressed: bool = compressed) -> None:
            steps = body_field_steps("application/grpc", body, True, Budget(), "gzip" if compressed else "", 65536)
            scan(steps, host="api.test", namer=".".join)

        runs = 20
        best = min(timeit.repeat(once, number=runs, repeat=3)) / runs
        lines.append(f"| {name} x{len(batch)} | {len(body):,} | {best / len(batch) * 1e6:,.1f} |")
    return lines


def stream_round(proxy: object, ca: Path, port: int, count: int) -> tuple[float, float]:
    """(proxy CPU seconds, wall seconds) for one client-streaming call of `count` small messages."""
    from benchmarks.payload_stream import Proxy

    assert isinstance(proxy, Proxy)
    host = "127.0.0.1" if proxy.name == "mitmdump" else "api.test"  # mitmdump has no --resolve
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    options = [("grpc.http_proxy", f"http://127.0.0.1:{proxy.port}")]
    batch = [encode([(1, i), (2, "evt"), (3, 1_732_000_000 + i)]) for i in range(count)]
    before, start = cpu_seconds(proxy.proc.pid), time.perf_counter()
    with grpc.secure_channel(f"{host}:{port}", credentials, options=options) as channel:
        assert channel.stream_unary(f"/{GrpcServer.SERVICE}/Upload")(iter(batch), timeout=600) == b"\x08\x02"
    return cpu_seconds(proxy.proc.pid) - before, time.perf_counter() - start


def bidi_works(proxy: object, ca: Path, port: int) -> str:
    """A bidirectional call that waits for each echo before it sends the next message (as Firestore's Listen does)."""
    import queue

    from benchmarks.payload_stream import Proxy

    assert isinstance(proxy, Proxy)
    host = "127.0.0.1" if proxy.name == "mitmdump" else "api.test"
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    options = [("grpc.http_proxy", f"http://127.0.0.1:{proxy.port}")]
    replies: queue.Queue[bytes] = queue.Queue()

    def requests() -> object:
        for index in range(5):
            yield encode([(1, index)])
            replies.get(timeout=10)

    echoes = 0
    try:
        with grpc.secure_channel(f"{host}:{port}", credentials, options=options) as channel:
            for answer in channel.stream_stream(f"/{GrpcServer.SERVICE}/Chat")(requests(), timeout=10):
                echoes += 1
                replies.put(answer)
    except grpc.RpcError as error:
        return f"no: {error.code().name} after {echoes} of 5 echoes"
    return "yes: 5 of 5 echoes while the call was open"


def streams(count: int, rounds: int) -> list[str]:
    from benchmarks.payload_stream import Proxy

    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tlsgate-grpc-stream-bench-") as tmp:
        work = Path(tmp)
        chain = make_chain(dns=("api.test",), ips=("127.0.0.1",))
        root = write_pem(work / "root.pem", chain.root)
        cert, key = write_server_files(work, chain.leaf, chain.intermediate)
        server = GrpcServer(cert, key).start()
        proxies = [Proxy(work, name, setting, root, server.port) for name, setting in STREAM_CONFIGS.items()]
        ca = work / "ca" / "mitmproxy-ca-cert.pem"
        rows: dict[str, list[tuple[float, float]]] = {p.name: [] for p in proxies}
        bidi: dict[str, str] = {}
        try:
            for proxy in proxies:
                stream_round(proxy, ca, server.port, 200)  # warm-up
                bidi[proxy.name] = bidi_works(proxy, ca, server.port)
                server.received.clear()
            for index in range(rounds):
                for proxy in proxies if index % 2 == 0 else proxies[::-1]:
                    rows[proxy.name].append(stream_round(proxy, ca, server.port, count))
                    server.received.clear()
        finally:
            for proxy in proxies:
                proxy.stop()
            server.stop()
    base = statistics.median(cpu for cpu, _ in rows["mitmdump"]) / count
    lines.append(f"# One client-streaming call of {count:,} small messages ({rounds} rounds per proxy)\n")
    lines.append("| proxy | CPU µs/message (median) | vs mitmdump | wall s/call | bidirectional call works |")
    lines.append("|---|---:|---:|---:|---|")
    for name, results in rows.items():
        cpu = statistics.median(c for c, _ in results) / count
        wall = statistics.median(w for _, w in results)
        lines.append(f"| {name} | {cpu * 1e6:.0f} | {cpu / base:.2f}x | {wall:.1f} | {bidi[name]} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 1 pass")
    parser.add_argument("--stream", type=int, default=20_000, help="messages in the streaming call (0: skip it)")
    parser.add_argument("--streams-only", action="store_true", help="only the streaming section")
    args = parser.parse_args()
    if args.stream:
        print("\n".join(streams(args.stream if not args.quick else 2000, 1 if args.quick else 3)))
        print()
    if args.streams_only:
        return 0
    rounds, repeat = (1, 1) if args.quick else (4, 5)
    mix = messages(random.Random(24))
    with tempfile.TemporaryDirectory(prefix="tlsgate-grpc-bench-") as tmp:
        work = Path(tmp)
        chain = make_chain(dns=("api.test",), ips=("127.0.0.1",))
        root = write_pem(work / "root.pem", chain.root)
        cert, key = write_server_files(work, chain.leaf, chain.intermediate)
        server = GrpcServer(cert, key).start()
        on = Gate(work, "report", root, server.port)
        off = Gate(work, "ignore", root, server.port)
        ca = work / "ca" / "mitmproxy-ca-cert.pem"
        results: dict[str, list[tuple[float, float, int]]] = {on.name: [], off.name: []}
        try:
            run_round(on, ca, server.port, mix, 1)  # warm-up: imports, CA, first connections
            run_round(off, ca, server.port, mix, 1)
            for index in range(rounds):
                for gate in (on, off) if index % 2 == 0 else (off, on):
                    results[gate.name].append(run_round(gate, ca, server.port, mix, repeat))
        finally:
            on.stop()
            off.stop()
            server.stop()
    per = {name: [cpu / count * 1e6 for cpu, _wall, count in rows] for name, rows in results.items()}
    base = statistics.median(per[off.name])
    count = sum(len(batch) for batch in mix.values())
    print(f"# gRPC inspection cost ({rounds} rounds x {repeat} passes x {count} messages per proxy)\n")
    print("| config | proxy CPU µs/message (median) | ratio |")
    print("|---|---:|---:|")
    for name in (off.name, on.name):
        cpu = statistics.median(per[name])
        print(f"| {name} | {cpu:.0f} | {cpu / base:.2f}x |")
    print()
    print("\n".join(micro(mix)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
