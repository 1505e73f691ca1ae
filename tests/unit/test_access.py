"""Never an open proxy: loopback by default, public clients refused (the live halves: tests/live/test_access.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from mitmproxy.test import tflow, tutils

from tests.harness import REPO
from tlsgate.addons.access import MAX_SAID, ClientAccess
from tlsgate.addons.auththrottle import FREE_FAILURES, MAX_ADDRESSES, AuthThrottle
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


# -- the per-address memories are bounded ---------------------------------------------------------------


def test_a_refusal_is_logged_once_a_minute_and_the_memory_of_refusals_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """An internet scanner's every SYN is not a log line, and a scan of every address is not a memory leak:
    after MAX_SAID (4096) other refusals, the oldest one is forgotten and logged again."""
    refusals = ClientAccess()
    caplog.set_level(logging.WARNING, logger="tlsgate.access")

    def logged(text: str) -> int:
        return sum(record.getMessage() == text for record in caplog.records)

    refusals._log("client 203.0.113.1 refused")
    refusals._log("client 203.0.113.1 refused")
    for n in range(MAX_SAID - 1):
        refusals._log(f"client 198.51.{n >> 8}.{n & 255} refused")
    refusals._log("client 203.0.113.1 refused")  # looking it up does not make it recent
    assert logged("client 203.0.113.1 refused") == 1, "still remembered: said once a minute"
    refusals._log("client 192.0.2.1 refused")  # one more: the least recently seen, 203.0.113.1, is forgotten
    refusals._log("client 203.0.113.1 refused")
    assert logged("client 203.0.113.1 refused") == 2
    assert MAX_SAID == 4096


def test_failed_proxy_authentications_are_remembered_for_a_bounded_number_of_addresses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MAX_ADDRESSES (4096) addresses' failure counts are kept; an address pushed out starts counting again."""
    throttle = AuthThrottle()
    flow = tflow.tflow(resp=tutils.tresp(status_code=407))
    caplog.set_level(logging.WARNING, logger="tlsgate.auth")

    def fail(address: str) -> None:
        flow.client_conn.peername = (address, 50000)
        asyncio.run(throttle.requestheaders(flow))

    def warned(address: str) -> bool:
        return any(address in record.getMessage() for record in caplog.records)

    for address in ("203.0.113.1", "203.0.113.2"):
        for _ in range(FREE_FAILURES):
            fail(address)
    for n in range(MAX_ADDRESSES - 2):
        fail(f"198.51.{n >> 8}.{n & 255}")
    fail("203.0.113.1")  # its third failure: still remembered, so it is slowed and said
    assert warned("203.0.113.1")
    fail("192.0.2.1")  # one address too many: the least recently failed one, 203.0.113.2, is forgotten
    fail("203.0.113.2")
    assert not warned("203.0.113.2"), "forgotten: its failures count from one again"
    assert MAX_ADDRESSES == 4096
