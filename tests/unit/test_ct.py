"""Certificate Transparency: SCTs read from real and generated leaves, verified against real and test logs.

The real certificates prove the rebuilt precertificate is what real logs
signed; the generated ones (tests/ctgen.py) dial one property at a time.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.certgen import Chain, make_chain, make_leaf
from tests.ctgen import TestLog, leaf_with_scts, log_list_json, make_sct, octet_string
from tests.docs import section as docs_section
from tlsgate.checks import registry
from tlsgate.checks.ct import judge_ct, required_scts
from tlsgate.checks.model import Action, Check, Effect, decide
from tlsgate.policy import PolicyError, load_texts
from tlsgate.policy.model import Mode
from tlsgate.policy.sections.ct import CT, CtRules
from tlsgate.tls import ct, ctlogs
from tlsgate.tls.ct import MAX_SCTS, SctStatus, examine, parse_sct_list

DATA = Path(__file__).resolve().parents[1] / "data" / "ct"
SHIPPED = Path(ctlogs.__file__).with_name(ctlogs.SHIPPED_FILE)
HOST = "api.test"
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain(dns=(HOST,))


@pytest.fixture(scope="module")
def logs() -> dict[str, TestLog]:
    """Five test logs: two operators with two logs each, one log signing with RSA, and one the list never names."""
    return {
        "argon": TestLog("Argon", "Google"),
        "xenon": TestLog("Xenon", "Google", "rsa:2048"),
        "nimbus": TestLog("Nimbus", "Cloudflare"),
        "sphinx": TestLog("Sphinx", "DigiCert"),
        "stranger": TestLog("Stranger", "Nobody"),
    }


@pytest.fixture(scope="module")
def log_list(logs: dict[str, TestLog]) -> ctlogs.LogList:
    known = [logs[name] for name in ("argon", "xenon", "nimbus", "sphinx")]
    return ctlogs.parse_log_list(log_list_json(known, NOW - dt.timedelta(days=1)), "test list")


def full(chain: Chain, leaf) -> list[x509.Certificate]:
    return [leaf.cert, chain.intermediate.cert, chain.root.cert]


def statuses(facts: ct.CtFacts) -> list[SctStatus]:
    return [s.status for s in facts.scts]


def match(ct_yaml: str, mode: str = "enforce"):
    policy = load_texts([("policy.yaml", f"version: 1\ndefaults:\n  mode: {mode}\n  ct: {ct_yaml}\n")])
    return policy.match(HOST)


def verdict(certs: list[x509.Certificate], ct_yaml: str, logs: ctlogs.LogList):
    """The check as the registry runs it for a host whose defaults say `ct: <ct_yaml>`."""
    found = match(ct_yaml)
    rules = CT.get(found.settings)
    assert rules is not None
    return judge_ct(certs, rules, found, NOW, logs)


# -- real certificates, real logs -------------------------------------------------------------------------


def test_real_scts_of_www_digicert_com_verify_against_the_shipped_log_list() -> None:
    leaf, issuer = x509.load_pem_x509_certificates((DATA / "www.digicert.com-2026-01.pem").read_bytes())
    leaf.verify_directly_issued_by(issuer)
    facts = examine([leaf, issuer], ctlogs.shipped_log_list(), dt.datetime(2026, 1, 20, tzinfo=dt.UTC))
    assert facts.error is None and facts.present
    assert [(s.log, s.operator, s.status) for s in facts.scts] == [
        ("Google 'Argon2026h1' log", "Google", SctStatus.VALID),
        ("Sectigo 'Tiger2026h1'", "Sectigo", SctStatus.VALID),
        ("DigiCert 'Wyvern2026h1'", "DigiCert", SctStatus.VALID),
    ]
    assert facts.scts[0].timestamp == "2026-01-05T19:13:05.529Z"


def test_real_scts_fail_when_bound_to_another_issuer_or_certificate() -> None:
    """The issuer key hash and the TBS are part of what the log signed: change either and no SCT verifies."""
    leaf, issuer = x509.load_pem_x509_certificates((DATA / "www.digicert.com-2026-01.pem").read_bytes())
    when = dt.datetime(2026, 1, 20, tzinfo=dt.UTC)
    logs = ctlogs.shipped_log_list()
    data = ct.embedded_sct_list(leaf)
    assert data is not None
    scts, _, _ = parse_sct_list(data)
    first = scts[0]
    assert isinstance(first, ct.Sct)
    key = logs.find(first.log_id).key  # type: ignore[union-attr]
    right = ct.precert_signed_data(first, ct.issuer_key_hash(issuer), leaf.tbs_precertificate_bytes)
    assert ct.signature_verifies(key, first, right)
    other_issuer = make_chain().intermediate.cert
    assert not ct.signature_verifies(
        key, first, ct.precert_signed_data(first, ct.issuer_key_hash(other_issuer), leaf.tbs_precertificate_bytes)
    )
    # The whole TBS (SCT extension included) is not what the log signed: the extension must come out.
    assert not ct.signature_verifies(
        key, first, ct.precert_signed_data(first, ct.issuer_key_hash(issuer), leaf.tbs_certificate_bytes)
    )
    assert statuses(examine([leaf], logs, when)) == [SctStatus.NO_ISSUER] * 3


def test_real_scts_from_2018_verify_against_chromium_keys_of_that_time() -> None:
    leaf, x3 = x509.load_pem_x509_certificates((DATA / "cryptography.io-2018-09.pem").read_bytes())
    assert x3.fingerprint(ct.hashes.SHA256()).hex().upper().startswith("25847D668EB4F04F")
    leaf.verify_directly_issued_by(x3)
    old = ctlogs.parse_log_list((DATA / "chromium-3.52-icarus-mammoth.json").read_bytes(), "chromium 3.52")
    facts = examine([leaf, x3], old, dt.datetime(2018, 10, 1, tzinfo=dt.UTC))
    assert [(s.log, s.status) for s in facts.scts] == [
        ("Google 'Icarus' log", SctStatus.VALID),
        ("Sectigo 'Mammoth' CT log", SctStatus.VALID),
    ]
    # Against today's list those logs are unknown: nothing counts, nothing is trusted by accident.
    assert statuses(examine([leaf, x3], ctlogs.shipped_log_list(), NOW)) == [SctStatus.UNKNOWN_LOG] * 2


# -- the shipped log list ---------------------------------------------------------------------------------


def test_the_shipped_log_list_is_googles_list_unchanged_with_its_source_recorded() -> None:
    text = SHIPPED.read_text()
    document = json.loads(text)
    source = document["tlsgate_source"]
    assert "benji-cannot-code/fast-vc-chromium-benchmark-run-4" in source["copied_from"]
    assert "0001ff12586dbd510642e58888feb975d17b8d7b" in source["copied_from"]
    assert source["published"].startswith(document["log_list_timestamp"]) and document["version"] == "81.5"
    start = text.index('  "tlsgate_source": {')
    end = text.index("\n  },\n", start) + len("\n  },\n")
    upstream = (text[:start] + text[end:]).encode()
    assert hashlib.sha256(upstream).hexdigest() == source["upstream_sha256"]
    assert len(upstream) == 53530  # the mirror's file (53,604 characters) less its one marker line


def test_the_readme_names_the_shipped_lists_version_date_and_copy() -> None:
    """Updating the shipped list without its README paragraph fails here, not in a user's hands."""
    section = " ".join(docs_section("Certificate Transparency").split())
    shipped, source = ctlogs.shipped_log_list(), json.loads(SHIPPED.read_text())["tlsgate_source"]
    assert f"version {shipped.version}, published {shipped.published.date().isoformat()}" in section
    assert f"copied on {source['copied_on']}" in section and f"{ctlogs.STALE_AFTER.days} days" in section


def test_every_shipped_log_id_is_the_hash_of_its_key_and_the_list_parses() -> None:
    document = json.loads(SHIPPED.read_text())
    entries = [log for op in document["operators"] for kind in ("logs", "tiled_logs") for log in op.get(kind, [])]
    for entry in entries:
        assert base64.b64decode(entry["log_id"]) == hashlib.sha256(base64.b64decode(entry["key"])).digest(), entry["description"]
    shipped = ctlogs.shipped_log_list()
    assert len(shipped.logs) == len(entries) == 75 and shipped.skipped == 0
    assert shipped.published == dt.datetime(2026, 1, 11, 12, 53, 56, tzinfo=dt.UTC)
    assert {log.operator for log in shipped.logs.values()} >= {"Google", "Cloudflare", "DigiCert", "Sectigo", "Let's Encrypt"}
    tiled = [log for log in shipped.logs.values() if log.tiled]
    assert tiled and all(log.operator in ("Let's Encrypt", "TrustAsia", "Geomys", "IPng Networks") for log in tiled)


# -- generated leaves -------------------------------------------------------------------------------------


def test_zero_one_and_two_valid_scts(chain: Chain, logs, log_list) -> None:
    none = make_leaf(chain.intermediate, (HOST,))
    assert examine(full(chain, none), log_list, NOW) == ct.CtFacts(False)
    one = leaf_with_scts(chain.intermediate, (HOST,), [logs["argon"]])
    assert statuses(examine(full(chain, one), log_list, NOW)) == [SctStatus.VALID]
    two = leaf_with_scts(chain.intermediate, (HOST,), [logs["xenon"], logs["nimbus"]])
    facts = examine(full(chain, two), log_list, NOW)
    assert statuses(facts) == [SctStatus.VALID, SctStatus.VALID]
    assert [s.operator for s in facts.scts] == ["Google", "Cloudflare"]


def test_bad_signature_unknown_log_future_and_unsupported_scts_are_named_one_by_one(chain: Chain, logs, log_list) -> None:
    leaf = leaf_with_scts(
        chain.intermediate,
        (HOST,),
        [
            (logs["argon"], {"signed_timestamp": NOW - dt.timedelta(days=3)}),
            logs["stranger"],
            (logs["nimbus"], {"timestamp": NOW + dt.timedelta(days=1)}),
            (logs["sphinx"], {"hash_algorithm": 2}),
            (logs["sphinx"], {"version": 1}),
            logs["xenon"],
        ],
    )
    facts = examine(full(chain, leaf), log_list, NOW)
    assert statuses(facts) == [
        SctStatus.BAD_SIGNATURE,
        SctStatus.UNKNOWN_LOG,
        SctStatus.FUTURE_TIMESTAMP,
        SctStatus.UNSUPPORTED,
        SctStatus.UNSUPPORTED,
        SctStatus.VALID,
    ]
    assert facts.scts[1].log is None and facts.scts[1].log_id == base64.b64encode(logs["stranger"].log_id).decode()
    assert "version 2" in facts.scts[4].note
    # Without signature checks a forged SCT counts: that is what `verify: false` says it does.
    assert statuses(examine(full(chain, leaf), log_list, NOW, verify=False))[0] is SctStatus.UNVERIFIED


def test_log_states_decide_whether_an_sct_counts(chain: Chain, logs) -> None:
    leaf = leaf_with_scts(chain.intermediate, (HOST,), [logs["argon"], logs["nimbus"], logs["sphinx"], logs["xenon"]])
    states = {
        "Argon": ("pending", NOW - dt.timedelta(days=30)),
        "Nimbus": ("retired", NOW - dt.timedelta(days=30)),  # retired before the SCT: refused
        "Sphinx": ("retired", NOW + dt.timedelta(days=30)),  # retires later: still counts
        "Xenon": ("readonly", NOW - dt.timedelta(days=30)),
    }
    known = [logs[name] for name in ("argon", "nimbus", "sphinx", "xenon")]
    listed = ctlogs.parse_log_list(log_list_json(known, NOW, states), "states")
    facts = examine(full(chain, leaf), listed, NOW)
    assert statuses(facts) == [SctStatus.LOG_NOT_ACCEPTED, SctStatus.LOG_NOT_ACCEPTED, SctStatus.VALID, SctStatus.VALID]
    assert "retired" in facts.scts[1].note


# -- hostile lists ----------------------------------------------------------------------------------------


def raw_leaf(chain: Chain, extension_value: bytes):
    return leaf_with_scts(chain.intermediate, (HOST,), [], raw_extension=extension_value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"\x05\x00", "not wrapped in an OCTET STRING"),
        (b"\x04\x03abc", "declares 24930 bytes but 1 follow"),
        (octet_string(b""), "empty (no length)"),
        (octet_string(b"\x00\x00"), "empty"),
        (octet_string(b"\x01\x00\x00\x05"), "declares 256 bytes but 2 follow"),
        (octet_string(b"\x00\x04\x00\x40ab"), "cut short"),
    ],
)
def test_a_damaged_list_is_a_sentence_not_an_exception(chain: Chain, log_list, value: bytes, says: str) -> None:
    facts = examine(full(chain, raw_leaf(chain, value)), log_list, NOW)
    assert facts.present and facts.error and says in facts.error
    assert all(s.status is SctStatus.UNSUPPORTED for s in facts.scts)


def test_one_malformed_sct_does_not_hide_the_others(chain: Chain, logs, log_list) -> None:
    intact = logs["argon"]
    leaf = leaf_with_scts(chain.intermediate, (HOST,), [b"\x00" * 10, intact, b"\x00" + b"\x11" * 60 + b"extra"])
    facts = examine(full(chain, leaf), log_list, NOW)
    assert statuses(facts) == [SctStatus.UNSUPPORTED, SctStatus.VALID, SctStatus.UNSUPPORTED]
    assert "malformed" in facts.scts[0].note and facts.error is None


def test_a_huge_count_is_cut_at_the_limit(chain: Chain, logs, log_list) -> None:
    junk = [b"\x07" + bytes(10)] * (MAX_SCTS + 25)  # version 8: unread beyond its version byte
    leaf = leaf_with_scts(chain.intermediate, (HOST,), [*junk, logs["argon"]])
    facts = examine(full(chain, leaf), log_list, NOW)
    assert len(facts.scts) == MAX_SCTS and facts.ignored == 26
    assert all(s.status is SctStatus.UNSUPPORTED for s in facts.scts)


def test_a_timestamp_past_year_9999_is_in_the_future(chain: Chain, logs, log_list) -> None:
    tbs = make_leaf(chain.intermediate, (HOST,)).cert.tbs_certificate_bytes
    good = make_sct(logs["argon"], tbs, chain.intermediate.cert)
    forged = good[:33] + struct.pack(">Q", 2**64 - 1) + good[41:]
    leaf = leaf_with_scts(chain.intermediate, (HOST,), [forged])
    assert statuses(examine(full(chain, leaf), log_list, NOW)) == [SctStatus.FUTURE_TIMESTAMP]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_as_an_sct_list_never_raise(data: bytes) -> None:
    scts, error, ignored = parse_sct_list(data)
    assert ignored >= 0 and (error is None or isinstance(error, str))
    for item in scts:
        assert isinstance(item, str | ct.Sct)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_random_extension_values_never_raise_through_examine(data: bytes) -> None:
    chain = make_chain(dns=(HOST,))
    leaf = raw_leaf(chain, data)
    facts = examine(full(chain, leaf), ctlogs.shipped_log_list(), NOW)
    assert facts.present


# -- log lists an operator gives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "says"),
    [
        (b"not json", "not JSON"),
        (b"{}", "no 'operators' list"),
        (b'{"operators": [], "log_list_timestamp": 5}', "log_list_timestamp must be a date-time"),
        (b'{"operators": [{"logs": []}], "log_list_timestamp": "2026-01-01T00:00:00Z"}', "operator #1 has no name"),
        (b'{"operators": [{"name": "x", "logs": [{"description": "d", "key": "%%%", "log_id": "AA=="}]}], '
         b'"log_list_timestamp": "2026-01-01T00:00:00Z"}', "key is not valid base64"),
    ],
)  # fmt: skip
def test_a_broken_log_list_is_refused_in_words(document: bytes, says: str) -> None:
    with pytest.raises(ctlogs.LogListError, match=says):
        ctlogs.parse_log_list(document, "x")


def test_a_log_list_whose_id_does_not_match_its_key_is_refused(logs) -> None:
    document = json.loads(log_list_json([logs["argon"], logs["nimbus"]]))
    document["operators"][0]["logs"][0]["key"] = document["operators"][1]["logs"][0]["key"]
    with pytest.raises(ctlogs.LogListError, match="log_id is not the SHA-256 of its key"):
        ctlogs.parse_log_list(json.dumps(document).encode(), "x")


def test_log_list_limits_and_unusable_keys(tmp_path: Path, logs) -> None:
    with pytest.raises(ctlogs.LogListError, match="larger than 4 MiB"):
        ctlogs.parse_log_list(b" " * (ctlogs.MAX_BYTES + 1), "x")
    edwards = TestLog("Edwards", "Odd", "ed25519")
    listed = ctlogs.parse_log_list(log_list_json([logs["argon"], edwards]), "x")  # type: ignore[list-item]
    assert len(listed.logs) == 1 and listed.skipped == 1
    with pytest.raises(ctlogs.LogListError, match="cannot read the CT log list missing.json"):
        ctlogs.load_log_list(tmp_path / "missing.json")
    bad = tmp_path / "logs.json"
    bad.write_text("[]")
    with pytest.raises(ctlogs.LogListError, match="CT log list logs.json: the log list has no 'operators'"):
        ctlogs.load_log_list(bad)


# -- the section ------------------------------------------------------------------------------------------


def test_the_ct_section_parses_and_a_rule_can_turn_it_off() -> None:
    policy = load_texts(
        [
            (
                "policy.yaml",
                "version: 1\ndefaults:\n  ct: {min_scts: 3, distinct_operators: false}\n"
                "rules:\n  - hosts: [private.test]\n    ct: off\n  - hosts: [life.test]\n    ct: {min_scts: by_lifetime}\n",
            )
        ]
    )
    assert policy.match(HOST).settings.get("ct") == CtRules(3, False, True)
    assert policy.match("private.test").settings.get("ct") is None
    assert policy.match("life.test").settings.get("ct") == CtRules(None, True, True)
    assert load_texts([("p.yaml", "version: 1\n")]).match(HOST).settings.get("ct") is None  # off unless asked for


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{min_scts: 0}", "policy.yaml:4:18: ct.min_scts must be a whole number from 1 to 10, or by_lifetime"),
        ("{min_scts: 1}", "policy.yaml:4:18: ct.min_scts: 1 cannot come from two operators"),
        ("{verify: maybe}", "policy.yaml:4:16: ct.verify must be true or false"),
        ("{min: 2}", "policy.yaml:4:8: unknown key 'min' in ct"),
        ("strict", "policy.yaml:4:7: defaults.ct must be off or a mapping"),
    ],
)
def test_ct_section_errors_are_located(value: str, says: str) -> None:
    with pytest.raises(PolicyError) as raised:
        match(value)
    assert any(str(m).startswith(says) for m in raised.value.messages), [str(m) for m in raised.value.messages]


# -- the verdicts -----------------------------------------------------------------------------------------


def test_the_registry_runs_the_ct_judge_in_the_chain_phase_only_where_ct_is_set(chain: Chain) -> None:
    facts = registry.HandshakeFacts(protocol="TLSv1.3", chain=full(chain, make_leaf(chain.intermediate, (HOST,))))
    unset = load_texts([("policy.yaml", "version: 1\n")]).match(HOST)
    assert [f for f in registry.run(registry.Phase.CHAIN, facts, unset, NOW).found if f.issue.check is Check.CT] == []
    found = [f for f in registry.run(registry.Phase.CHAIN, facts, match("{min_scts: 2}"), NOW).found if f.issue.check is Check.CT]
    assert [(f.judge.name, f.issue.kind) for f in found if f.judge] == [("ct_judge", "no_scts")]
    # The shipped list is months old by now, so the verdict it gives is recorded, not enforced.
    assert found[0].issue.effect is Effect.RECORD and "Not enforced" in found[0].issue.detail


def test_no_scts_blocks_in_enforce_and_is_reported_in_report_mode(chain: Chain, log_list) -> None:
    none = make_leaf(chain.intermediate, (HOST,))
    (issue,) = verdict(full(chain, none), "{min_scts: 2}", log_list)
    assert (issue.check, issue.kind, issue.effect) == (Check.CT, "no_scts", Effect.ENFORCED)
    assert decide(issue, Mode.ENFORCE) is Action.BLOCKED and decide(issue, Mode.REPORT) is Action.REPORTED
    assert "embeds no SCTs" in issue.detail and "requires 2" in issue.detail and "embedded SCTs only" in issue.detail
    assert "policy.yaml:2" in issue.remedy and "'ct: off'" in issue.remedy


def test_one_valid_sct_of_two_required_names_each_sct(chain: Chain, logs, log_list) -> None:
    leaf = leaf_with_scts(chain.intermediate, (HOST,), [logs["argon"], logs["stranger"]])
    (issue,) = verdict(full(chain, leaf), "{min_scts: 2}", log_list)
    assert issue.kind == "too_few_scts" and issue.effect is Effect.ENFORCED
    assert "embeds 1 SCT from distinct trusted logs; ct.min_scts requires 2" in issue.detail
    assert "SCT 1 (Test 'Argon' log): verifies" in issue.detail and "SCT 2 (log ID " in issue.detail
    assert "ct_log_list: FILE" in issue.remedy  # an unknown log may only be newer than the list
    assert issue.evidence["counted"] == 1 and issue.evidence["required"] == 2
    assert [s["status"] for s in issue.evidence["scts"]] == ["valid", "unknown_log"]


def test_two_scts_from_one_operator_pass_only_without_distinct_operators(chain: Chain, logs, log_list) -> None:
    leaf = leaf_with_scts(chain.intermediate, (HOST,), [logs["argon"], logs["xenon"]])
    (issue,) = verdict(full(chain, leaf), "{min_scts: 2}", log_list)
    assert issue.kind == "one_operator" and "run by Google" in issue.detail
    assert verdict(full(chain, leaf), "{min_scts: 2, distinct_operators: false}", log_list) == []


def test_two_operators_pass_and_two_scts_from_one_log_count_once(chain: Chain, logs, log_list) -> None:
    passing = leaf_with_scts(chain.intermediate, (HOST,), [logs["argon"], logs["nimbus"]])
    assert verdict(full(chain, passing), "{min_scts: 2}", log_list) == []
    twice = leaf_with_scts(chain.intermediate, (HOST,), [logs["argon"], logs["argon"]])
    (issue,) = verdict(full(chain, twice), "{min_scts: 2, distinct_operators: false}", log_list)
    assert issue.kind == "too_few_scts" and issue.evidence["counted"] == 1


def test_scts_only_from_logs_retired_since_do_not_satisfy_chrome(chain: Chain, logs) -> None:
    before = {"timestamp": NOW - dt.timedelta(days=40)}
    leaf = leaf_with_scts(chain.intermediate, (HOST,), [(logs["argon"], before), (logs["nimbus"], before)])
    retired = ("retired", NOW - dt.timedelta(days=10))
    both = ctlogs.parse_log_list(
        log_list_json([logs["argon"], logs["nimbus"]], NOW, {"Argon": retired, "Nimbus": retired}), "both retired"
    )
    (issue,) = verdict(full(chain, leaf), "{min_scts: 2}", both)
    assert (issue.kind, issue.effect) == ("retired_logs_only", Effect.ENFORCED)
    assert [s.get("log_retired") for s in issue.evidence["scts"]] == [True, True]
    one = ctlogs.parse_log_list(log_list_json([logs["argon"], logs["nimbus"]], NOW, {"Argon": retired}), "one retired")
    assert verdict(full(chain, leaf), "{min_scts: 2}", one) == []


def test_a_bad_signature_is_recorded_even_when_enough_others_verify(chain: Chain, logs, log_list) -> None:
    leaf = leaf_with_scts(
        chain.intermediate,
        (HOST,),
        [logs["argon"], logs["nimbus"], (logs["sphinx"], {"signed_timestamp": NOW - dt.timedelta(days=2)})],
    )
    (issue,) = verdict(full(chain, leaf), "{min_scts: 2}", log_list)
    assert (issue.kind, issue.effect) == ("invalid_sct", Effect.RECORD)
    assert "SCT 3 (Test 'Sphinx' log)" in issue.detail


def test_by_lifetime_asks_three_scts_of_a_long_lived_certificate(chain: Chain, logs, log_list) -> None:
    start = NOW - dt.timedelta(days=1)
    short = leaf_with_scts(
        chain.intermediate, (HOST,), [logs["argon"], logs["nimbus"]], not_before=start, not_after=start + dt.timedelta(days=180)
    )
    long = leaf_with_scts(
        chain.intermediate, (HOST,), [logs["argon"], logs["nimbus"]], not_before=start, not_after=start + dt.timedelta(days=181)
    )
    assert required_scts(CtRules(None), short.cert) == 2 and required_scts(CtRules(None), long.cert) == 3
    assert verdict(full(chain, short), "{min_scts: by_lifetime}", log_list) == []
    (issue,) = verdict(full(chain, long), "{min_scts: by_lifetime}", log_list)
    assert "ct.min_scts by the certificate's lifetime requires 3" in issue.detail


def test_a_stale_log_list_records_instead_of_blocking(chain: Chain, logs) -> None:
    old = ctlogs.parse_log_list(log_list_json([logs["argon"]], NOW - dt.timedelta(days=71)), "old list")
    none = make_leaf(chain.intermediate, (HOST,))
    (issue,) = verdict(full(chain, none), "{min_scts: 2}", old)
    assert issue.effect is Effect.RECORD and decide(issue, Mode.ENFORCE) is Action.REPORTED
    assert "Not enforced: the CT log list (old list, published" in issue.detail and "71 days old" in issue.detail
    assert issue.evidence["log_list"]["age_days"] == 71
    fresh = ctlogs.parse_log_list(log_list_json([logs["argon"]], NOW - dt.timedelta(days=69)), "fresh list")
    assert verdict(full(chain, none), "{min_scts: 2}", fresh)[0].effect is Effect.ENFORCED


def test_the_policys_ct_log_list_replaces_the_shipped_one_for_every_rule(chain: Chain, logs, tmp_path: Path) -> None:
    mine = tmp_path / "mine.json"
    mine.write_bytes(log_list_json([logs["argon"], logs["nimbus"]], NOW - dt.timedelta(days=3)))
    policy = load_texts(
        [
            ("a.yaml", f"version: 1\nct_log_list: {mine}\nrules:\n  - hosts: [other.test]\n    ct: {{min_scts: 2}}\n"),
            ("b.yaml", "version: 1\ndefaults:\n  ct: {min_scts: 2}\n"),
        ]
    )
    leaf = leaf_with_scts(chain.intermediate, (HOST,), [logs["argon"], logs["nimbus"]])
    facts = registry.HandshakeFacts(protocol="TLSv1.3", chain=full(chain, leaf))
    for host in (HOST, "other.test"):
        rules = CT.get(policy.match(host).settings)
        assert rules is not None and rules.logs is not None and rules.logs.source == "mine.json"
        assert registry.run(registry.Phase.CHAIN, facts, policy.match(host), NOW).found == []
    # Without the policy's list the same leaf names logs the shipped list does not know.
    shipped = load_texts([("b.yaml", "version: 1\ndefaults:\n  ct: {min_scts: 2}\n")]).match(HOST)
    (found,) = registry.run(registry.Phase.CHAIN, facts, shipped, NOW).found
    assert found.issue.kind == "too_few_scts" and "ct_log_list: FILE" in found.issue.remedy


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "a.yaml:2:14: cannot read the CT log list missing.json"),
        (b'{"operators": 5}', "a.yaml:2:14: CT log list missing.json: the log list has no 'operators' list"),
    ],
)
def test_an_unusable_ct_log_list_refuses_the_policy_at_its_line(tmp_path: Path, content: bytes | None, says: str) -> None:
    path = tmp_path / "missing.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PolicyError) as raised:
        load_texts([("a.yaml", f"version: 1\nct_log_list: {path}\n")])
    assert [str(m)[: len(says)] for m in raised.value.messages] == [says]


def test_ct_log_list_is_set_in_one_file_only(tmp_path: Path, logs) -> None:
    path = tmp_path / "logs.json"
    path.write_bytes(log_list_json([logs["argon"]]))
    text = f"version: 1\nct_log_list: {path}\n"
    with pytest.raises(PolicyError) as raised:
        load_texts([("a.yaml", text), ("b.yaml", text)])
    assert [str(m) for m in raised.value.messages] == [
        "b.yaml:2:14: ct_log_list is already set at a.yaml:2:14; set it in one file only"
    ]
