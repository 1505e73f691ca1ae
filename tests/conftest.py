"""Shared fixtures: a test PKI, local upstream servers and tlsgate processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.certgen import Chain, make_chain, write_pem, write_server_files
from tests.harness import Tlsgate, Upstream
from tests.seeded import reseed

TEST_HOSTS = ("api.test", "www.test", "legacy.test", "cdn.test", "a.cdn.test")


@pytest.fixture(autouse=True)
def _seeded_random_bytes(request: pytest.FixtureRequest) -> None:
    """`tests.seeded.urandom` gives each test the same bytes on every run (see tests/seeded.py)."""
    reseed(request.node.nodeid)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Chain, Path, Path, Path]:
    """A private root -> intermediate -> leaf for the test hosts: (chain, root file, cert file, key file)."""
    directory = tmp_path_factory.mktemp("pki")
    chain = make_chain(dns=TEST_HOSTS, ips=("127.0.0.1",))
    root_file = write_pem(directory / "root.pem", chain.root)
    cert_file, key_file = write_server_files(directory, chain.leaf, chain.intermediate)
    return chain, root_file, cert_file, key_file


@pytest.fixture
def https_upstream(pki: tuple[Chain, Path, Path, Path]) -> Iterator[Upstream]:
    _, _, cert_file, key_file = pki
    server = Upstream("https-upstream", cert_file, key_file).start()
    yield server
    server.stop()


@pytest.fixture
def http_upstream() -> Iterator[Upstream]:
    server = Upstream("http-upstream").start()
    yield server
    server.stop()


TlsgateFactory = Callable[..., Tlsgate]


@pytest.fixture
def tlsgate(tmp_path: Path, pki: tuple[Chain, Path, Path, Path]) -> Iterator[TlsgateFactory]:
    """Start tlsgate with an optional policy text, upstream CA trusted and names resolved to loopback."""
    started: list[Tlsgate] = []
    _, root_file, _, _ = pki

    def start(policy: str | None = None, *, resolve: dict[str, int] | None = None, args: tuple[str, ...] = ()) -> Tlsgate:
        extra = ["--upstream-ca", str(root_file)]
        if policy is not None:
            path = tmp_path / "policy.yaml"
            path.write_text(policy)
            extra += ["--policy", str(path)]
        for host, port in (resolve or {}).items():
            extra += ["--resolve", f"{host}:{port}:127.0.0.1"]
        gate = Tlsgate(tmp_path, [*extra, *args]).start()
        started.append(gate)
        return gate

    yield start
    for gate in started:
        gate.stop()
