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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 1 pass")
    args = parser.parse_args()
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
