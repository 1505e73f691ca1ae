"""One client address cannot hold every connection: beyond the cap new ones are closed at once."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from tests.harness import Tlsgate, Upstream, curl, eventually


def closed_at_once(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(3)
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def test_connections_beyond_the_per_client_cap_are_refused_and_freed_ones_reused(tlsgate, http_upstream: Upstream) -> None:
    gate = tlsgate(
        "version: 1\nrules:\n  - hosts: [api.test]\n    cleartext: allow\n",
        resolve={"api.test": http_upstream.port},
        args=("--set", "tlsgate_max_client_connections=5"),
    )
    idle = [socket.create_connection(("127.0.0.1", gate.port), timeout=5) for _ in range(5)]
    try:
        time.sleep(0.5)
        assert closed_at_once(gate.port), "a sixth connection from the same address was served"
        assert eventually(lambda: "already holds 5 connections" in gate.output, timeout=5)
        idle.pop().close()
        assert eventually(lambda: curl(gate.proxy_url, f"http://api.test:{http_upstream.port}/ok", timeout=5).status == 200, 10)
    finally:
        for sock in idle:
            sock.close()


def test_the_open_files_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """Started with a soft limit of 256 (a common default), tlsgate raises it to the hard limit."""
    command = [
        "prlimit", "--nofile=256:4096", sys.executable, "-m", "tlsgate", "run", "--listen-port", "0",
        "--metrics-port", "-1", "--confdir", str(tmp_path / "certs"), "--findings", "",
    ]  # fmt: skip
    gate = Tlsgate(tmp_path, command=command).start()
    try:
        assert eventually(lambda: "open-files limit raised from 256 to 4096" in gate.output, timeout=10), gate.output
        limits = Path(f"/proc/{gate.proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        gate.stop()
