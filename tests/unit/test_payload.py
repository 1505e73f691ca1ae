"""The payload facts (decoding, cipher block structure, token formats, seeded identifiers), the `payload:` and
`identifiers:` sections, and the verdicts built on them: pure code, real AES from `cryptography`."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from tests.payload_corpus import cbc, ctr, ecb, gcm
from tests.seeded import urandom
from tlsgate.checks.model import Check, Effect, Severity
from tlsgate.checks.payload import PayloadFacts, judge_payload
from tlsgate.payload.bounds import SEGMENT
from tlsgate.payload.decode import decode
from tlsgate.payload.ecb import analyse, random_looking
from tlsgate.payload.fields import body_fields, header_fields, url_fields
from tlsgate.payload.identifiers import SeedIndex, find, forms_of, mask
from tlsgate.payload.recall import HEAD, BlockMemory
from tlsgate.payload.scan import scan
from tlsgate.payload.secrets import KEY_FORMATS, jwts, provider_keys
from tlsgate.policy import PolicyError, load_texts
from tlsgate.policy.sections.payload import PayloadAction, PayloadRules

KEY = bytes(range(16))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- decoding ---------------------------------------------------------------------------------------


def test_values_decode_as_hex_base64_and_base64url_with_or_without_padding() -> None:
    data = urandom(40)
    assert decode(data.hex()) == ("hex", data)
    assert decode(b64(data)) == ("base64", data)
    assert decode(b64(data).rstrip("=")) == ("base64", data)
    url = base64.urlsafe_b64encode(b"\xfb\xff" * 20).decode()
    assert decode(url) == ("base64url", b"\xfb\xff" * 20)
    assert decode(b64(data)[:20]) is None  # too short to hold a cipher block
    assert decode("not base64 at all, has spaces and !!!") is None
    assert decode("\n".join([b64(data)[:30], b64(data)[30:]])) == ("base64", data)  # MIME line breaks


# -- ECB within one value ---------------------------------------------------------------------------


def test_ecb_of_repeated_plaintext_blocks_is_found_and_good_modes_are_not() -> None:
    plaintext = b'{"pan":"4111111111111111","pd":"' + b"0123456789abcdef" * 2 + b'"}'  # a 32-byte prefix: one aligned repeat
    report = analyse(ecb(KEY, plaintext))
    assert report is not None and report.ecb and report.repeated >= 1
    for good in (cbc, ctr, gcm):
        import random

        data = good(random.Random(1), KEY, plaintext)
        found = analyse(data[: len(data) // 16 * 16])
        assert found is None or not found.ecb, good.__name__


def test_repeated_blocks_that_do_not_look_random_are_not_ecb() -> None:
    assert analyse(bytes(64)) is None  # zero padding
    assert analyse(b"A" * 64) is None  # text
    assert analyse(bytes(range(16)) * 4) is None  # a ramp, as in pixel gradients
    ramp = bytes((i * 16) & 0xFF for i in range(16))
    assert not random_looking(ramp)  # 16 distinct bytes over the whole range, but one constant step
    assert analyse(bytes(range(256)) * 2) is None


def test_the_rule_needs_whole_blocks_and_two_of_them() -> None:
    block = urandom(16)
    assert analyse(block) is None
    assert analyse(block * 2 + b"x") is None
    report = analyse(block * 2)
    assert report is not None and report.ecb


# -- ECB and fixed IVs or nonces across requests (more in test_payload_reuse.py) --------------------


def test_a_block_moving_position_between_values_is_ecb() -> None:
    memory = BlockMemory()
    record = b'{"event":"open","screen":"home","user":"alice00000001"}'
    first = ecb(KEY, record)
    second = ecb(KEY, b'{"batch":[1,2,3],' + record[1:])  # the same record one block further on
    assert memory.observe("phone", "h", "f", first, True) is None
    recall = memory.observe("phone", "h", "f", second, True)
    assert recall is not None and recall.kind == "moved_block"


def test_random_ivs_say_nothing_however_often_the_plaintext_repeats() -> None:
    import random

    memory = BlockMemory()
    rng = random.Random(3)
    for _ in range(50):
        for good in (cbc, ctr, gcm):
            assert (
                memory.observe("phone", "h", good.__name__, good(rng, KEY, b"the same plaintext every time, twice over"), True)
                is None
            )


def test_block_memory_is_bounded_in_keys_values_and_bytes() -> None:
    import tracemalloc

    memory = BlockMemory(keys=8, per_key=2)
    for index in range(100):
        for _ in range(5):
            memory.observe("phone", "h", f"field{index}", urandom(64), True)
    assert len(memory) == 8
    assert all(len(state.values) <= 2 for state in memory._seen.values())
    # What one field costs at the add-on's bounds, filled with the largest values it keeps, measured over 512
    # fields (all 4,096 under tracemalloc took 8 s of the unit suite; a field's cost does not depend on how many).
    defaults = BlockMemory()
    tracemalloc.start()
    try:
        full = BlockMemory(keys=512, per_key=defaults.per_key)
        value = urandom(8 * HEAD)  # longer than the HEAD bytes kept: more would only cost hashing time
        for index in range(full.keys + 100):
            for step in range(full.per_key + 1):
                full.observe("phone", "h", f"f{index}", value[step:], True)
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(full) == full.keys
    assert (defaults.keys, defaults.per_key) == (4096, 4)
    assert used / full.keys * defaults.keys < 13 * 2**20  # README: "at most 4,096 fields: about 12 MiB"


# -- secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sample"),
    [
        ("aws_access_key_id", "AKIA" + "IOSFODNN7EXAMPLE"),
        ("github_token", "gh" + "p_" + "a1B2" * 9),
        ("gitlab_token", "glpat" + "-" + "x" * 20),
        ("slack_token", "xo" + "xb-" + "1234567890-abcdef"),
        ("stripe_secret_key", "sk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc"),
        ("sendgrid_api_key", "SG" + "." + "a" * 22 + "." + "b" * 43),
        ("twilio_api_key", "SK" + "0123456789abcdef" * 2),
        ("openai_api_key", "sk-" + "proj-" + "a" * 24 + "T3Blbk" + "FJ" + "b" * 24),
        ("npm_token", "np" + "m_" + "A1" * 18),
        ("pypi_token", "pypi-" + "AgEIcHlwaS5vcmc" + "c" * 60),
        ("shopify_token", "shp" + "at_" + "0123456789abcdef" * 2),
        ("google_api_key", "AI" + "za" + "S" * 35),
        ("private_key", "-----BEGIN " + "RSA PRIVATE KEY-----"),
    ],
)
def test_published_key_formats_are_found_by_name(name: str, sample: str) -> None:
    assert [hit.format.name for hit in provider_keys(f"config={sample}&x=1")] == [name]


def test_every_key_format_names_its_source_and_ordinary_values_match_none() -> None:
    assert all(fmt.source and fmt.severity in ("low", "medium", "high", "critical") for fmt in KEY_FORMATS)
    ordinary = ["pk_live_" + "a" * 24, "sk_something", "AKIA", "skip-this-token", str(urandom(40).hex()), "ghp_short"]
    assert [provider_keys(text) for text in ordinary] == [[]] * len(ordinary)


def _jwt(header: dict[str, str], signature: str) -> str:
    def part(data: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part(header)}.{part({'sub': '42', 'admin': 'true'})}.{signature}"


def test_unsigned_jwts_are_told_from_signed_ones() -> None:
    (none,) = jwts("Bearer " + _jwt({"alg": "none"}, ""))
    assert none.unsigned and none.alg == "none"
    (empty,) = jwts(_jwt({"alg": "HS256"}, ""))
    assert empty.unsigned and empty.alg == "HS256"
    (signed,) = jwts(_jwt({"alg": "RS256"}, "c2lnbmF0dXJlLWJ5dGVz"))
    assert not signed.unsigned
    (odd,) = jwts(_jwt({"alg": "\n<script>"}, "sig0"))
    assert odd.alg == "missing"  # a header's words are never copied out as they are


# -- seeded identifiers -----------------------------------------------------------------------------

EMAIL = "Tester.Person@Example.com"


def test_identifier_forms_cover_what_trackers_send() -> None:
    forms = {(f.encoding, f.needle) for f in forms_of("email", EMAIL)}
    lowered = EMAIL.lower().encode()
    assert ("sha256-hex", hashlib.sha256(lowered).hexdigest()) in forms  # the ad networks' "advanced matching"
    assert ("md5-hex", hashlib.md5(lowered).hexdigest()) in forms
    assert ("sha1-hex", hashlib.sha1(EMAIL.encode()).hexdigest()) in forms
    assert ("base64", b64(lowered).rstrip("=")) in forms
    assert ("urlencoded", "tester.person%40example.com") in forms
    phone = {f.needle for f in forms_of("phone", "+1 (555) 010-0123")}
    assert {"15550100123", "+15550100123", hashlib.sha256(b"15550100123").hexdigest()} <= phone


def test_identifiers_are_found_in_every_form_and_named_without_values() -> None:
    index = SeedIndex({"pixel": {"email": (EMAIL,), "imei": ("356938035643809",)}, "*": {"username": ("jdoe_tester",)}})
    forms = index.forms_for("pixel")
    digest = hashlib.sha256(EMAIL.lower().encode()).hexdigest().upper()
    texts = [
        ("json.em", "", digest),
        ("query.q", "", "prefix-356938035643809-suffix"),
        ("header.x-user", "", b64(b"jdoe_tester")),
        ("form.other", "", "nothing here"),
    ]
    hits = {(h.kind, h.encoding, h.field) for h in find(forms, texts)}
    assert hits == {("email", "sha256-hex", "json.em"), ("imei", "plain", "query.q"), ("username", "base64", "header.x-user")}
    assert index.forms_for("another-device") == index.forms_for(None)  # only the "*" entries
    assert "jdoe_tester" not in mask("/u/jdoe_tester/x?n=JDOE_TESTER", forms)


# -- fields -----------------------------------------------------------------------------------------


def test_fields_walk_json_forms_multipart_headers_and_urls() -> None:
    body = json.dumps({"user": {"emails": ["a@b.c", {"x": 1}]}, "ok": True}).encode()
    assert [(f.path, f.text) for f in body_fields("application/json", body)] == [
        (("json", "user", "emails", "[0]"), "a@b.c"),
        (("json", "user", "emails", "[1]", "x"), "1"),
    ]
    assert [f.path for f in body_fields("application/x-www-form-urlencoded", b"a=1&b=2")] == [("form", "a"), ("form", "b")]
    multipart = b'--XX\r\nContent-Disposition: form-data; name="blob"\r\n\r\nvalue1\r\n--XX--\r\n'
    assert [(f.path, f.text) for f in body_fields("multipart/form-data; boundary=XX", multipart)] == [
        (("form", "blob"), "value1")
    ]
    binary = bytes(range(64))
    assert body_fields("application/octet-stream", binary)[0].raw == binary
    textlike = bytes(range(32, 96))  # binary that happens to be printable is judged as bytes too
    assert [f.raw for f in body_fields("application/octet-stream", textlike)][1] == textlike
    truncated = body_fields("application/json", b'{"data":"' + b"A1b2" * 20, complete=False)
    assert truncated[0].path == ("body",) and any(f.path[0] == "body" and f.text.startswith("A1b2") for f in truncated[1:])
    assert [f.path for f in header_fields([("Host", "x"), ("Cookie", "sid=1; t=2"), ("X-Data", "v")])] == [
        ("cookie", "sid"),
        ("cookie", "t"),
        ("header", "x-data"),
    ]
    assert [f.path for f in url_fields("https://h/a/b?x=1")] == [("path", "1"), ("path", "2"), ("query", "x")]


def test_hostile_json_costs_a_bounded_walk() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    assert body_fields("application/json", deep) is not None
    wide = json.dumps({f"k{i}": "v" for i in range(60000)}).encode()  # under 1 MiB: parsed, its first 512 leaves
    assert len(body_fields("application/json", wide)) == 512
    huge = json.dumps({f"k{i}": "v" for i in range(100000)}).encode()  # over 1 MiB: never parsed, searched as text
    fields = body_fields("application/json", huge)
    assert {f.path for f in fields} == {("body",)} and len(fields) == 2
    assert sum(len(f.text) for f in fields) >= len(huge) - 2  # every byte, in segments cut after a separator


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("multipart/form-data; boundary=XX", (b'Content-Disposition: form-data; name="a"\r\n\r\n' * 2000)[:65536]),
        ("multipart/form-data; boundary=XX", b"--XX\r\n" * 9000),
        ("text/plain", b"eyJ" * 21000),
        ("text/plain", (b"sk-" + b"A" * 30) * 1900),
        ("application/json", b'{"a":"' + b"hooks.slack.com/services/T" * 2400 + b'"}'),
        ("application/x-www-form-urlencoded", b"a=1&" * 16000),
        ("application/json", b'{"k":"' + b"\\u0000" * 9000 + b'"}'),
    ],
)
def test_hostile_bodies_are_scanned_within_their_bounds(ctype: str, body: bytes) -> None:
    fields = body_fields(ctype, body)
    named = [f for f in fields if f.path != ("body",)]
    assert len(named) <= 512 and len(fields) - len(named) <= 1 + len(body) // SEGMENT  # the rest is searched as text
    scan(fields, host="h", namer=".".join, forms=forms_of("email", "a.person@example.com"), memory=BlockMemory())


def test_scan_reports_value_free_items() -> None:
    value = b64(ecb(KEY, b"0123456789abcdef" * 3))
    fields = body_fields("application/json", json.dumps({"data": value, "note": "hi"}).encode())
    result = scan(fields, host="h", namer=".".join)
    assert result.ecb == [
        {"field": "json.data", "encoding": "base64", "length": 64, "blocks": 4, "repeated_blocks": 2, "basis": "repeated_block"}
    ]
    assert value not in json.dumps(result.__dict__)


# -- the sections -----------------------------------------------------------------------------------

POLICY = """\
version: 1
defaults:
  payload: report
devices:
  127.0.0.1: pixel-7
identifiers:
  pixel-7:
    email: tester@example.com
    phone: 15550100123
  "*":
    username: [jdoe_tester]
rules:
  - hosts: api.test
    payload: {ecb: block, identifiers: ignore, max_bytes: 4096}
  - hosts: quiet.test
    payload: ignore
"""


def test_payload_section_parses_both_spellings_and_resolves_identifiers() -> None:
    policy = load_texts([("p.yaml", POLICY)])
    api = policy.match("api.test").settings.get("payload")
    assert (api.ecb, api.secrets, api.identifiers, api.max_bytes) == ("block", "report", "ignore", 4096)
    assert policy.match("quiet.test").settings.get("payload").off
    other = policy.match("tracker.test").settings.get("payload")
    assert other == PayloadRules() and other.seeds is not None
    assert other.seeds.kinds == {"pixel-7": ("email", "phone"), "*": ("username",)}
    untouched = load_texts([("p.yaml", "version: 1\n")]).match("x.test").settings.get("payload")
    assert untouched.action("ecb") is PayloadAction.REPORT and untouched.seeds is not None  # the default is resolved too


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("defaults:\n  payload: maybe\n", "defaults.payload must be one of report, block, ignore"),
        ("defaults:\n  payload: {ecb: allow}\n", "defaults.payload.ecb must be one of"),
        ("defaults:\n  payload: {max_bytes: 12}\n", "max_bytes must be a whole number of bytes from 1024"),
        ("defaults:\n  payload: {ecbs: block}\n", "did you mean 'ecb'"),
        ("identifiers:\n  p:\n    shoe_size: 'secret-value-1'\n", "unknown key 'shoe_size'"),
        ("identifiers:\n  'my phone':\n    email: 'a.b@example.org'\n", "each key is a device name"),
    ],
)
def test_payload_and_identifier_errors_are_located(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_texts([("p.yaml", text)])


def test_identifier_errors_never_quote_the_value() -> None:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", "identifiers:\n  p:\n    email: 'a@b'\n    phone: [true]\n")])
    text = str(caught.value)
    assert "p.yaml:3" in text and "p.yaml:4" in text and "a@b" not in text


# -- the verdicts -----------------------------------------------------------------------------------


def _facts(**kw: object) -> PayloadFacts:
    return PayloadFacts(method="POST", url="https://h/x", **kw)  # type: ignore[arg-type]


def test_block_enforces_report_records_ignore_drops_and_a_streamed_body_is_only_recorded() -> None:
    policy = load_texts([("p.yaml", POLICY)])
    ecb_item = [{"field": "json.data", "encoding": "base64", "length": 64, "blocks": 4, "repeated_blocks": 1, "basis": "x"}]
    ident = [{"kind": "email", "encoding": "sha256-hex", "field": "json.em", "length": 64}]
    (issue,) = judge_payload(_facts(ecb=ecb_item, identifiers=ident), policy.match("api.test"))
    assert (issue.check, issue.kind, issue.effect, issue.severity) == (Check.PAYLOAD, "ecb", Effect.ENFORCED, Severity.HIGH)
    assert "ecb: ignore" in issue.remedy and "p.yaml:13" in issue.remedy
    (streamed,) = judge_payload(_facts(ecb=ecb_item, streamed=True), policy.match("api.test"))
    assert streamed.effect is Effect.RECORD and "already streamed" in streamed.detail
    ecb_issue, ident_issue = judge_payload(_facts(ecb=ecb_item, identifiers=ident), policy.match("tracker.test"))
    assert ecb_issue.effect is Effect.RECORD
    assert ident_issue.evidence["third_party"] is True and ident_issue.severity is Severity.MEDIUM
    assert "(hashed)" in ident_issue.detail and "add a rule with hosts: [tracker.test]" in ident_issue.remedy
    assert judge_payload(_facts(ecb=ecb_item, identifiers=ident), policy.match("quiet.test")) == []


def test_keystream_reuse_is_high_and_other_fixed_iv_evidence_medium() -> None:
    policy = load_texts([("p.yaml", POLICY)])
    item = {"field": "json.data", "encoding": "base64", "length": 71}
    (reused,) = judge_payload(
        _facts(deterministic=[{**item, "basis": "keystream_reuse", "evidence_bits": 90}]), policy.match("api.test")
    )
    assert (reused.kind, reused.severity) == ("deterministic_encryption", Severity.HIGH) and "reuses a keystream" in reused.detail
    for basis in ("same_prefix", "same_position", "zero_iv"):
        (issue,) = judge_payload(_facts(deterministic=[{**item, "basis": basis}]), policy.match("api.test"))
        assert issue.severity is Severity.MEDIUM and "fixed IV" in issue.detail


def test_url_exemptions_are_decided_without_a_flow() -> None:
    """Presigned-URL and OAuth exemptions are pure facts of the URL (`tlsgate.payload.exemptions`), testable alone."""
    from tlsgate.payload.exemptions import exempt_params, without_exempt_keys

    s3 = "https://b.test/a.jpg?X-Amz-Credential=AKIA" + "IOSFODNN7EXAMPLE&X-Amz-Signature=0123abcd"
    assert {"x-amz-credential", "x-amz-signature", "code", "state"} <= exempt_params(s3)
    assert "signature" not in exempt_params("https://b.test/a.jpg?Signature=abc&token=t")  # no signed-URL scheme
    assert {"sig"} <= exempt_params("https://b.test/c?sv=2022-11-02&sig=abc")
    keys = [{"field": "query.X-Amz-Credential", "kind": "aws"}, {"field": "header.x-key", "kind": "aws"}]
    assert without_exempt_keys(keys, exempt_params(s3)) == [keys[1]]
