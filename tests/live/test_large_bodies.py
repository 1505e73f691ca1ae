"""Large bodies stream through tlsgate instead of being held whole (an endless chunked response grew RSS to 1.2 GiB)."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

ALLOW = "version: 1\nrules:\n  - hosts: [big.test]\n    cleartext: allow\n"
CHUNK = b"x" * 65536
TOTAL_CHUNKS = 2400  # 150 MiB


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def serve_big(sock: socket.socket) -> None:
    conn, _ = sock.accept()
    with conn:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n")
        frame = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"
        with contextlib.suppress(OSError):
            for _ in range(TOTAL_CHUNKS):
                conn.sendall(frame)
            conn.sendall(b"0\r\n\r\n")


def test_a_150_mib_chunked_response_streams_with_bounded_memory(tlsgate) -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = threading.Thread(target=serve_big, args=(sock,), daemon=True)
    server.start()
    gate = tlsgate(ALLOW, resolve={"big.test": port})
    before = rss_mib(gate.proc.pid)
    peak = before
    received = 0
    with socket.create_connection(("127.0.0.1", gate.port), timeout=30) as client:
        client.sendall(f"GET http://big.test:{port}/ HTTP/1.1\r\nHost: big.test\r\n\r\n".encode())
        for _ in range(100_000):  # bounded
            data = client.recv(1 << 20)
            if not data:
                break
            received += len(data)
            if received % (16 << 20) < len(data):
                peak = max(peak, rss_mib(gate.proc.pid))
            if data.endswith(b"0\r\n\r\n"):
                break
    server.join(30)
    sock.close()
    assert received > TOTAL_CHUNKS * len(CHUNK)
    assert peak - before < 64, f"RSS grew {peak - before:.0f} MiB while 150 MiB passed through"
