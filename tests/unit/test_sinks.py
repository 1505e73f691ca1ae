"""Where verdicts go: redaction, the block page, findings and metrics. Pure, no proxy.

The redaction tests plant a distinctive secret and assert two things every time: the credential is
*named* (kind and name), and the secret's value appears nowhere in what comes out.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tlsgate.sinks import redact
from tlsgate.sinks.blockpage import Block, render, wants_json
from tlsgate.sinks.findings import SEVERITIES, Finding, FindingsLog
from tlsgate.sinks.metrics import Metrics
from tlsgate.sinks.redact import REDACTED, Credential

SECRET = "S3cr3tV4lue"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl"


def pairs(creds: list[Credential]) -> list[tuple[str, str]]:
    return [(c.kind, c.name) for c in creds]


def leaks(creds: list[Credential], *values: str) -> bool:
    text = json.dumps([c.as_dict() for c in creds]) + " ".join(str(c) for c in creds)
    return any(v in text for v in values)


# -- header credentials --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Authorization", f"Bearer {SECRET}")], [("authorization", "authorization: Bearer")]),
        ([("authorization", f"Basic {SECRET}")], [("authorization", "authorization: Basic")]),
        ([("Authorization", f'Digest username="u", response="{SECRET}"')], [("authorization", "authorization: Digest")]),
        ([("Proxy-Authorization", f"Basic {SECRET}")], [("authorization", "proxy-authorization: Basic")]),
        ([("Authorization", "AWS4-HMAC-SHA256 Credential=" + SECRET)], [("authorization", "authorization: AWS4-HMAC-SHA256")]),
        # A bare API key has no scheme: it is the secret, and must not be quoted as one.
        ([("Authorization", SECRET)], [("authorization", "authorization: no scheme")]),
        ([("Authorization", f"{SECRET}{SECRET}{SECRET} and-more")], [("authorization", "authorization: no scheme")]),
        ([("Authorization", "   ")], [("authorization", "authorization: empty")]),
        (
            [("Cookie", f"sid={SECRET}; theme=dark;  session = {SECRET}")],
            [("cookie", "sid"), ("cookie", "theme"), ("cookie", "session")],
        ),
        ([("X-API-Key", SECRET)], [("header", "x-api-key")]),
        ([("X-Auth-Token", SECRET), ("X-Access-Token", SECRET)], [("header", "x-auth-token"), ("header", "x-access-token")]),
        ([("X-Session-Id", SECRET), ("X-Client-Secret", SECRET)], [("header", "x-session-id"), ("header", "x-client-secret")]),
        ([("Accept", "text/html"), ("User-Agent", "app/1.0"), ("Content-Type", "application/json")], []),
    ],
)
def test_header_credentials_are_named_never_valued(headers: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    found = redact.header_credentials(headers)
    assert pairs(found) == expected
    assert not leaks(found, SECRET)


def test_credential_as_dict_and_str() -> None:
    cred = Credential("query", "token")
    assert cred.as_dict() == {"kind": "query", "name": "token"} and str(cred) == "query token"


# -- URL credentials -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"http://user:{SECRET}@api.test/login", [("userinfo", "user:password in URL")]),
        (f"http://api.test/x?token={SECRET}&page=2", [("query", "token")]),
        (
            f"http://api.test/x?API_KEY={SECRET}&apikey={SECRET}&access-key={SECRET}",
            [("query", "API_KEY"), ("query", "apikey"), ("query", "access-key")],
        ),
        (f"http://api.test/x?password=&sig={SECRET}", [("query", "password"), ("query", "sig")]),
        (f"http://api.test/cb?state={JWT}&code=1", [("query", "state"), ("query", "code")]),  # OAuth: both are secrets
        ("http://api.test/search?q=hello&page=2&monkey=1", []),  # "key" only counts as a whole word or suffix
    ],
)
def test_url_credentials(url: str, expected: list[tuple[str, str]]) -> None:
    found = redact.url_credentials(url)
    assert pairs(found) == expected
    assert not leaks(found, SECRET, JWT)


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "passwd",
        "pwd",
        "pass",
        "token",
        "access_token",
        "AccessToken",
        "id_token",
        "refresh_token",
        "api_key",
        "apiKey",
        "API_KEY",
        "apikey",
        "x-api-key",
        "access-key",
        "key",
        "sig",
        "signature",
        "sid",
        "session",
        "sessionid",
        "X-Session-Id",
        "JSESSIONID",
        "PHPSESSID",
        "auth",
        "x-auth-token",
        "authToken",
        "client_secret",
        "otp",
        "pin",
        "pin_code",
        "cvv",
        "code",
        "auth_code",
        "verification_code",
        "state",
        "jwt",
        "credentials",
        "sessionToken",
        "Ocp-Apim-Subscription-Key",
        "userpassword",
        "secret_key",
        "private_key",
        "hmac",
        "ticket",
    ],
)
def test_credential_names_are_credentials(name: str) -> None:
    assert redact.is_credential_name(name), redact.name_words(name)


@pytest.mark.parametrize(
    "name",
    [
        "authuser",
        "auth_type",
        "auth0Client",
        "authority",
        "author",
        "authenticated",
        "passport",
        "bypass",
        "footprint",
        "credit",
        "pagination_token",
        "NextToken",
        "nextPageToken",
        "pageToken",
        "syncToken",
        "continuationToken",
        "idempotency_key",
        "Idempotency-Key",
        "publicKey",
        "cache_key",
        "sort_key",
        "session_state",
        "token_type",
        "oauth_signature_method",
        "zip_code",
        "country_code",
        "ticket_id",
        "nonce",
        "code_challenge",
        "login_hint",
        "id_token_hint",
        "hd",
        "prompt",
        "scope",
        "client_info",
        "granted_scopes",
        "monkey",
        "keyboard",
        "device_token",
        "fcm_token",
        "x-request-id",
        "auth_provider",
        "authMethod",
        "spin",
        "x-signature-version",
    ],
)
def test_names_that_only_contain_a_credential_word_are_not_credentials(name: str) -> None:
    """Google's `authuser` (an account index) was a credential because `auth` matched anywhere in the name."""
    assert not redact.is_credential_name(name), redact.name_words(name)
    assert redact.url_credentials(f"https://accounts.example/cb?{name}=0") == []


def test_redact_url_keeps_the_url_readable_without_its_secrets() -> None:
    url = f"http://user:{SECRET}@api.test:8080/v1/login?token={SECRET}&state={JWT}&page=2#frag-{SECRET}"
    redacted = redact.redact_url(url)
    assert redacted == f"http://{REDACTED}@api.test:8080/v1/login?token={REDACTED}&state={REDACTED}&page=2"
    assert SECRET not in redacted and JWT not in redacted


def test_redact_url_without_query_or_userinfo_is_unchanged() -> None:
    assert redact.redact_url("http://api.test/path") == "http://api.test/path"
    assert redact.redact_url(f"http://api.test/x?Password={quote(SECRET + '&x=1')}") == f"http://api.test/x?Password={REDACTED}"


# -- body credentials ----------------------------------------------------------------------------------


def test_form_body() -> None:
    body = f"user=alice&password={SECRET}&remember=1&otp=123456".encode()
    found = redact.body_credentials("application/x-www-form-urlencoded; charset=utf-8", body)
    assert pairs(found) == [("form", "password"), ("form", "otp")]
    assert not leaks(found, SECRET, "123456")


def test_json_body_nested_and_in_lists() -> None:
    body = json.dumps(
        {
            "user": "alice",
            "password": SECRET,
            "device": {"id": 7, "auth": {"refresh_token": SECRET, "client_secret": SECRET}},
            "accounts": [{"pin_code": SECRET}, {"name": "x"}],
            "session": {"nested": "objects are walked, not named"},
        }
    ).encode()
    found = redact.body_credentials("application/json", body)
    assert pairs(found) == [("json", "password"), ("json", "refresh_token"), ("json", "client_secret"), ("json", "pin_code")]
    assert not leaks(found, SECRET)


def test_json_body_with_a_vendor_type_and_depth_limit() -> None:
    deep = {"a": {"b": {"c": {"d": {"e": {"password": SECRET}}}}}}  # beyond the depth bound: not read
    assert redact.body_credentials("application/vnd.api+json", json.dumps({"token": SECRET}).encode()) == [
        Credential("json", "token")
    ]
    assert redact.body_credentials("application/json", json.dumps(deep).encode()) == []


def test_multipart_body_names_secret_fields() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="user"\r\n\r\nalice\r\n'
        b'--b\r\nContent-Disposition: form-data; name="password"\r\n\r\n' + SECRET.encode() + b"\r\n"
        b'--b\r\nContent-Disposition: form-data; name="avatar"; filename="a.png"\r\n\r\n\x89PNG\r\n--b--\r\n'
    )
    found = redact.body_credentials("multipart/form-data; boundary=b", body)
    assert pairs(found) == [("form", "password")]
    assert not leaks(found, SECRET)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{not json"),
        ("application/json", b"\xff\xfe\x00garbage"),
        ("application/json", b"[" * 100_000),  # hostile nesting: RecursionError must not escape
        ("application/json", b'{"a":' * 50_000),
        ("text/plain", f"password={SECRET}".encode()),  # bodies of other types are not read
        ("", f"password={SECRET}".encode()),
        ("application/x-www-form-urlencoded", b"\xff\xfe=\x00&&=="),
        ("multipart/form-data", b'name="\xff\xfe"'),
    ],
)
def test_hostile_or_unread_bodies_name_nothing_and_never_raise(content_type: str, body: bytes) -> None:
    assert redact.body_credentials(content_type, body) == []


def test_only_the_first_64k_of_a_body_is_read() -> None:
    body = b"a=" + b"x" * 70_000 + b"&password=" + SECRET.encode()
    assert redact.body_credentials("application/x-www-form-urlencoded", body) == []


def test_dedupe_keeps_first_of_each_kind_and_name_in_order() -> None:
    creds = [Credential("query", "token"), Credential("json", "token"), Credential("query", "token"), Credential("cookie", "sid")]
    assert redact.dedupe(creds) == [Credential("query", "token"), Credential("json", "token"), Credential("cookie", "sid")]
    assert redact.dedupe([]) == []


@settings(max_examples=150, deadline=None)
@given(secret=st.text(min_size=6, max_size=40))
def test_a_secret_never_survives_redaction(secret: str) -> None:
    expected_url = f"http://api.test/login?page=1&token={REDACTED}"
    names = [("json", "password"), ("json", "password")]
    assume(secret not in expected_url and secret not in json.dumps(names))  # a "secret" that is the template itself
    redacted = redact.redact_url(f"http://api.test/login?page=1&token={quote(secret, safe='')}")
    assert redacted == expected_url
    assert secret not in redacted
    body = json.dumps({"user": "u", "password": secret, "profile": {"password": secret}}).encode()
    found = redact.body_credentials("application/json", body)
    assert pairs(found) == names
    assert not leaks(found, secret)


# -- block page ----------------------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>"


def hostile_block() -> Block:
    return Block(
        check="cleartext",
        host=f"{HOSTILE}.test",
        rule="p.yaml:6",
        reason=f"plain http:// request {HOSTILE}",
        remedy=f"use https:// {HOSTILE}",
        evidence={"url": f"http://x.test/?q={HOSTILE}", HOSTILE: "key too", "credentials": [{"kind": "query", "name": "token"}]},
    )


def test_block_page_html_escapes_everything_it_shows() -> None:
    body, content_type = render(hostile_block(), "text/html,*/*")
    page = body.decode()
    assert content_type == "text/html; charset=utf-8"
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 5  # host, reason, remedy, evidence key and value
    assert "<h1>Blocked by tlsgate: cleartext</h1>" in page
    assert "<tr><th>policy rule</th><td>p.yaml:6</td></tr>" in page


def test_block_page_as_json_when_accept_asks_for_it() -> None:
    for accept in ("application/json", "application/problem+json", "Application/JSON;q=0.9, text/html;q=0.8"):
        body, content_type = render(hostile_block(), accept)
        assert content_type == "application/json"
        data = json.loads(body)
        assert data == {
            "blocked_by": "tlsgate",
            "check": "cleartext",
            "host": f"{HOSTILE}.test",
            "rule": "p.yaml:6",
            "reason": f"plain http:// request {HOSTILE}",
            "remedy": f"use https:// {HOSTILE}",
            "evidence": hostile_block().evidence,
        }
    assert not wants_json("text/html") and not wants_json("")


def test_block_page_survives_text_that_is_not_utf8() -> None:
    # mitmproxy hands over undecodable request bytes (path, Host, User-Agent) as surrogate escapes.
    block = Block("cleartext", "h\udcff.test", "p.yaml:2", "r", "m", {"url": "http://h/\udcff\udcfe", "user_agent": "\udc80"})
    body, _ = render(block)
    assert b"\\udcff" in body and b"\\udc80" in body
    assert json.loads(render(block, "application/json")[0])["evidence"]["url"] == "http://h/\udcff\udcfe"


def test_block_headers_are_machine_readable() -> None:
    assert hostile_block().headers() == {
        "X-Tlsgate-Check": "cleartext",
        "X-Tlsgate-Rule": "p.yaml:6",
        "Cache-Control": "no-store",
    }


# -- findings ------------------------------------------------------------------------------------------


def finding(**overrides) -> Finding:
    values = dict(
        check="pin",
        action="blocked",
        severity="critical",
        host="api.test",
        port=443,
        client="10.0.0.5:51234",
        rule="p.yaml:9",
        detail="no certificate matches pin set 'backend'",
        remedy="add a pin",
        evidence={"kind": "pin_mismatch", "expected": ["sha256/x"]},
    )
    values.update(overrides)
    return Finding(**values)


def test_finding_rejects_an_unknown_severity() -> None:
    with pytest.raises(ValueError, match="severity 'urgent' is not one of"):
        finding(severity="urgent")
    with pytest.raises(ValueError):
        finding(severity="HIGH")  # the words are lower case, as the metrics label them
    assert [finding(severity=s).severity for s in SEVERITIES] == list(SEVERITIES)


def test_finding_json_round_trip() -> None:
    original = finding(device="pixel-7")
    line = original.as_json()
    assert "\n" not in line
    data = json.loads(line)
    assert data == written(original) and "occurrences" not in data  # only on follow-up lines
    assert Finding(**data) == original
    assert list(data) == [
        "check",
        "action",
        "severity",
        "host",
        "port",
        "client",
        "rule",
        "detail",
        "remedy",
        "device",
        "evidence",
        "time",
    ]


def test_finding_console_line() -> None:
    assert finding().console_line() == (
        "[CRITICAL] blocked pin api.test:443 from 10.0.0.5:51234 (rule p.yaml:9): no certificate matches pin set 'backend'"
    )
    assert (
        finding(device="pixel-7", port=None, client=None)
        .console_line()
        .startswith("[CRITICAL] blocked pin api.test from pixel-7 ")
    )
    assert " from ? " in finding(client=None).console_line()


def written(item: Finding) -> dict[str, object]:
    """A finding as its line holds it: `occurrences` appears on follow-up lines only (`Repeats`), `mastg` only on a
    finding that evidences an OWASP MASTG test."""
    return {key: value for key, value in asdict(item).items() if key not in ("occurrences", "mastg") or value is not None}


def test_findings_log_writes_owner_only_json_lines_and_fans_out(tmp_path) -> None:
    path = tmp_path / "sub" / "findings.jsonl"
    log = FindingsLog(path)
    heard: list[Finding] = []
    log.subscribe(heard.append)
    first, second = finding(), finding(check="cleartext", severity="high")
    log.record(first)
    log.record(second)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [written(first), written(second)]
    assert heard == [first, second]
    log.close()
    log.record(first)  # closed: listeners still hear it, the file does not grow
    assert len(path.read_text().splitlines()) == 2 and len(heard) == 3


def test_findings_log_appends_across_opens_and_works_without_a_file(tmp_path) -> None:
    path = tmp_path / "f.jsonl"
    for _ in range(2):
        log = FindingsLog(path)
        log.record(finding())
        log.close()
    assert len(path.read_text().splitlines()) == 2
    console_only = FindingsLog()
    heard: list[Finding] = []
    console_only.subscribe(heard.append)
    console_only.record(finding())
    assert console_only.path is None and len(heard) == 1


# -- metrics -------------------------------------------------------------------------------------------


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_findings_metric_labels_devices_by_policy_name_or_unnamed() -> None:
    metrics = Metrics("12.2.3")
    metrics.on_finding(finding())
    metrics.on_finding(finding(device="pixel-7"))
    metrics.on_finding(finding(device="pixel-7"))
    labels = {"severity": "critical", "check": "pin", "action": "blocked"}
    assert sample(metrics, "tlsgate_findings_total", **labels, device="unnamed") == 1
    assert sample(metrics, "tlsgate_findings_total", **labels, device="pixel-7") == 2
    assert sample(metrics, "tlsgate_build_info", version=__import__("tlsgate").__version__, mitmproxy_version="12.2.3") == 1


def test_certificate_expiry_only_for_host_patterns_the_policy_names() -> None:
    metrics = Metrics()
    metrics.certificate_expiry("api.test", [200.0])
    metrics.certificate_expiry(None, [100.0])
    assert b"tlsgate_certificate_expiry_timestamp_seconds{" not in metrics.exposition()
    metrics.on_reload("ok", 2, ["api.test", "*.cdn.test"])
    metrics.certificate_expiry("api.test", [300.0, 200.0, 400.0])
    metrics.certificate_expiry("*.cdn.test", [])  # no chain: nothing to say
    metrics.certificate_expiry("random.test", [100.0])  # not a policy pattern: would be an unbounded label
    assert sample(metrics, "tlsgate_certificate_expiry_timestamp_seconds", host="api.test") == 200.0
    assert sample(metrics, "tlsgate_certificate_expiry_timestamp_seconds", host="*.cdn.test") is None
    assert sample(metrics, "tlsgate_certificate_expiry_timestamp_seconds", host="random.test") is None
    metrics.on_reload("ok", 1, ["*.cdn.test"])  # api.test's rule removed: its series goes too
    assert sample(metrics, "tlsgate_certificate_expiry_timestamp_seconds", host="api.test") is None


def test_reload_and_request_counters() -> None:
    metrics = Metrics()
    assert sample(metrics, "tlsgate_policy_reloads_total", result="failed") == 0  # present from the start
    metrics.on_reload("ok", 5)
    metrics.on_reload("failed", None)
    assert sample(metrics, "tlsgate_policy_reloads_total", result="ok") == 1
    assert sample(metrics, "tlsgate_policy_reloads_total", result="failed") == 1
    assert sample(metrics, "tlsgate_policy_rules") == 5  # a failed load keeps the count in force
    metrics.request("allowed", None)
    metrics.request("blocked", "cleartext")
    assert sample(metrics, "tlsgate_requests_total", decision="allowed", check="none", transport="tcp") == 1
    assert sample(metrics, "tlsgate_requests_total", decision="blocked", check="cleartext", transport="tcp") == 1
    metrics.handshake("server", False, None, None)
    metrics.pin_check("mismatch")
    assert (
        sample(
            metrics, "tlsgate_tls_handshakes_total", side="server", result="failed", version="none", suite="none", transport="tcp"
        )
        == 1
    )
    assert sample(metrics, "tlsgate_pin_checks_total", result="mismatch") == 1
    assert sample(metrics, "tlsgate_pin_checks_total", result="match") == 0


def test_console_filter_escapes_whatever_a_record_carries() -> None:
    import logging

    from tlsgate.addons.logsafety import EscapeControls

    record = logging.LogRecord(
        "mitmproxy.proxy.server", logging.INFO, __file__, 1, "for %s (%s)", ("a\n[CRITICAL] x", "\ud800\x1b"), None
    )
    assert EscapeControls().filter(record) is True
    assert record.getMessage() == "for a\\x0a[CRITICAL] x (\\ud800\\x1b)"
    broken = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("not a number",), None)
    assert EscapeControls().filter(broken) and "\n" not in broken.getMessage()


def test_a_requests_credentials_come_from_headers_url_and_body_each_named_once() -> None:
    """One function names what a request carries, for the cleartext finding and the accepted-probe finding alike."""
    headers = [("Authorization", "Bearer abc.def"), ("Content-Type", "application/x-www-form-urlencoded")]
    body = b"username=a&password=SECRET"
    found = redact.request_credentials(headers, "http://u:p@api.test/login?api_key=SECRET&password=x", headers[1][1], body)
    named = [(c.kind, c.name) for c in found]
    assert ("authorization", "authorization: Bearer") in named and ("userinfo", "user:password in URL") in named
    assert ("query", "api_key") in named and ("form", "password") in named
    assert len(named) == len(set(named))  # each kind and name once
    assert "SECRET" not in repr(found) and "abc.def" not in repr(found)
    without_body = redact.request_credentials(headers, "http://api.test/login", "", None)
    assert [(c.kind, c.name) for c in without_body] == [("authorization", "authorization: Bearer")]
