"""Transparent, WireGuard and the other gateway modes: the host a connection asked for, --resolve's reach,
the transparent listen address, and the console advice after a refused server.

The add-ons run in mitmproxy's test context (`taddons`/`tflow`) through the same
`make_addons()` wiring as `tests/unit/test_addons.py`, whose `gate` fixture this reuses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

import pytest
from mitmproxy import dns, exceptions, http
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook
from mitmproxy.test import tflow, tutils

from tests.unit import test_addons
from tests.unit.test_addons import Gate, plain
from tlsgate.addons import state
from tlsgate.addons.mitm_internals import EAGER_ADVICE, corrected_advice
from tlsgate.addons.resolve import resolve_scope_error, unresolved_modes
from tlsgate.addons.state import DnsNames, request_host, request_url
from tlsgate.app.cli import main
from tlsgate.app.runner import default_listen_host, listen_problem

gate = test_addons.gate  # the same fixture: make_addons() in a mitmproxy test context

MITMPROXY_LAZY = (
    "Unable to establish TLS connection with server (certificate verify failed). Trying to establish TLS with client "
    "anyway. If you plan to redirect requests away from this server, consider setting `connection_strategy` to `lazy` "
    "to suppress early connections."
)


def answered(client_address: str, name: str, *addresses: str) -> dns.DNSFlow:
    """A DNS flow as tlsgate's own resolver (WireGuard's 10.0.0.53, `--mode dns`) answered it."""
    question = [dns.Question(name, dns.types.A, dns.classes.IN)]
    records = [dns.ResourceRecord.A(name, ipaddress.IPv4Address(a)) for a in addresses]
    flow = tflow.tdnsflow(req=tutils.tdnsreq(questions=question), resp=tutils.tdnsresp(questions=question, answers=records))
    flow.client_conn.peername = (client_address, 53000)
    return flow


def transparent_request(address: str, host_header: str | None, path: str = "/login?password=SECRET") -> http.HTTPFlow:
    """A plain-HTTP request as transparent and WireGuard modes see it: the target is the destination address."""
    headers = [(b"host", host_header.encode())] if host_header is not None else []
    return plain(host=address, path=path, headers=headers)


# -- the host a connection asked for ------------------------------------------------------------------


def test_request_host_prefers_the_name_the_proxy_connects_to_then_the_host_header() -> None:
    proxy_form = tutils.treq(host="api.test", headers=http.Headers(host="elsewhere.test"))
    assert request_host(proxy_form) == "api.test"  # the request goes to api.test, whatever Host says
    assert request_host(tutils.treq(host="192.0.2.7", headers=http.Headers(host="api.test:8080"))) == "api.test"
    assert request_host(tutils.treq(host="192.0.2.7", headers=http.Headers())) == "192.0.2.7"


def test_request_url_names_the_host_instead_of_the_destination_address() -> None:
    request = tutils.treq(host="192.0.2.7", port=80, path=b"/login?x=1", headers=http.Headers(host="api.test"))
    request.scheme = "http"
    assert request_url(request) == "http://api.test/login?x=1"
    other_port = tutils.treq(host="192.0.2.7", port=8080, path=b"/login?x=1", headers=http.Headers(host="api.test:8080"))
    other_port.scheme = "http"
    assert request_url(other_port) == "http://api.test:8080/login?x=1"
    hostile = tutils.treq(host="192.0.2.7", port=80, path=b"/", headers=http.Headers([(b"host", b"\xff\xfe:99999")]))
    hostile.scheme = "http"
    assert request_url(hostile) == "http://192.0.2.7/"  # not a host name: the address stays
    nameless = tutils.treq(host="192.0.2.7", port=80, path=b"/", headers=http.Headers())
    nameless.scheme = "http"
    assert request_url(nameless) == "http://192.0.2.7/"


def test_a_request_is_named_once_however_many_add_ons_ask(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Host and URL are one fact: every add-on of a plain-HTTP verdict reads it, one pure function decides it."""
    calls: list[str] = []
    real = state.name_request
    monkeypatch.setattr(state, "name_request", lambda *args: calls.append(args[1]) or real(*args))
    flow = transparent_request("192.0.2.7", "api.test")

    async def hooks() -> None:  # every add-on, in make_addons() order, as mitmproxy calls them
        await gate.tctx.master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
        await gate.tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))

    asyncio.run(hooks())
    assert flow.response is not None and flow.response.status_code == 403  # blocked: plain HTTP
    assert calls == ["192.0.2.7"]  # named once, for every add-on and hook that judged it


def test_a_rewritten_request_is_named_again() -> None:
    """An add-on between two hooks (RequestHygiene, a user's map_remote) may change what names the request."""
    request = tutils.treq(host="192.0.2.7", port=80, path=b"/a", headers=http.Headers(host="api.test"))
    request.scheme = "http"
    assert (request_host(request), request_url(request)) == ("api.test", "http://api.test/a")
    request.headers["host"] = "other.test"
    assert (request_host(request), request_url(request)) == ("other.test", "http://other.test/a")
    request.path = "/b"
    assert request_url(request) == "http://other.test/b"
    request.host = "named.test"
    assert (request_host(request), request_url(request)) == ("named.test", "http://named.test/b")


def test_a_cleartext_request_to_an_address_meets_the_rule_for_its_host_header(gate: Gate) -> None:
    flow = transparent_request("192.0.2.7", "report.test")
    gate.guard.request(flow)
    (finding,) = gate.findings()
    assert (finding["host"], finding["action"], finding["rule"]) == ("report.test", "reported", gate.rule("report.test"))


def test_tlsgates_own_dns_answer_names_an_address_with_neither_sni_nor_host(gate: Gate) -> None:
    gate.connections.dns_response(answered("127.0.0.1", "report.test", "192.0.2.7"))
    flow = transparent_request("192.0.2.7", None, "/")
    gate.guard.request(flow)
    (finding,) = gate.findings()
    assert (finding["host"], finding["action"], finding["rule"]) == ("report.test", "reported", gate.rule("report.test"))
    assert flow.response is None  # report mode: forwarded


def test_a_dns_answer_for_one_device_never_names_another_devices_traffic(gate: Gate) -> None:
    gate.connections.dns_response(answered("10.0.0.2", "open.test", "192.0.2.7"))
    flow = transparent_request("192.0.2.7", None, "/")  # from 127.0.0.1, which never asked
    gate.guard.request(flow)
    (finding,) = gate.findings()
    assert finding["host"] == "192.0.2.7" and finding["action"] == "blocked"
    assert flow.response is not None and flow.response.status_code == 403


def test_settle_turns_an_address_into_its_dns_name_but_keeps_a_given_name(gate: Gate) -> None:
    gate.connections.dns_response(answered("127.0.0.1", "api.test", "192.0.2.7"))
    state = gate.connections.of(tflow.tclient_conn())
    assert state.settle("192.0.2.7").host == "api.test" and state.host == "api.test"
    other = gate.connections.of(tflow.tclient_conn())
    assert other.settle("open.test").host == "open.test"
    assert other.match_for("192.0.2.7", None).host == "api.test"
    assert other.match_for("192.0.2.8", None).host == "192.0.2.8"


def test_dns_names_ignore_failed_and_odd_answers(gate: Gate) -> None:
    failed = answered("127.0.0.1", "api.test")
    failed.response = failed.request.fail(dns.response_codes.NXDOMAIN)
    gate.connections.dns_response(failed)
    unanswered = answered("127.0.0.1", "api.test", "192.0.2.7")
    unanswered.response = None
    gate.connections.dns_response(unanswered)
    odd = answered("127.0.0.1", "api.test")
    odd.response.answers = [dns.ResourceRecord("api.test", dns.types.A, dns.classes.IN, 60, b"\x01\x02")]  # 2 bytes
    gate.connections.dns_response(odd)
    assert len(gate.connections.names) == 0


def test_dns_names_are_bounded() -> None:
    names = DnsNames(limit=2)
    names.remember("c", "192.0.2.1", "a.test")
    names.remember("c", "192.0.2.2", "b.test")
    names.remember("c", "192.0.2.1", "A.test.")  # re-answered: becomes the most recent
    names.remember("c", "192.0.2.3", "c.test")
    assert names.name_for("c", "192.0.2.2") is None
    assert (names.name_for("c", "192.0.2.1"), names.name_for("c", "192.0.2.3")) == ("a.test", "c.test")
    assert len(names) == 2


# -- --resolve in modes where the device resolves -------------------------------------------------------


def test_resolve_is_refused_where_it_could_do_nothing(gate: Gate) -> None:
    for modes in (["transparent"], ["wireguard"], ["transparent", "wireguard"]):
        with pytest.raises(exceptions.OptionsError, match="does nothing in .*transparent|does nothing in .*wireguard"):
            gate.tctx.configure(gate.resolve, mode=modes, tlsgate_resolve=["api.test:443:127.0.0.1"])
    gate.tctx.configure(gate.resolve, mode=["transparent"], tlsgate_resolve=[])  # no --resolve: nothing to refuse


def test_resolve_warns_when_it_covers_only_some_listeners(gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tlsgate.resolve"):
        gate.tctx.configure(gate.resolve, mode=["regular", "wireguard"], tlsgate_resolve=["api.test:443:127.0.0.1"])
    assert "applies to regular clients only" in caplog.text and "wireguard" in caplog.text
    assert gate.resolve.redirects.table == {("api.test", 443): "127.0.0.1"}


def test_resolve_scope_by_mode() -> None:
    assert unresolved_modes(["regular", "socks5", "upstream:http://proxy.test:3128", "transparent", "wireguard"]) == (
        ["regular", "socks5", "upstream"],
        ["transparent", "wireguard"],
    )
    assert resolve_scope_error(["socks5"]) is None and resolve_scope_error(["regular", "transparent"]) is None
    assert "curl --resolve" in (resolve_scope_error(["transparent"]) or "")


# -- transparent mode's listen address ------------------------------------------------------------------


def test_transparent_mode_listens_on_every_address_by_default_and_other_modes_on_loopback() -> None:
    # "" as in mitmproxy: 0.0.0.0 and ::, so connections ip6tables REDIRECTs find a listener too.
    assert default_listen_host(["transparent"]) == ""
    assert default_listen_host(["regular", "transparent"]) == ""
    assert default_listen_host(["transparent@10.1.1.1:8080"]) == "127.0.0.1"  # its own address: the rest stays local
    assert default_listen_host(["regular"]) == default_listen_host(["socks5"]) == default_listen_host(["wireguard"])
    assert default_listen_host(["regular"]) == "127.0.0.1"


def test_a_loopback_transparent_listener_is_refused_with_the_reason() -> None:
    assert listen_problem("0.0.0.0", ["transparent"]) is None and listen_problem("", ["transparent"]) is None
    assert listen_problem("127.0.0.1", ["regular"]) is None
    assert listen_problem("0.0.0.0", ["regular", "transparent@127.0.0.1:8081"]) is not None
    problem = listen_problem("127.0.0.1", ["transparent"])
    assert problem is not None and "REDIRECT" in problem and "Leave --listen-host out" in problem
    assert "IPv4 and IPv6" in problem


def test_run_refuses_a_loopback_transparent_listener_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--mode", "transparent", "--listen-host", "127.0.0.1", "--metrics-port", "-1"]) == 2
    assert "--mode transparent cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_run_refuses_a_resolve_that_would_do_nothing_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--mode", "wireguard", "--resolve", "api.test:443:192.0.2.7", "--metrics-port", "-1"]) == 2
    assert "does nothing in wireguard mode" in capsys.readouterr().err


def _banner(tmp_path: Path, modes: list[str], listen_host: str = "127.0.0.1") -> str:
    from tlsgate.app.runner import RunConfig, banner
    from tlsgate.policy.loader import embedded_policy, load_policy

    config = RunConfig([], load_policy([embedded_policy()]), listen_host=listen_host, modes=modes, confdir=tmp_path)
    return "\n".join(banner(config, tmp_path / "ca.pem", "AB:CD"))


def test_the_banner_tells_a_transparent_gateway_what_to_redirect_in_both_families(tmp_path: Path) -> None:
    shown = _banner(tmp_path, ["transparent"], listen_host="")
    assert "REDIRECT --to-ports 8080" in shown and "udp/443" in shown
    assert "iptables and ip6tables" in shown and "TCP *:8080 (IPv4 and IPv6)" in shown
    assert "IPv4 only" not in shown
    assert "REDIRECT" not in _banner(tmp_path, ["regular"])


def test_the_transparent_banner_gives_no_proxy_setting_advice(tmp_path: Path) -> None:
    """A device with a proxy setting sends to the transparent listener itself, which refuses it."""
    shown = _banner(tmp_path, ["transparent"], listen_host="")
    assert "Wi-Fi proxy" not in shown and "curl -x" not in shown and "proxy:" not in shown
    assert "no proxy setting" in shown
    both = _banner(tmp_path, ["regular@8081", "transparent"], listen_host="")  # devices with a proxy setting use 8081
    assert "proxy:    http://<this machine's LAN address>:8081 (regular@8081)" in both and "Wi-Fi proxy" in both


def test_an_ipv4_only_transparent_listener_is_said_to_fail_redirected_ipv6(tmp_path: Path) -> None:
    shown = _banner(tmp_path, ["transparent"], listen_host="0.0.0.0")
    assert "TCP 0.0.0.0:8080 (IPv4 only)" in shown and "IPv6 the gateway redirects here finds no listener" in shown


def test_a_wireguard_only_banner_offers_no_tcp_proxy(tmp_path: Path) -> None:
    """Nothing listens on TCP in a wireguard-only run: `curl -x ...:8080` would meet a closed port."""
    shown = _banner(tmp_path, ["wireguard"], listen_host="0.0.0.0")
    assert "curl -x" not in shown and "proxy:" not in shown and "Wi-Fi proxy" not in shown
    assert "try:      on a device with the tunnel up, no proxy setting: curl --cacert" in shown
    assert "IPv4 and IPv6" in shown and "10.0.0.53" in shown and "IPv6 goes around tlsgate" in shown
    mixed = _banner(tmp_path, ["regular", "wireguard"], listen_host="0.0.0.0")
    assert "curl -x http://<this machine's LAN address>:8080" in mixed and "wireguard: UDP 0.0.0.0:51820" in mixed


def test_a_socks5_banner_offers_a_socks5_client(tmp_path: Path) -> None:
    shown = _banner(tmp_path, ["socks5"])
    assert "proxy:    socks5://127.0.0.1:8080 (socks5)" in shown and "curl --socks5-hostname 127.0.0.1:8080" in shown


def test_an_empty_listen_host_is_every_address_as_in_mitmproxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--listen-host ''` was taken for "not given" (loopback); it is mitmproxy's "every address", with the guard."""
    from tlsgate.app import runner

    seen: list[runner.RunConfig] = []
    monkeypatch.setattr(runner, "run_proxy", lambda config: seen.append(config) or 0)
    assert main(["run", "--listen-host", "", "--metrics-port", "-1", "--confdir", str(tmp_path)]) == 0
    assert main(["run", "--metrics-port", "-1", "--confdir", str(tmp_path)]) == 0
    given, default = seen
    assert given.listen_host == "" and default.listen_host == "127.0.0.1"
    options = runner.mitmproxy_options(given)
    assert options["listen_host"] == "" and options["block_global"] is True  # public clients stay refused
    shown = _banner(tmp_path, ["regular"], listen_host="")
    assert "proxy:    http://<this machine's LAN address>:8080" in shown and "clients from public addresses refused" in shown


def test_a_port_taken_in_either_family_is_found_before_start_for_every_address() -> None:
    import socket

    from tlsgate.app.runner import bind_error

    with socket.socket(socket.AF_INET6) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert bind_error("", port) is not None  # "" binds :: too, which [::1]:port blocks
        assert bind_error("0.0.0.0", port) is None  # IPv4 alone is free
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert bind_error("", taken.getsockname()[1]) is not None


# -- the console's advice after a refused server ---------------------------------------------------------


def test_mitmproxys_lazy_advice_is_replaced_by_advice_that_holds_under_tlsgate() -> None:
    fixed = corrected_advice(MITMPROXY_LAZY)
    assert "lazy`" not in fixed and "suppress early connections" not in fixed
    assert fixed.startswith("Unable to establish TLS connection with server (certificate verify failed).")
    assert EAGER_ADVICE.strip() in fixed
    assert corrected_advice("client connect") == "client connect"


def test_the_proxy_servers_log_line_is_corrected(gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    """UpstreamTls.load installed the filter on the logger mitmproxy's proxy server logs layer messages with."""
    with caplog.at_level(logging.INFO, logger="mitmproxy.proxy.server"):
        logging.getLogger("mitmproxy.proxy.server").info(MITMPROXY_LAZY)
    assert "connection_strategy=eager" in caplog.text and "`lazy` to suppress" not in caplog.text


def test_a_connect_error_page_carries_the_corrected_advice(gate: Gate) -> None:
    flow = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="api.test", port=443, path=b""))
    flow.response = http.Response.make(
        502,
        "Cannot connect to api.test:443: connection refused If you plan to redirect requests away from this server, "
        "consider setting `connection_strategy` to `lazy` to suppress early connections.",
    )
    gate.upstream.http_connect_error(flow)
    assert flow.response.text.startswith("Cannot connect to api.test:443: connection refused")
    assert "`lazy`" not in flow.response.text and "connection_strategy=eager" in flow.response.text
