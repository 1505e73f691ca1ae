"""Never an open proxy: loopback by default, public clients refused (the live halves: tests/live/test_access.py)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness import REPO
from tlsgate.app.runner import RunConfig, banner, mitmproxy_options
from tlsgate.policy import load_policy


def config(**kwargs: object) -> RunConfig:
    return RunConfig(policy_paths=[], policy=load_policy([REPO / "policies" / "default.yaml"]), **kwargs)  # type: ignore[arg-type]


def test_public_clients_are_refused_unless_allowed() -> None:
    assert mitmproxy_options(config())["block_global"] is True
    assert mitmproxy_options(config(listen_host="0.0.0.0"))["block_global"] is True
    assert mitmproxy_options(config(listen_host="0.0.0.0", allow_public_clients=True))["block_global"] is False
    assert config().listen_host == "127.0.0.1"


def test_banner_warns_about_access_on_non_loopback() -> None:
    lines = banner(config(listen_host="0.0.0.0"), Path("certs/ca.pem"), "AA:BB")
    assert any("public addresses refused" in line and "not required" in line for line in lines)
    assert not any(line.startswith("access:") for line in banner(config(), Path("c"), "AA"))


def test_proxyauth_is_taken_from_the_environment_and_warned_about_on_the_command_line(tmp_path: Path) -> None:
    from tlsgate.app.cli import build_parser

    os.environ["TLSGATE_PROXYAUTH"] = "tester:from-env"
    try:
        assert build_parser().parse_args(["run"]).proxyauth == "tester:from-env"
    finally:
        del os.environ["TLSGATE_PROXYAUTH"]
    assert build_parser().parse_args(["run"]).proxyauth is None
    from tlsgate.app.runner import worker_argv

    assert "--proxyauth" not in worker_argv(config(proxyauth="tester:pw"), 0, 8080, None)


def test_documentation_and_tunnel_ranges_are_not_lab_clients() -> None:
    from tlsgate.tls.lan import outside_the_lab

    for address in ("192.0.2.9", "198.51.100.7", "203.0.113.1", "2001:db8::1", "2001:0:4136:e378::1", "2002:c000:204::1",
                    "::ffff:198.51.100.7"):  # fmt: skip
        assert outside_the_lab(address), address
    for address in ("10.0.0.2", "192.168.1.5", "100.64.0.9", "fd00::1", "127.0.0.1", "8.8.8.8", "not an address"):
        assert not outside_the_lab(address), address  # LAN, CGNAT, ULA, loopback; global ones are block_global's
