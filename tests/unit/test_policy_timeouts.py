"""The `timeouts:` policy section: per-host upstream limits, hostile values refused where written, key-by-key rules."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tlsgate.checks import faults
from tlsgate.policy import PolicyError, load_texts
from tlsgate.policy.sections.timeouts import TIMEOUT_KEYS, TimeoutRules

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "policies" / "tlsgate-policy.schema.json").read_text())

POLICY = """\
version: 1
defaults:
  timeouts:
    connect: 5
    response_head: 30
rules:
  - name: long-poll
    hosts: poll.test
    timeouts:
      response_head: 300
  - name: report-only
    hosts: other.test
    mode: report
  - name: quick
    hosts: "*.quick.test"
    timeouts: {handshake: 2.5, response_idle: 8}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", text)])
    return [str(m) for m in caught.value.messages]


def timeouts_of(text: str, host: str) -> TimeoutRules | None:
    return load_texts([("p.yaml", text)]).match(host).settings.get("timeouts")


def test_a_rule_overrides_the_defaults_key_by_key_and_every_value_keeps_its_line() -> None:
    poll = timeouts_of(POLICY, "poll.test")
    assert poll is not None and poll.response_head is not None and poll.connect is not None
    assert (poll.response_head.seconds, poll.response_head.location.rule_ref) == (300.0, "p.yaml:10")
    assert (poll.connect.seconds, poll.connect.location.rule_ref) == (5.0, "p.yaml:4")  # kept from the defaults
    assert poll.handshake is None and poll.response_idle is None  # the options decide
    quick = timeouts_of(POLICY, "a.b.quick.test")
    assert quick is not None and quick.handshake is not None and quick.response_idle is not None
    assert (quick.handshake.seconds, quick.response_idle.seconds, quick.response_head.seconds) == (2.5, 8.0, 30.0)
    for host in ("other.test", "nowhere.test"):  # a rule without timeouts:, and no rule: the defaults' values
        rules = timeouts_of(POLICY, host)
        assert rules is not None and rules.response_head is not None and rules.response_head.seconds == 30.0


def test_without_a_timeouts_section_every_host_gets_the_options() -> None:
    text = "version: 1\nrules:\n  - hosts: a.test\n    mode: report\n"
    assert timeouts_of(text, "a.test") is None
    limit = faults.limit_for(faults.RESPONSE_HEAD, None, 120.0)
    assert (limit.seconds, limit.source, limit.set_at) == (120.0, "tlsgate_response_head_timeout", None)


def test_a_rule_alone_sets_only_its_keys_and_the_options_fill_the_rest() -> None:
    text = "version: 1\nrules:\n  - hosts: a.test\n    timeouts: {response_head: 5}\n"
    rules = timeouts_of(text, "a.test")
    head = faults.limit_for(faults.RESPONSE_HEAD, rules, 120.0)
    connect = faults.limit_for(faults.CONNECT, rules, 10.0)
    assert (head.seconds, head.source) == (5.0, "timeouts.response_head at p.yaml:4")
    assert (connect.seconds, connect.source) == (10.0, "tlsgate_connect_timeout")
    assert timeouts_of(text, "b.test") is None


def test_the_finding_names_the_limit_that_applied() -> None:
    rules = timeouts_of(POLICY, "poll.test")
    own = faults.timeout_issue(faults.limit_for(faults.RESPONSE_HEAD, rules, 120.0))
    assert "within 300 s (timeouts.response_head at p.yaml:10)" in own.detail
    assert own.evidence == {
        "phase": "response_head",
        "timeout_s": 300.0,
        "option": "tlsgate_response_head_timeout",
        "policy_key": "timeouts.response_head",
        "set_at": "p.yaml:10",
    }
    assert "raise timeouts.response_head at p.yaml:10" in own.remedy
    default = faults.timeout_issue(faults.limit_for(faults.TLS_HANDSHAKE, rules, 15.0))
    assert "within 15 s (tlsgate_tls_handshake_timeout)" in default.detail and "set_at" not in default.evidence
    assert "--set tlsgate_tls_handshake_timeout=SECONDS" in default.remedy
    for issue in (own, default):  # what an app's own timeout means next to tlsgate's, in the 504 page too
        assert "OkHttp" in issue.remedy and "URLSession after 60 s" in issue.remedy and "client_gave_up" in issue.remedy


def test_a_handshake_limit_survives_the_trip_through_mitmproxys_error_text() -> None:
    rules = timeouts_of(POLICY, "x.quick.test")
    for limit in (faults.limit_for(faults.TLS_HANDSHAKE, rules, 15.0), faults.limit_for(faults.TLS_HANDSHAKE, None, 15.0)):
        issue = faults.timeout_from_text(faults.timeout_text(limit))
        assert issue is not None and issue == faults.timeout_issue(limit)


def test_phases_and_policy_keys_are_the_same_four() -> None:
    assert tuple(phase.key for phase in faults.PHASES) == TIMEOUT_KEYS


# name -> (the value as written, the words of its error)
HOSTILE = {
    "zero": ("0", "at least 1 second, not 0 (there is no 'never'"),
    "negative": ("-5", "at least 1 second, not -5"),
    "fraction below a second": ("0.5", "at least 1 second, not 0.5"),
    "huge": ("1.0e+12", "at most 86400 seconds (a day), not 1e+12"),
    "exponent without a dot (YAML text)": ("1e12", "not the text '1e12'"),
    "a day and a second": ("86401", "at most 86400 seconds"),
    "many digits": ("9" * 400, "at most 86400 seconds (a day), not a 400-digit number"),
    "many digits, negative": ("-" + "9" * 400, "at least 1 second, not a 400-digit negative number (there is no 'never'"),
    "NaN": (".nan", "a finite number of seconds (1 to 86400), not '.nan'"),
    "infinity": (".inf", "a finite number of seconds"),
    "minus infinity": ("-.inf", "a finite number of seconds"),
    "string with a unit": ('"30s"', "not the text '30s' (write 30: the unit is always seconds)"),
    "minutes": ("2 min", "not the text '2 min' (write 2: the unit is always seconds)"),
    "words": ("forever", "must be a number of seconds (1 to 86400), not the text 'forever'"),
    "empty": ("", "must be a number of seconds (1 to 86400), not empty (null)"),
    "boolean": ("false", "not a boolean"),
    "list": ("[10, 20]", "not a list"),
    "mapping": ("{seconds: 10}", "not a mapping"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("where", ["defaults", "rule"])
def test_hostile_values_are_refused_where_they_are_written(name: str, where: str) -> None:
    value, words = HOSTILE[name]
    if where == "defaults":
        text, line = f"version: 1\ndefaults:\n  timeouts:\n    response_head: {value}\n", 4
    else:
        text, line = f"version: 1\nrules:\n  - hosts: a.test\n    timeouts:\n      response_head: {value}\n", 5
    (message,) = errors_of(text)
    assert message.startswith(f"p.yaml:{line}:"), message
    assert f"{where}.timeouts.response_head must be" in message and words in message, message


def test_unknown_keys_and_a_section_that_is_not_a_mapping_are_located() -> None:
    (typo,) = errors_of("version: 1\ndefaults:\n  timeouts:\n    response_heads: 5\n")
    assert typo.startswith("p.yaml:4:5:") and "did you mean 'response_head'" in typo
    (scalar,) = errors_of("version: 1\ndefaults:\n  timeouts: 30\n")
    assert scalar.startswith("p.yaml:3:13:") and "timeouts (seconds per phase) must be a mapping" in scalar
    every = errors_of("version: 1\ndefaults:\n  timeouts: {connect: 0, handshake: x, response_head: .nan, response_idle: -1}\n")
    assert len(every) == 4  # every problem at once, not the first only


@pytest.mark.parametrize(
    "timeouts",
    [
        {"connect": 0},
        {"handshake": -1},
        {"response_head": 86401},
        {"response_idle": "30s"},
        {"response_head": True},
        {"connect": None},
        {"idle": 30},
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(timeouts: dict) -> None:
    policy = {"version": 1, "rules": [{"hosts": "a.test", "timeouts": timeouts}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(policy, SCHEMA)
    with pytest.raises(PolicyError):
        load_texts([("p.yaml", yaml.safe_dump(policy))])


def test_the_schema_accepts_what_the_loader_accepts() -> None:
    data = yaml.safe_load(POLICY)
    jsonschema.validate(data, SCHEMA)
    load_texts([("p.yaml", POLICY)])
