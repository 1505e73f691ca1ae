"""Real Node, Java and Go HTTPS clients (sources beside this file), built once and run as subprocesses.

Each client program takes a configuration (the correct one or one documented
mistake), a proxy (`http://host:port`, or `-` to connect directly, as in
WireGuard mode), the CA file it should trust and any number of URLs, and
prints one line per URL: `ACCEPTED <status> <X-Tlsgate-Check>` when it sent
its request and read the answer, `REFUSED <error>` when it gave up, `ERROR
<...>` when something other than TLS failed (the test then fails). Every URL
gets a connection of its own (no keep-alive, no resumed session), as the
probe schedule counts connections.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCES = Path(__file__).resolve().parent
ACCEPTS, REFUSES = "accepts", "refuses"

# The tools each family needs, and the Debian packages .ci/run installs them from.
TOOLS = {"node": ("node",), "java": ("java", "javac"), "go": ("go",)}
PACKAGES = "nodejs default-jdk-headless golang-go"


@dataclass(frozen=True)
class StackClient:
    id: str
    family: str  # node, java, go
    config: str  # the client program's CONFIG argument
    title: str  # the README's column heading


STACK_CLIENTS = (
    StackClient("node", "node", "default", "Node `https`, `ca:` the CA"),
    StackClient("node-no-reject", "node", "no-reject", "Node `rejectUnauthorized: false`"),
    StackClient("node-no-identity", "node", "no-identity", "Node `checkServerIdentity: () => undefined`"),
    StackClient("java", "java", "default", "Java `HttpsURLConnection`, trust store with the CA"),
    StackClient("java-trust-all", "java", "trust-all", "Java trust-all `X509TrustManager`"),
    StackClient("java-allow-all-hosts", "java", "allow-all-hosts", "Java allow-all `HostnameVerifier`"),
    StackClient("java-swallow-expired", "java", "swallow-expired", "Java `TrustManager` ignoring `CertificateExpiredException`"),
    StackClient("go", "go", "default", "Go `RootCAs` the CA"),
    StackClient("go-insecure", "go", "insecure", "Go `InsecureSkipVerify: true`"),
    StackClient(
        "go-handwritten", "go", "handwritten", "Go `InsecureSkipVerify` + `VerifyPeerCertificate` checking signatures only"
    ),
)
FAMILIES = ("node", "java", "go")


def required() -> bool:
    """Under CI (or `.ci/run`, which installs the tools) a missing tool is a failure, never a skip."""
    return bool(os.environ.get("CI")) or os.environ.get("TLSGATE_STACK_CLIENTS") == "required"


class Builds:
    """Each family's program built once, on first use, into `directory`: the argv that runs it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.argv: dict[str, list[str]] = {}

    def __call__(self, family: str) -> list[str]:
        if family not in self.argv:
            missing = [tool for tool in TOOLS[family] if shutil.which(tool) is None]
            if missing:
                why = f"{', '.join(missing)} not installed (.ci/run installs {PACKAGES})"
                if required():
                    pytest.fail(f"{why}: under CI these clients must run")
                pytest.skip(why)
            self.argv[family] = _build(family, self.directory / family)
        return self.argv[family]


def _build(family: str, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    if family == "node":
        subprocess.run(["node", "--check", str(SOURCES / "node" / "client.js")], check=True, capture_output=True, timeout=60)
        return ["node", str(SOURCES / "node" / "client.js")]
    if family == "java":
        subprocess.run(
            ["javac", "-d", str(out), str(SOURCES / "java" / "Client.java")], check=True, capture_output=True, timeout=120
        )
        # Client.java starts a JVM per run: C1 only and the serial collector make that start cheaper.
        return ["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xss1m", "-cp", str(out), "Client"]
    env = {
        **os.environ,
        "HOME": str(out),
        "GOCACHE": str(out / "cache"),
        "GOPATH": str(out / "gopath"),
        "GO111MODULE": "off",  # one file, standard library only: no module, nothing to download
        "GOPROXY": "off",
        # With a C compiler the standard library Debian ships prebuilt is linked as is (0.5 s); without one
        # (golang-go without its recommends) cgo must be off, and the library is rebuilt once (10-25 s here).
        "CGO_ENABLED": "1" if shutil.which("gcc") else "0",
    }
    binary = out / "client"
    subprocess.run(
        ["go", "build", "-o", str(binary), str(SOURCES / "go" / "client.go")],
        check=True,
        capture_output=True,
        timeout=300,
        env=env,
    )
    return [str(binary)]


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def local(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=240)


@dataclass(frozen=True)
class Outcome:
    line: str  # what the client printed

    @property
    def verdict(self) -> str:
        """ACCEPTS: it sent its request over the probe and got tlsgate's 403; REFUSES: it gave up on TLS."""
        if self.line.startswith("REFUSED "):
            return REFUSES
        assert self.line.startswith("ACCEPTED 403 client_probe"), self.line
        return ACCEPTS


def run(argv: Sequence[str], config: str, proxy: str, ca: Path, urls: Sequence[str], runner: Runner = local) -> list[Outcome]:
    """One process of the client in `config`, one connection per URL in order; `runner` runs it (in a namespace)."""
    done = runner([*argv, config, proxy, str(ca), *urls])
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == len(urls), (argv, config, done.returncode, done.stdout, done.stderr)
    return [Outcome(line) for line in lines]
