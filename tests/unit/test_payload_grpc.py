"""gRPC and gRPC-Web bodies walked without a schema, hostile framing and protobuf fuzzed, and the gRPC status a
blocked call gets: pure functions first, then `PayloadInspector` with mitmproxy test flows."""

from __future__ import annotations

import base64
import gzip
import inspect
import json
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from tests.addonkit import wired
from tests.payload_corpus import ecb
from tests.seeded import urandom
from tlsgate.addons.payload import GrpcCall, PayloadInspector
from tlsgate.payload import grpc
from tlsgate.payload.bounds import SEGMENT, Budget
from tlsgate.payload.fields import MAX_FIELDS, body_field_steps, body_fields
from tlsgate.payload.scan import scan
from tlsgate.sinks.blockpage import Block, grpc_answer, percent_encode
from tlsgate.tls.grpc_calls import grpc_call

STRIPE = "sk" + "_live_" + "51Hx9qLyjWDarjtT1zdp7dcQz"
GRPC = "application/grpc"


def leaves(ctype: str, body: bytes, encoding: str = "", complete: bool = True) -> dict[str, str | bytes]:
    return {
        ".".join(f.path): (f.raw if f.raw is not None else f.text) for f in body_fields(ctype, body, complete, None, encoding)
    }


def listen_request() -> bytes:
    """A Firestore-like ListenRequest: database, add_target{query{parent, structured_query{from{collection_id}}}}."""
    query = grpc.encode(
        [(1, "projects/demo/databases/(default)/documents"), (2, grpc.encode([(2, grpc.encode([(2, "rooms")]))]))]
    )
    return grpc.encode([(1, "projects/demo/databases/(default)"), (2, grpc.encode([(2, query), (5, 7)]))])


# -- the walk ----------------------------------------------------------------------------------------


def test_fields_of_a_grpc_call_are_paths_of_field_numbers_strings_bytes_and_numbers() -> None:
    cipher = urandom(48)
    message = grpc.encode([(1, "user-42"), (2, grpc.encode([(1, 1732000000), (3, cipher), (4, grpc.encode([(1, STRIPE)]))]))])
    found = leaves(GRPC, grpc.frame(message) + grpc.frame(listen_request()))
    assert found["grpc[0].1"] == "user-42"
    assert found["grpc[0].2.1"] == "1732000000"
    assert found["grpc[0].2.3"] == cipher  # bytes stay bytes: judged as ciphertext, not as text
    assert found["grpc[0].2.4.1"] == STRIPE
    assert found["grpc[1].2.2.2.2.2"] == "rooms"
    assert found["grpc[1].2.5"] == "7"


def test_fixed_width_numbers_and_text_with_line_breaks_are_read_and_groups_are_not_nested() -> None:
    message = bytes([0x0D]) + struct.pack("<I", 7) + bytes([0x11]) + struct.pack("<Q", 2**40)
    message += grpc.encode([(3, "line one\nline two"), (4, bytes([0x0B, 0x08, 0x01, 0x0C]))])  # a group: bytes
    found = leaves(GRPC, grpc.frame(message))
    assert found["grpc[0].1"] == "7" and found["grpc[0].2"] == str(2**40)
    assert found["grpc[0].3"] == "line one\nline two"
    assert found["grpc[0].4"] == bytes([0x0B, 0x08, 0x01, 0x0C])


def test_compressed_messages_are_inflated_within_the_limit_and_a_bomb_stops_there() -> None:
    message = grpc.encode([(1, grpc.encode([(2, STRIPE)]))])
    assert leaves(GRPC, grpc.frame(gzip.compress(message), compressed=True), "gzip")["grpc[0].1.2"] == STRIPE
    assert leaves(GRPC, grpc.frame(zlib.compress(message), compressed=True), "deflate")["grpc[0].1.2"] == STRIPE
    bomb = gzip.compress(grpc.encode([(1, b"\0" * (64 << 20))]))  # 64 MiB of zeros in 64 KiB
    budget = Budget()
    fields = [f for f in body_field_steps(GRPC, grpc.frame(bomb, compressed=True), True, budget, "gzip", 65536) if f]
    assert sum(len(f.raw or f.text) for f in fields) <= 65536
    assert "grpc_inflated" in budget.capped
    # a compressed flag with an encoding tlsgate cannot undo: the message is judged as the bytes it is
    assert leaves(GRPC, grpc.frame(b"\x01\x02garbage", compressed=True), "snappy")["grpc[0]"] == b"\x01\x02garbage"


def test_grpc_web_and_its_base64_text_form_and_trailers_frames() -> None:
    body = grpc.frame(grpc.encode([(1, STRIPE)])) + grpc.frame(b"grpc-status:0\r\n", trailers=True)
    assert leaves("application/grpc-web+proto", body) == {"grpc[0].1": STRIPE, "grpc[1]": "grpc-status:0"}
    # nothing hides in or behind a trailers frame: a request has none, so it is read like any message
    hidden = grpc.frame(f"x-key:{STRIPE}".encode(), trailers=True) + grpc.frame(grpc.encode([(1, STRIPE)]))
    found = scan(body_fields("application/grpc-web+proto", hidden), host="api.test", namer=".".join)
    assert {k["field"] for k in found.keys} == {"grpc[0]", "grpc[0].run0", "grpc[1].1"}
    text = base64.b64encode(grpc.frame(grpc.encode([(1, STRIPE)]))) + base64.b64encode(grpc.frame(grpc.encode([(2, "x")])))
    assert leaves("application/grpc-web-text", text) == {"grpc[0].1": STRIPE, "grpc[1].2": "x"}


def test_bodies_that_are_not_grpc_framing_are_judged_as_bytes() -> None:
    for body in (b"hello world, not framed", b"\x00\x00\x00\x00\x10short", b"\x42\x00\x00\x00\x01x"):
        assert set(leaves(GRPC, body)) <= {"body", "body.bytes"}, body
    # a gRPC JSON codec, or anything else inside a well-framed message: its text is searched
    found = leaves("application/grpc+json", grpc.frame(json.dumps({"key": STRIPE}).encode()))
    assert STRIPE in str(found["grpc[0]"])


def test_a_message_cut_at_the_limit_keeps_what_parsed_and_the_rest_as_a_cut_piece() -> None:
    body = grpc.frame(grpc.encode([(1, "first"), (2, urandom(4000))]))[:1000]
    fields = body_fields(GRPC, body, complete=False)
    assert [(".".join(f.path), f.cut) for f in fields] == [("grpc[0].1", False), ("grpc[0].rest", True)]
    assert body_fields(GRPC, body, complete=True)[0].path == ("body",)  # whole and short: not gRPC framing


def test_detectors_work_on_grpc_fields_as_on_json() -> None:
    cipher = ecb(b"mysecretkey12345", json.dumps({"events": [{"screen": "home", "n": i % 2} for i in range(12)]}).encode())
    body = grpc.frame(grpc.encode([(1, grpc.encode([(7, cipher)])), (2, base64.b64encode(cipher).decode()), (3, STRIPE)]))
    found = scan(body_fields(GRPC, body), host="api.test", namer=".".join)
    assert {item["field"] for item in found.ecb} == {"grpc[0].1.7", "grpc[0].2"}
    assert [(k["format"], k["field"]) for k in found.keys] == [("stripe_secret_key", "grpc[0].3")]


# -- hostile input -------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def nesting_bomb(depth: int) -> bytes:
    inner = grpc.encode([(1, "core")])
    for _ in range(depth):
        inner = grpc.encode([(1, inner)])
    return inner


def test_hostile_framing_and_protobuf_cost_a_bounded_walk() -> None:
    budget = Budget()
    deep = [f for f in body_field_steps(GRPC, grpc.frame(nesting_bomb(5000)), True, budget) if f]
    assert len(deep) == 1 and len(deep[0].path) == grpc.MAX_DEPTH + 1 and "grpc_depth" in budget.capped
    # 2^32 - 1 bytes announced, 10 sent: not framing in a whole body, a cut message in a cut one
    huge = b"\x00\xff\xff\xff\xff" + b"\x08\x01" * 5
    assert {f.path[0] for f in body_fields(GRPC, huge)} == {"body"}
    assert [f.path for f in body_fields(GRPC, huge, complete=False)] == [("grpc[0]", "1")] * 5
    # varints past 10 bytes or 2^64, and length prefixes past the data, end the parse
    assert grpc.parse(b"\x08" + b"\xff" * 11, grpc.Counter(), strict=True) is None
    assert grpc.parse(b"\x08" + b"\xff" * 9 + b"\x7f", grpc.Counter(), strict=True) is None
    assert grpc.parse(b"\x0a" + _varint(2**40) + b"x", grpc.Counter(), strict=True) is None
    # a million one-byte messages, a million tiny fields: the counts stop and say so
    many = grpc.frame(b"\x08\x01") * 20000
    budget = Budget()
    fields = [f for f in body_field_steps(GRPC, many, True, budget) if f]
    assert len(fields) <= MAX_FIELDS + 1 and {"grpc_messages", "fields"} <= budget.capped
    budget = Budget()
    flat = grpc.frame(b"\x08\x01" * 100000)
    assert len([f for f in body_field_steps(GRPC, flat, True, budget) if f]) <= MAX_FIELDS + 1
    assert budget.capped & {"fields", "grpc_fields"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.builds(grpc.frame, st.binary(max_size=64)),
            st.builds(lambda d: grpc.frame(nesting_bomb(d)), st.integers(0, 40)),
            st.builds(lambda n: b"\x00" + n.to_bytes(4, "big"), st.integers(0, 2**32 - 1)),
            st.builds(lambda b: grpc.frame(gzip.compress(b), compressed=True), st.binary(max_size=64)),
            st.builds(lambda n: b"\x0a" + _varint(n), st.integers(0, 2**70)),
        ),
        max_size=8,
    ),
    st.sampled_from(["application/grpc", "application/grpc-web+proto", "application/grpc-web-text"]),
    st.sampled_from(["", "gzip", "deflate", "identity", "snappy"]),
    st.booleans(),
)
def test_fuzzed_bodies_never_raise_and_stay_within_their_bounds(
    parts: list[bytes], ctype: str, encoding: str, whole: bool
) -> None:
    body = b"".join(parts)
    if ctype.endswith("text") and len(parts) % 2:
        body = base64.b64encode(body)
    budget = Budget()
    steps = list(body_field_steps(ctype, body, whole, budget, encoding, 4096))
    fields = [f for f in steps if f is not None]
    assert len(fields) <= MAX_FIELDS + 2 * (len(body) // SEGMENT + 1) + 1
    assert all(len(f.raw or f.text.encode()) <= max(len(body), 4096) for f in fields)
    scan(fields, host="fuzz.test", namer=".".join)


def test_random_bytes_reach_the_detectors_whole_but_for_the_rare_few_that_read_as_a_message() -> None:
    """Ciphertext in a bytes field is judged as bytes; random bytes that happen to parse as protobuf (about 0.1%
    of 48-byte values) are judged whole as well unless they read as a real message would (a field spanning
    half of them): README states the rate this measures (below 0.1% of values)."""
    rng = random.Random(24)
    values = [rng.randbytes(size) for size in (16, 32, 48, 64) for _ in range(5000)]
    missed = [v for v in values if leaves(GRPC, grpc.frame(grpc.encode([(5, v)]))).get("grpc[0].5") != v]
    parsed = [v for v in values if grpc.parse(v, grpc.Counter(), strict=True) is not None]
    assert len(parsed) > len(missed) > 0  # the guard recovers some, and the rate below is a real measurement
    assert len(missed) / len(values) < 0.001, len(missed)  # 13 of 20,000 (0.065%) for this seed


# -- the answer a blocked call gets ---------------------------------------------------------------------


BLOCK = Block(
    "payload",
    "api.test",
    "/etc/tlsgate/policy.yaml:14",
    "request to api.test carries a provider secret",
    "keep it server-side; or, if this is expected, set payload: {..., secrets: ignore} in rule #1",
)


def test_a_grpc_call_gets_permission_denied_with_the_facts_percent_encoded() -> None:
    assert [
        grpc_call(t)
        for t in ("application/grpc", "application/grpc+proto", "application/grpc-web-text+proto", "application/json")
    ] == [
        "grpc",
        "grpc",
        "grpc-web-text",
        None,
    ]
    answer = grpc_answer(BLOCK, "grpc", 7)
    assert answer.body == b"" and answer.headers["grpc-status"] == "7" and answer.headers["content-type"] == "application/grpc"
    message = unquote(answer.headers["grpc-message"])
    for part in ("payload", "api.test", "policy.yaml:14", "secrets: ignore"):
        assert part in message
    assert all(0x20 <= ord(c) <= 0x7E for c in answer.headers["grpc-message"])
    assert percent_encode("100% é\n") == "100%25 %C3%A9%0A"
    web = grpc_answer(BLOCK, "grpc-web", 7)
    assert web.body[0] == 0x80 and int.from_bytes(web.body[1:5], "big") == len(web.body) - 5
    assert b"grpc-status:7\r\n" in web.body
    assert base64.b64decode(grpc_answer(BLOCK, "grpc-web-text", 7).body) == web.body


POLICY = """\
version: 1
defaults:
  mode: enforce
  payload: {ecb: block, secrets: block}
"""


@pytest.fixture
def inspector(tmp_path: Path) -> Iterator[tuple[PayloadInspector, Path]]:
    with wired(POLICY, tmp_path) as kit:
        yield kit.get(PayloadInspector), kit.findings


def grpc_flow(body: bytes, ctype: str = GRPC, **headers: str) -> http.HTTPFlow:
    head = http.Headers(
        [(b"content-type", ctype.encode()), (b"te", b"trailers")]
        + [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    )
    request = tutils.treq(
        host="api.test", port=443, scheme=b"https", method=b"POST", path=b"/demo.Sync/Push", headers=head, content=body
    )
    request.http_version = "HTTP/2.0"
    return tflow.tflow(req=request)


def run(inspector: PayloadInspector, flow: http.HTTPFlow) -> http.HTTPFlow:
    inspector.requestheaders(flow)
    call = flow.request.stream
    if isinstance(call, GrpcCall):  # a gRPC call streams: its body through the callable, in chunks, as mitmproxy does
        body = flow.request.raw_content or b""
        for start in range(0, len(body), 7):
            call(body[start : start + 7])
        call(b"")
    if flow.response is None:
        result = inspector.request(flow)
        if inspect.isawaitable(result):
            import asyncio

            asyncio.run(result)  # type: ignore[arg-type]
    if isinstance(call, GrpcCall) and (refusal := call.refusal()) is not None:
        flow.response = refusal  # what mitm_internals._cut_request sends the app
    return flow


def test_a_blocked_grpc_call_is_answered_with_a_grpc_status_naming_field_and_rule(
    inspector: tuple[PayloadInspector, Path],
) -> None:
    addon, findings = inspector
    body = grpc.frame(gzip.compress(grpc.encode([(1, "acct-7"), (2, grpc.encode([(3, STRIPE)]))])), compressed=True)
    flow = run(addon, grpc_flow(body, grpc_encoding="gzip"))
    assert flow.response is not None and flow.response.status_code == 200
    assert flow.response.headers["content-type"] == "application/grpc" and flow.response.headers["grpc-status"] == "7"
    assert "content-length" not in flow.response.headers and flow.response.raw_content == b""
    assert "policy.yaml:2" in unquote(flow.response.headers["grpc-message"])
    finding = json.loads(findings.read_text().splitlines()[-1])
    assert finding["action"] == "blocked" and finding["evidence"]["keys"][0]["field"] == "grpc[0].2.3"
    assert STRIPE not in findings.read_text()
    web = run(addon, grpc_flow(base64.b64encode(body), "application/grpc-web-text", grpc_encoding="gzip"))
    assert web.response is not None and web.response.headers["content-type"] == "application/grpc-web-text+proto"
    assert b"grpc-status:7" in base64.b64decode(web.response.raw_content or b"")


def test_an_ordinary_grpc_call_passes(inspector: tuple[PayloadInspector, Path]) -> None:
    addon, findings = inspector
    flow = run(addon, grpc_flow(grpc.frame(listen_request()) * 3))
    assert flow.response is None and (not findings.exists() or findings.read_text() == "")


def test_a_network_fault_on_a_grpc_call_is_unavailable_or_deadline_exceeded_not_a_502_page() -> None:
    from tlsgate.addons.verdicts import block_response
    from tlsgate.sinks.findings import Finding

    def fault(kind: str) -> Finding:
        return Finding(
            "fault", "failed", "high", "api.test", 443, None, "policy.yaml:2", "upstream reset", evidence={"kind": kind}
        )

    assert block_response(fault("reset"), "", "application/grpc").headers["grpc-status"] == "14"
    timed_out = block_response(fault("timeout"), "", "application/grpc-web+proto")
    assert timed_out.status_code == 200 and timed_out.headers["grpc-status"] == "4"
    assert unquote(timed_out.headers["grpc-message"]).startswith("tlsgate: upstream failed for api.test")
    assert block_response(fault("timeout"), "", "application/json").status_code == 504  # not gRPC: as before


def test_an_exception_while_judging_a_grpc_call_refuses_it_with_a_grpc_status(
    inspector: tuple[PayloadInspector, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    addon, findings = inspector

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(grpc, "frames", broken)
    flow = run(addon, grpc_flow(grpc.frame(listen_request())))
    assert flow.response is not None and flow.response.headers["grpc-status"] == "7"
    assert "check_failed" in findings.read_text()


def test_seeded_identifiers_are_found_in_protobuf_fields_hashed_or_plain() -> None:
    import hashlib

    from tlsgate.payload.identifiers import SeedIndex

    forms = SeedIndex(
        {"p": {"email": ("Tester.Person@example.com",), "advertising_id": ("38400000-8cf0-11bd-b23e-10b96e40000d",)}}
    ).forms_for("p")
    digest = hashlib.sha256(b"tester.person@example.com").digest()  # its hex in a string field, as ad SDKs hash emails
    message = grpc.encode([(1, grpc.encode([(2, "38400000-8cf0-11bd-b23e-10b96e40000d")])), (3, digest.hex()), (4, "home")])
    found = scan(body_fields(GRPC, grpc.frame(message)), host="ads.test", namer=".".join, forms=forms)
    assert {(i["kind"], i["field"]) for i in found.identifiers} == {("advertising_id", "grpc[0].1.2"), ("email", "grpc[0].3")}
