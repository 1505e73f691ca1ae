"""Hostile policies: every one is refused with file:line:column, at start, in `validate` and at hot reload.

The cases are the ones an adversarial run found (4,126 generated policies, 665
escaped as tracebacks or a segfault); the fuzz tests keep finding new ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.test import taddons

from tlsgate.addons.policy import PolicyStore
from tlsgate.policy import Policy, PolicyError, load_policy
from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.loader import display_path, embedded_policy, load_texts

REPO = Path(__file__).resolve().parents[2]
LOCATED = re.compile(r"^(?P<file>[^\n]+?):(?P<line>\d+):(?P<column>\d+): ")
PINS = "[sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=]"

# name -> (policy text, the line:column the first error must point at, words it must contain)
HOSTILE = {
    "impossible date": (
        f"version: 1\npin_sets:\n  a:\n    expires: 2027-06-31\n    pins: {PINS}\n",
        "4:14",
        "day is out of range",
    ),
    "month 13": (f"version: 1\npin_sets:\n  a:\n    expires: 2027-13-01\n    pins: {PINS}\n", "4:14", "invalid value"),
    "year 0": (f"version: 1\npin_sets:\n  a:\n    expires: 0000-01-01\n    pins: {PINS}\n", "4:14", "invalid value"),
    "5,000-digit number": ("version: " + "9" * 5000 + "\n", "1:10", "4300 digits"),
    "python tag": ("version: !!python/name:os.system 1\n", "1:10", "not supported"),
    "python object": ("version: 1\ndefaults: !!python/object/apply:os.system [true]\n", "2:11", "not supported"),
    "merge key": ("version: 1\nrules:\n  - {<<: {cleartext: allow}, hosts: a.test}\n", "3:6", "merge keys"),
    "alias bomb": (
        "version: 1\nrules:\n  - hosts: &a [a.test, b.test]\n  - hosts: *a\n",
        "3:12",
        "anchors and aliases",
    ),
    "lone surrogate key": ('version: 1\ndefaults: {"\\ud800x": 1}\n', "2:12", "unpaired surrogates"),
    "newline in a key": ('version: 1\ndefaults: {"a\\n[CRITICAL] forged": 1}\n', "2:12", "control characters"),
    "NUL in a host": ('version: 1\nrules:\n  - hosts: "a\\x00b.test"\n', "3:12", "control characters"),
    "raw NUL": ("version: 1\ndefaults:\n  cleartext: bl\x00ock\n", "3:16", "U+0000"),
    "raw control character": ("version: 1\n\n\x07rules: []\n", "3:1", "U+0007"),
    "set tag": ("version: 1\nrules: !!set {a, b}\n", "2:8", "not supported"),
    "binary tag": ("version: 1\nrules:\n  - hosts: !!binary aGVsbG8=\n", "3:12", "not supported"),
    "30,000 nested lists": ("version: 1\nrules: " + "[" * 30_000 + "]" * 30_000 + "\n", "2:", "nested more than"),
    "deep block nesting": ("version: 1\nrules:\n" + "".join(" " * i + "-\n" for i in range(3000)), "", "nested more than"),
    "deep mappings": ("version: 1\nrules:\n" + "".join(" " * i + "a:\n" for i in range(3000)), "", "nested more than"),
}


def first_error(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", text)])
    message = str(caught.value).splitlines()[0]
    message.encode("utf-8")  # printable on any UTF-8 console
    return message


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_policies_are_refused_where_written(name: str) -> None:
    text, where, words = HOSTILE[name]
    message = first_error(text)
    assert message.startswith(f"p.yaml:{where}"), message
    assert words in message


def test_values_that_were_reported_are_not_reported_again() -> None:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", 'version: 1\nrules:\n  - hosts: "a\\x00b.test"\n    cleartext: !!binary eA==\n')])
    assert [str(m) for m in caught.value.messages] == [
        "p.yaml:3:12: text contains control characters or unpaired surrogates",
        "p.yaml:4:16: YAML tag '!!binary' not supported in policies",
    ]


def test_messages_escape_what_the_file_says() -> None:
    message = first_error('version: 1\n"a\\nb\\u0085c": 1\n')
    assert "\n" not in message and "\x85" not in message


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yn, "MAX_BYTES", 2 << 20)
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\n" + "# padding\n" * 300_000)
    with pytest.raises(PolicyError, match=r"big\.yaml:1:1: policy file is larger than 2 MiB"):
        load_policy([big])


def test_a_file_that_is_not_utf8_is_refused_at_the_byte(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b'version: 1\nrules:\n  - hosts: "a\xffb"\n')
    with pytest.raises(PolicyError, match=r"bad\.yaml:3:14: policy files are UTF-8 text; byte 0xff is not"):
        load_policy([bad])


def test_validate_refuses_a_50000_deep_document_without_crashing(tmp_path: Path) -> None:
    """libyaml's composer recursed in C: this was a segfault (exit -11), not even a traceback."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("version: 1\nrules: " + "[" * 50_000 + "]" * 50_000 + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "tlsgate", "validate", str(deep)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(r"deep\.yaml:2:\d+: nested more than 64 levels deep", result.stdout + result.stderr)


def test_an_internal_error_is_a_located_refusal_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlsgate.policy import loader

    def explode(self: object, name: str, text: str) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(loader._Builder, "add_file", explode)
    assert (
        first_error("version: 1\n")
        == "p.yaml:1:1: tlsgate could not read this policy (KeyError); this is a tlsgate bug, please report it"
    )


# -- fuzzing ------------------------------------------------------------------------------------------

SEEDS = [embedded_policy().read_text(), *(p.read_text() for p in sorted((REPO / "policies/examples").glob("*.yaml")))]
TOKENS = [
    "&a ",
    "*a",
    "<<: ",
    "!!python/name:os.system ",
    "!!binary ",
    "!!set ",
    "!!timestamp ",
    "? ",
    "- ",
    ": ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "\n  ",
    "\t",
    "#",
    "'",
    '"',
    "\\",
    "\\ud800",
    "\\x00",
    "\x00",
    "\x07",
    "\x85",
    "\ufeff",
    "\ud800",
    "2027-06-31",
    "2027-13-01",
    "0000-01-01",
    "9" * 4400,
    "1e999",
    ".nan",
    "~",
    "null",
    "yes",
    "0x",
    "0o8",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "|\n",
    ">-\n",
    "hosts",
    "pins",
    "sha256/",
    "*.",
    "**",
    "tls",
    "min_version",
    "1.0",
    "devices",
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(("insert", "delete", "duplicate", "nest")))
        if action == "insert":
            text = text[:at] + draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8))) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)) :]
        elif action == "duplicate":
            end = min(len(text), at + draw(st.integers(1, 200)))
            text = text[:end] + text[at:end] + text[end:]
        else:
            depth = draw(st.integers(1, 200))
            text = text[:at] + "[" * depth + "]" * depth + text[at:]
    return text


def assert_refused_or_loaded(text: str) -> None:
    try:
        policy = load_texts([("fuzz.yaml", text)])
    except PolicyError as exc:
        assert exc.messages, "a refusal names at least one problem"
        for message in exc.messages:
            line = str(message)
            line.encode("utf-8")
            assert "\n" not in line
            found = LOCATED.match(line)
            assert found and found["file"] == "fuzz.yaml" and int(found["line"]) >= 1 and int(found["column"]) >= 1, line
            # the internal-error boundary is for bugs: a mutation must not reach it
            assert "this is a tlsgate bug" not in line, line
        return
    assert isinstance(policy, Policy)
    policy.match("api.example.com")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_policies_never_escape_the_loader(text: str) -> None:
    assert_refused_or_loaded(text)


YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.dates()),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=30,
)
POLICY_SHAPED = st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), YAML_VALUES)},
    optional={
        "defaults": st.dictionaries(st.sampled_from(("mode", "cleartext", "tls", "pins", "client", "certificates")), YAML_VALUES),
        "rules": st.lists(st.dictionaries(st.sampled_from(("hosts", "name", "mode", "tls", "pins")), YAML_VALUES), max_size=3),
        "devices": YAML_VALUES,
        "pin_sets": YAML_VALUES,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(POLICY_SHAPED)
def test_policy_shaped_documents_never_escape_the_loader(document: dict) -> None:
    import yaml

    assert_refused_or_loaded(yaml.safe_dump(document, allow_unicode=True))


# -- hot reload -----------------------------------------------------------------------------------------


def bump(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


GOOD = "version: 1\nrules:\n  - hosts: [a.test]\n    cleartext: allow\n"


@pytest.mark.parametrize(
    "broken",
    [HOSTILE["lone surrogate key"][0], HOSTILE["impossible date"][0], "version: 1\nrules: " + "[" * 50_000 + "]" * 50_000 + "\n"],
    ids=["surrogate key", "impossible date", "50,000 deep"],
)
def test_reload_of_a_hostile_edit_fails_once_keeps_the_policy_and_keeps_watching(
    broken: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    store = PolicyStore()
    heard: list[str] = []
    store.subscribe(lambda result, _policy: heard.append(result))
    with taddons.context(store) as tctx:
        tctx.configure(store, tlsgate_policy=[str(path)])
        good = store.policy
        bump(path, broken)
        with caplog.at_level(logging.ERROR, logger="tlsgate.policy"):
            assert store.check_reload() is False and store.check_reload() is True
            assert store.check_reload() is False  # once, not every second
        assert store.policy is good and heard == ["ok", "failed"]
        assert re.search(rf"policy reload failed: {re.escape(display_path(path))}:\d+:\d+: ", caplog.text)
        assert "Traceback" not in caplog.text
        bump(path, GOOD.replace("a.test", "b.test"))  # the watcher still sees the next edit
        store.check_reload()
        assert store.check_reload() is True and store.policy is not good and heard[-1] == "ok"
        assert store.policy.match("b.test").pattern is not None


def test_the_watcher_loads_off_the_event_loop_and_survives(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    store = PolicyStore()
    heard: list[str] = []
    store.subscribe(lambda result, _policy: heard.append(result))

    async def drive() -> None:
        store.running()
        loop_ticks = 0
        try:
            for text, want in ((HOSTILE["lone surrogate key"][0], "failed"), (GOOD.replace("a.test", "c.test"), "ok")):
                bump(path, text)
                for _ in range(200):  # bounded: 10 s
                    await asyncio.sleep(0.05)
                    loop_ticks += 1
                    if heard[-1] == want:
                        break
                assert heard[-1] == want
        finally:
            store.done()
        assert loop_ticks > 0

    with taddons.context(store) as tctx:
        tctx.configure(store, tlsgate_policy=[str(path)], tlsgate_policy_reload=0.05)
        asyncio.run(drive())
    assert heard == ["ok", "failed", "ok"]
    assert store.policy.match("c.test").pattern is not None


def test_policy_paths_shown_to_clients_are_never_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Block pages and `X-Tlsgate-Rule` carry the rule reference: it must not map the proxy host's disk."""
    policy = tmp_path / "etc" / "tlsgate" / "policy.yaml"
    policy.parent.mkdir(parents=True)
    policy.write_text("version: 1\ndefaults:\n  mode: enforce\n")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_policy([policy])
    assert loaded.files == ("tlsgate/policy.yaml",) and loaded.defaults_location.rule_ref == "tlsgate/policy.yaml:2"
    monkeypatch.chdir(tmp_path)
    assert load_policy([policy]).defaults_location.rule_ref == "etc/tlsgate/policy.yaml:2"  # as typed from here
    assert display_path(embedded_policy()) == "policies/default.yaml"
    assert display_path(Path("/policy.yaml")) == "policy.yaml"
