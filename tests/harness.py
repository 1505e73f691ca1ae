"""Real processes and servers for end-to-end tests: a tlsgate subprocess and local upstreams.

Upstreams count every TCP connection they accept and every request they see,
so "not one byte reached the upstream" is asserted as `connections == 0`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.owner.requests.append(Seen(self.command, self.path, dict(self.headers.items()), body))
        payload = f"hello from {self.server.owner.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Upstream

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.owner.connections += 1
        return True


@dataclass
class Upstream:
    """An HTTP or HTTPS server on 127.0.0.1 that records what reached it."""

    name: str = "upstream"
    cert_file: Path | None = None
    key_file: Path | None = None
    ssl_context: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    port: int = 0

    def start(self) -> Upstream:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        context = self.ssl_context
        if context is None and self.cert_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert_file, self.key_file)
        if context is not None:
            server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# Every tlsgate a test started, so a failing live test can print their consoles (tests/live/conftest.py).
STARTED: list[Tlsgate] = []

# "HTTP(S) proxy", "SOCKS v5 proxy", "Transparent Proxy listening at *:8080", "reverse proxy to http3://… listening at",
# "WireGuard server listening at *:51820" (a wireguard-only run has no other listener)
LISTENING = re.compile(r"(?:[Pp]roxy|proxy to \S+|WireGuard server) listening at (?:\*|\[?[\d.:a-f]+\]?):(\d+)")


class Tlsgate:
    """`python -m tlsgate run` as a subprocess on a free port, with its console captured."""

    def __init__(
        self, workdir: Path, args: Sequence[str] = (), env: dict[str, str] | None = None, command: Sequence[str] | None = None
    ) -> None:
        self.command = list(command) if command else None  # a whole command line instead of `python -m tlsgate run ...`
        self.workdir = workdir
        self.findings_path = workdir / "findings.jsonl"
        self.args = list(args)
        self.env = env
        self.lines: list[str] = []
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 40, port: int | None = None) -> Tlsgate:
        """Start and wait until it listens: read the port from the log, or, for a run whose log is silenced
        (`-q`), connect to the `port` it was given until it accepts."""
        cmd = self.command or [
            sys.executable,
            "-m",
            "tlsgate",
            "run",
            "--listen-port",
            "0",
            "--metrics-port",
            "0",
            "--confdir",
            str(self.workdir / "certs"),
            "--findings",
            str(self.findings_path),
            *self.args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        STARTED.append(self)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        if port is not None:
            self.port = port
            if not eventually(lambda: accepts(port), timeout):
                raise AssertionError(f"nothing listens on port {port} after {timeout}s:\n{self.output}")
            return self
        match = self.wait_for(LISTENING, timeout)
        self.port = int(match.group(1))
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 20, start: int = 0) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                found = regex.search(line)
                if found:
                    return found
            if self.proc and self.proc.poll() is not None and not any(regex.search(x) for x in self.lines[start:]):
                time.sleep(0.2)
                raise AssertionError(f"tlsgate exited ({self.proc.returncode}) before {regex.pattern!r}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {regex.pattern!r}:\n{self.output}")

    @property
    def metrics_url(self) -> str:
        """Base URL of /metrics, /healthz and /readyz (port 0 in tests: read it from the log)."""
        port = self.wait_for(r"metrics listening at http://127\.0\.0\.1:(\d+)/metrics").group(1)
        return f"http://127.0.0.1:{port}"

    def scrape(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"{self.metrics_url}/metrics", timeout=10) as response:
            return response.read().decode()

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.workdir / "certs" / "mitmproxy-ca-cert.pem"

    def findings(self) -> list[dict[str, Any]]:
        if not self.findings_path.exists():
            return []
        return [json.loads(x) for x in self.findings_path.read_text().splitlines() if x.strip()]

    def wait_findings(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.findings()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"expected {count} findings, got {self.findings()}\n{self.output}")

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_reader", None) is not None:
            self._reader.join(10)  # every line it printed is in self.lines once stop() returns
        return self.proc.returncode if self.proc else 0


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]
    body: str
    returncode: int
    stderr: str

    @classmethod
    def parse(cls, done: subprocess.CompletedProcess[str]) -> CurlResult:
        """curl -D - output: status, headers (lower-cased) and body, past a proxy's "200 Connection established"."""
        head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
        while head.startswith("HTTP/") and " 200 Connection established" in head.split("\n", 1)[0]:
            head, _, body = body.partition("\n\n")
        lines = head.split("\n")
        status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]) if k}
        return cls(status, headers, body, done.returncode, done.stderr)


def curl(proxy: str, url: str, *extra: str, timeout: float = 20) -> CurlResult:
    """Run the real curl through the proxy; returns status, headers (lower-cased) and body."""
    cmd = ["curl", "-sS", "--noproxy", "", "-x", proxy, "-D", "-", "--max-time", str(int(timeout)), *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
    return CurlResult.parse(done)


def read_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """Bytes from `sock` until a blank line ends an HTTP head (or the peer closes, or `limit` bytes came)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed(sock: socket.socket, timeout: float = 5) -> None:
    """Read and drop what the peer sends until it closes (or `timeout` passes between reads): tlsgate has
    judged the connection by then, and its finding and log lines are written."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now (the kernel's pick), for a process that must be told its port up front."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def eventually(check: Callable[[], bool], timeout: float = 10, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


@contextlib.contextmanager
def full_accept_queue() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full: the kernel drops further SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):  # bounded: Linux queues backlog + 1 connections
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
            probe = socket.socket()
            probe.settimeout(0.5)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                break
            finally:
                probe.close()
        else:
            pytest.fail("could not fill the accept queue")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
