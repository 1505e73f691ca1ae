"""Destination facts and verdicts: the proxy host and its link are refused unless a rule allows them."""

from __future__ import annotations

import subprocess

import pytest

from tlsgate.checks.destination import judge_destination
from tlsgate.checks.model import Action, Check, decide
from tlsgate.policy import Mode
from tlsgate.policy.loader import load_texts
from tlsgate.tls.addresses import address_kind, is_own_address, local_kind


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("[::1]", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link_local"),
        ("fe80::1%eth0", "link_local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.0.0.1", None),
        ("203.0.113.7", None),
        ("api.test", None),
        ("", None),
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(address) == kind


def test_own_addresses_are_the_ones_the_kernel_lets_us_bind() -> None:
    assert is_own_address("127.0.0.1")
    assert not is_own_address("192.0.2.55")  # TEST-NET-1, assigned to no interface here
    assert not is_own_address("not an address")
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True, check=False)
    mine = [line.split()[3].split("/")[0] for line in shown.stdout.splitlines()]
    for address in mine:
        assert local_kind(address) == "proxy_host"


POLICY = """\
version: 1
defaults:
  mode: report
rules:
  - hosts: [db.lab.test]
    local_destinations: allow
"""


def test_refused_in_every_mode_unless_the_rule_allows_it() -> None:
    policy = load_texts([("p.yaml", POLICY)])
    issue = judge_destination("loopback", "127.0.0.1", 6379, policy.match("api.test"))
    assert issue is not None and issue.check is Check.DESTINATION and issue.kind == "loopback"
    assert decide(issue, Mode.REPORT) is Action.BLOCKED  # guards the proxy host: report mode does not loosen it
    assert "local_destinations: allow" in issue.remedy and "--resolve api.test:6379:127.0.0.1" in issue.remedy
    assert judge_destination("loopback", "127.0.0.1", 6379, policy.match("db.lab.test")) is None
    assert judge_destination(None, "10.0.0.1", 443, policy.match("api.test")) is None


def test_resolve_is_advised_only_where_the_mode_takes_it() -> None:
    """Transparent and WireGuard refuse --resolve at start-up: a remedy naming it would send the user in a circle."""
    policy = load_texts([("p.yaml", POLICY)])
    issue = judge_destination("proxy_host", "10.1.1.1", 22, policy.match("api.test"), resolvable=False)
    assert issue is not None and "--resolve" not in issue.remedy and "local_destinations: allow" in issue.remedy


def test_a_proxy_request_to_the_transparent_listener_is_told_to_drop_the_proxy_setting() -> None:
    policy = load_texts([("p.yaml", POLICY)])
    issue = judge_destination("proxy_host", "10.1.1.1", 8080, policy.match("10.1.1.1"), resolvable=False, own_listener=True)
    assert issue is not None and issue.kind == "proxy_host" and decide(issue, Mode.REPORT) is Action.BLOCKED
    assert "transparent listener itself (10.1.1.1:8080)" in issue.detail
    assert "remove the device's proxy setting" in issue.remedy and "--resolve" not in issue.remedy
    # Connecting there would loop: a rule allowing local destinations does not let it through.
    allowed = judge_destination("proxy_host", "10.1.1.1", 8080, policy.match("db.lab.test"), resolvable=False, own_listener=True)
    assert allowed is not None


def test_own_listener_means_a_transparent_connection_to_a_listener_port() -> None:
    """mitmproxy sets a transparent client's sockname to the original destination, so the listener is known by its
    port: a device sending to gateway:8080 as to a proxy loops back; one reaching the gateway's SSH is redirected."""
    from mitmproxy.proxy import mode_specs
    from mitmproxy.test import tflow

    from tlsgate.addons.destination import is_own_listener

    client = tflow.tclient_conn()
    client.proxy_mode = mode_specs.ProxyMode.parse("transparent")
    client.sockname = ("fd00:231:1::1", 22)  # what mitmproxy sets: the original destination
    assert is_own_listener(client, 8080, frozenset({8080}))
    assert not is_own_listener(client, 22, frozenset({8080}))  # another service on the gateway, redirected
    assert not is_own_listener(client, 8080, frozenset())  # no transparent listener
    client.proxy_mode = mode_specs.ProxyMode.parse("regular")
    assert not is_own_listener(client, 8080, frozenset({8080}))  # a proxy's CONNECT to itself is another story


def test_the_setting_is_validated_where_written() -> None:
    with pytest.raises(Exception, match=r"p\.yaml:3:23: defaults\.local_destinations must be one of refuse, allow"):
        load_texts([("p.yaml", "version: 1\ndefaults:\n  local_destinations: yes\n")])
