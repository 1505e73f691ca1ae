"""What scanning one body may cost, whatever `payload.max_bytes` allows: fixed counts of fields, candidates and
evidence items, memory proportional to the body, steps that hand the event loop back, and multipart field names
read from the Content-Disposition parameters (never from inside a filename)."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from tests.addonkit import wired
from tlsgate.addons.payload import HELD_LIMIT, PayloadInspector, StreamWindow
from tlsgate.checks.payload import PayloadFacts, judge_payload
from tlsgate.payload.bounds import MAX_CANDIDATES, MAX_ITEMS, SEGMENT, WINDOW, Budget
from tlsgate.payload.fields import MAX_FIELDS, body_field_steps, body_fields
from tlsgate.payload.identifiers import forms_of
from tlsgate.payload.scan import scan, scan_steps
from tlsgate.policy import load_texts
from tlsgate.sinks import redact
from tlsgate.sinks.findings import MAX_LINE, Finding, bounded
from tlsgate.tls import multipart

STRIPE = "sk" + "_live_" + "51Hx9qLyjWDarjtT1zdp7dcQz"  # built so no scanner mistakes this file for a leak
AWS = "AKIA" + "ABCDEFGHIJKLMNOP"
MiB = 1 << 20


def scan_of(ctype: str, body: bytes, **kw: Any) -> Any:
    budget = Budget()
    return scan(body_field_steps(ctype, body, True, budget), host="h", namer=".".join,
                budget=budget, **kw)  # fmt: skip


# -- multipart ----------------------------------------------------------------------------------------


def part(disposition: str, value: bytes = b"v", extra: str = "") -> bytes:
    return f"--XX\r\n{extra}Content-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ('form-data; filename="token"; name="upload"', "upload"),  # the issue's case: filename first
        ('form-data; name="upload"; filename="token"', "upload"),
        ('FORM-DATA; FILENAME="token"; NAME="upload"', "upload"),  # parameter names in any case
        ('form-data; filename="a; name=\\"password\\""; name="avatar"', "avatar"),  # ; and escaped quotes inside
        ('form-data; name="pass\\"word"', 'pass"word'),
        ("form-data; name=plain", "plain"),  # a token, unquoted
        ("form-data; filename*=UTF-8''token; name*=UTF-8''%E2%82%AC", "\u20ac"),  # RFC 2231 values
        ("form-data; filename=token", None),  # no name at all
    ],
)
def test_multipart_field_names_come_from_the_name_parameter(disposition: str, name: str | None) -> None:
    body = part(disposition) + b"--XX--\r\n"
    assert [p.name for p in multipart.parts("multipart/form-data; boundary=XX", body, 8)] == [name]
    fields = body_fields("multipart/form-data; boundary=XX", body)
    assert [f.path for f in fields] == [("form", name) if name is not None else ("body",)]


def test_a_filename_is_never_a_credential_and_a_secret_name_still_is() -> None:
    """The cleartext check named `token` a credential for `filename="token"`: a false finding."""
    body = part('form-data; filename="token"; name="upload"') + part('form-data; name="password"', b"x") + b"--XX--\r\n"
    assert redact.body_credentials("multipart/form-data; boundary=XX", body) == [redact.Credential("form", "password")]


def test_multipart_values_keep_their_line_breaks_and_headers_in_any_order() -> None:
    body = part('form-data; name="note"', b"line one\r\nline two", extra="Content-Type: text/plain\r\n") + b"--XX--\r\n"
    (field,) = body_fields('multipart/form-data; boundary="XX"', body)
    assert (field.path, field.text) == (("form", "note"), "line one\r\nline two")
    quoted = 'multipart/form-data; charset=utf-8; boundary="a;b"'
    assert multipart.boundary(quoted) == b"a;b"


def test_multipart_parts_and_part_headers_are_bounded_and_what_is_skipped_is_still_searched() -> None:
    many = part('form-data; name="a"') * 2000 + part('form-data; name="late"', STRIPE.encode()) + b"--XX--\r\n"
    fields = body_fields("multipart/form-data; boundary=XX", many)
    assert len([f for f in fields if f.path == ("form", "a")]) == MAX_FIELDS
    found = scan_of("multipart/form-data; boundary=XX", many)
    assert [k["format"] for k in found.keys] == ["stripe_secret_key"] and "fields" in found.capped
    huge_head = (
        b'--XX\r\nContent-Disposition: form-data; name="a"; x="' + b"y" * 20000 + b'"\r\n\r\n' + AWS.encode() + b"\r\n--XX--"
    )
    assert [p.head_read for p in multipart.parts("multipart/form-data; boundary=XX", huge_head, 8)] == [False]
    assert [k["format"] for k in scan_of("multipart/form-data; boundary=XX", huge_head).keys] == ["aws_access_key_id"]


# -- fixed work per body ------------------------------------------------------------------------------


def test_key_shaped_tokens_cost_a_fixed_number_of_candidates_and_the_evidence_is_small_from_the_start() -> None:
    body = (AWS + " ").encode() * (2 * MiB // 21)  # about 100,000 keys
    budget = Budget()
    found = scan(body_field_steps("text/plain", body, True, budget), host="h", namer=".".join,
                 budget=budget)  # fmt: skip
    assert len(found.keys) == MAX_ITEMS and {"keys", "candidates"} <= set(found.capped)
    assert budget.candidates == 0  # no more than MAX_CANDIDATES places were tried
    policy = load_texts([("p.yaml", "version: 1\ndefaults:\n  payload: report\n")])
    (issue,) = judge_payload(PayloadFacts(method="POST", url="https://h/", keys=found.keys, capped=found.capped),
                             policy.match("h"))  # fmt: skip
    assert issue.evidence["capped"] == found.capped
    finding = Finding("payload", "reported", issue.severity, "h", 443, None, "p.yaml:3", issue.detail, evidence=issue.evidence)
    line, cut = bounded(finding)
    assert not cut and len(line) < MAX_LINE // 2  # never built large and then cut


def test_jwt_shapes_and_trigger_heavy_text_are_linear() -> None:
    for text in ("eyJ" * 400_000, "eyJzzzz.a.b " * 100_000, "x" * MiB, "-----BEGIN " * 90_000):
        budget = Budget()
        found = scan(iter([None, *body_fields("text/plain", text.encode())]), host="h", namer=".".join,
                     budget=budget, forms=forms_of("email", "a.person@example.com"))  # fmt: skip
        assert found.keys == [] and found.unsigned_jwts == []
        assert budget.candidates >= 0 and MAX_CANDIDATES - budget.candidates <= MAX_CANDIDATES


def test_form_fields_past_the_cap_are_searched_as_text_not_dropped() -> None:
    body = "&".join([f"f{i}=v" for i in range(1500)] + [f"late={STRIPE}"]).encode()
    fields = body_fields("application/x-www-form-urlencoded", body)
    assert len([f for f in fields if f.path[0] == "form"]) == MAX_FIELDS and fields[-1].path == ("body",)
    found = scan_of("application/x-www-form-urlencoded", body)
    assert [(k["format"], k["field"]) for k in found.keys] == [("stripe_secret_key", "body")] and "fields" in found.capped


def test_a_body_over_one_segment_is_judged_in_segments_and_each_step_is_one_window() -> None:
    body = (b"word " * 200 + b"\n") * (8 * MiB // 1001)
    budget = Budget()
    steps = scan_steps(body_field_steps("text/plain", body, True, budget), host="h", namer=".".join,
                       budget=budget, forms=forms_of("email", "a.person@example.com"))  # fmt: skip
    pauses = 0
    try:
        while True:
            next(steps)
            pauses += 1
    except StopIteration:
        pass
    assert pauses >= len(body) // WINDOW  # at least one pause per window searched
    segments = [f for f in body_fields("text/plain", body) if f.path == ("body",)]
    assert len(segments) <= len(body) // SEGMENT + 2 and all(len(f.text) <= SEGMENT for f in segments)
    assert all(f.text.endswith("word") and f.text.startswith("word") for f in segments)  # cut at a line break


@pytest.mark.parametrize(
    ("ctype", "unit", "width"),
    [
        ("application/x-www-form-urlencoded", b"k1=v2345&", 1),  # the issue's 1.5M form fields (at 16 MiB)
        ("text/plain", (AWS + " ").encode(), 1),
        ("application/json", b'{"a":[1,2,3],"b":"c"},', 1),
        ("text/plain", b"\xed\xa0\x80\xf0\x9f\x98\x80ab\xff", 4),  # invalid UTF-8, astral: 4 bytes a character
    ],
)
def test_scanning_memory_grows_with_the_body_not_with_its_tokens(ctype: str, unit: bytes, width: int) -> None:
    body = unit * (4 * MiB // len(unit))
    tracemalloc.start()
    try:
        scan_of(ctype, body, forms=forms_of("email", "a.person@example.com"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a segment's text and its copies (lower-cased, decoded), never the whole body's text or a list per token
    assert peak < len(body) + 4 * width * SEGMENT


# -- the add-on: a long scan shares the event loop ----------------------------------------------------

POLICY = """\
version: 1
defaults:
  mode: enforce
  payload: {ecb: report, secrets: report, identifiers: report, max_bytes: 16777216}
devices:
  127.0.0.1: pixel-7
identifiers:
  pixel-7:
    email: Tester.Person@example.com
rules:
  - hosts: block.test
    payload: {secrets: block, max_bytes: 16777216}
"""


@pytest.fixture
def inspector(tmp_path: Path) -> Iterator[tuple[PayloadInspector, Path]]:
    with wired(POLICY, tmp_path) as kit:
        yield kit.get(PayloadInspector), kit.findings


def upload(body: bytes, ctype: str = "text/plain", length: int | None = None, host: str = "api.test") -> http.HTTPFlow:
    size = str(len(body) if length is None else length).encode()
    headers = http.Headers([(b"host", host.encode()), (b"content-type", ctype.encode()), (b"content-length", size)])
    flow = tflow.tflow(req=tutils.treq(host=host, port=443, scheme=b"https", path=b"/up", headers=headers, content=body))
    flow.client_conn.peername = ("127.0.0.1", 50000)
    return flow


def test_a_long_scan_lets_other_tasks_run_and_still_decides_before_the_request_moves_on(
    inspector: tuple[PayloadInspector, Path],
) -> None:
    addon, findings = inspector
    body = ((AWS + " ") * 2000 + "\n").encode() * 200  # 8 MiB: hundreds of steps
    flow = upload(body)
    pending = addon.request(flow)
    assert asyncio.iscoroutine(pending)  # too long to judge at once: handed to mitmproxy to await
    order: list[str] = []

    async def other_device() -> None:
        while "scanned" not in order:
            order.append("other")
            await asyncio.sleep(0)

    async def both() -> None:
        async def scanned() -> None:
            await pending
            order.append("scanned")

        await asyncio.gather(scanned(), other_device())

    asyncio.run(both())
    assert order.index("scanned") > 10 and order.count("other") > 10  # the loop ran other work while it scanned
    (finding,) = [json.loads(line) for line in findings.read_text().splitlines()]
    assert finding["evidence"]["kind"] == "provider_key" and len(finding["evidence"]["keys"]) == MAX_ITEMS


def test_held_windows_share_a_memory_limit_and_a_cut_window_says_so(inspector: tuple[PayloadInspector, Path]) -> None:
    addon, findings = inspector
    flows = [upload(b"", length=16 * MiB) for _ in range(HELD_LIMIT // (32 * MiB) + 2)]
    for flow in flows:
        flow.request.stream = True  # what mitmproxy sets for a body above stream_large_bodies
        addon.requestheaders(flow)
        assert isinstance(flow.request.stream, StreamWindow) and addon.holdings.held == 0  # nothing held yet
    for flow in flows[:-1]:
        assert flow.request.stream(b"x") == []  # the first chunk opens the window (raw and decoded: 2 x max_bytes)
    limits = [flow.request.stream.window.limit for flow in flows[:-1] if isinstance(flow.request.stream, StreamWindow)]
    assert limits == [16 * MiB, 16 * MiB, 65536]  # past the budget: the default 64 KiB
    assert addon.holdings.held == HELD_LIMIT + 2 * 65536
    last = flows[-1]
    window = last.request.stream
    assert isinstance(window, StreamWindow)
    body = (STRIPE + " ").encode() * 10_000
    assert b"".join(window(body)) == body  # report mode: judged once 64 KiB is held, then passed on whole
    finding = json.loads(findings.read_text().splitlines()[-1])
    assert "held_bytes" in finding["evidence"]["capped"] and finding["evidence"]["inspected_bytes"] == 65536
    assert "streamed" not in finding["evidence"]  # held until judged: refusable, not `streamed`
    assert addon.holdings.held == HELD_LIMIT + 2 * 65536  # the last window's share released once judged


def test_a_block_decided_after_a_sliced_scan_still_refuses_the_request(inspector: tuple[PayloadInspector, Path]) -> None:
    addon, findings = inspector
    body = b"x " * (4 * MiB) + STRIPE.encode()  # the key sits at the end of 8 MiB
    flow = upload(body, host="block.test")
    pending = addon.request(flow)
    assert asyncio.iscoroutine(pending) and flow.response is None  # held while it is scanned
    asyncio.run(pending)
    assert flow.response is not None and flow.response.status_code == 403
    (finding,) = [json.loads(line) for line in findings.read_text().splitlines()]
    assert finding["action"] == "blocked" and finding["evidence"]["keys"][0]["format"] == "stripe_secret_key"
