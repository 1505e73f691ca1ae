"""The policy core on its own: located errors, precedence, merging. Pure, no proxy."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tlsgate.policy import Cleartext, Mode, PolicyError, load_policy, load_texts
from tlsgate.policy.hosts import is_address, normalize_host


def errors_of(text: str, name: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_texts([(name, text)])
    return [str(m) for m in caught.value.messages]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [\n  - hosts: a.test\n", "p.yaml:2:3: YAML syntax error: expected the node content"),
        ("defaults:\n  mode: enforce\n  mode: report\n", "p.yaml:3:3: duplicate key 'mode' in defaults (first at line 2)"),
        ("defaults:\n  moode: report\n", "p.yaml:2:3: unknown key 'moode' in defaults; did you mean 'mode'?"),
        ("rulez: []\n", "p.yaml:1:1: unknown key 'rulez' in the policy file; did you mean 'rules'?"),
        (
            "rules:\n  - hosts: a.test\n    cleartxt: allow\n",
            "p.yaml:3:5: unknown key 'cleartxt' in rule; did you mean 'cleartext'?",
        ),
        ("defaults:\n  mode: block\n", "p.yaml:2:9: defaults.mode must be one of enforce, report, not 'block'"),
        ("defaults:\n  cleartext: yes\n", "p.yaml:2:14: defaults.cleartext must be one of block, allow, not True"),
        ("defaults: [mode]\n", "p.yaml:1:11: defaults must be a mapping, not a list"),
        ("rules: {hosts: a.test}\n", "p.yaml:1:8: rules must be a list, not a mapping"),
        ("rules:\n  - mode: report\n", "p.yaml:2:5: a rule needs 'hosts'"),
        ("rules:\n  - hosts: []\n    mode: report\n", "p.yaml:2:12: hosts must not be empty"),
        ("rules:\n  - hosts: [42]\n", "p.yaml:2:13: each entry of hosts must be a non-empty string, not a number"),
        ("rules:\n  - hosts: 'https://a.test'\n", "p.yaml:2:12: host pattern 'https://a.test' has a scheme"),
        ("rules:\n  - hosts: 'a.*.test'\n", "p.yaml:2:12: host pattern 'a.*.test': '*' may only stand as the whole first label"),
        ("rules:\n  - hosts: '*'\n", "p.yaml:2:12: '*' alone is not a host pattern"),
        ("rules:\n  - hosts: 'a.test:443'\n", "p.yaml:2:12: host pattern 'a.test:443' has a port"),
        ("rules:\n  - hosts: '-bad.test'\n", "p.yaml:2:12: host pattern '-bad.test' has an invalid label '-bad'"),
        ("rules:\n  - hosts: 'a.test/api'\n", "p.yaml:2:12: host pattern 'a.test/api' has a path"),
        ("rules:\n  - hosts: '*.10.0.0.1'\n", "p.yaml:2:12: host pattern '*.10.0.0.1': an IP address cannot take a wildcard"),
        (
            "rules:\n  - hosts: a.test\n    mode: report\n  - hosts: [b.test, A.Test.]\n    mode: enforce\n",
            "p.yaml:4:21: host pattern 'A.Test.' is already listed at p.yaml:2:12",
        ),
        ("devices:\n  phone: pixel\n", "p.yaml:2:3: device address 'phone' is not an IP address or network"),
        ("devices:\n  10.0.0.2: 'my phone'\n", "p.yaml:2:13: device name 'my phone' must be 1-64 letters"),
        ("version: 2\n", "p.yaml:1:10: unsupported policy version; this tlsgate reads version 1"),
        ("- just\n- a list\n", "p.yaml:1:1: a policy file must be a mapping, not a list"),
        ("rules:\n  - hosts: a.test\n    name: ''\n", "p.yaml:3:11: rule name must be a non-empty string"),
    ],
)
def test_each_kind_of_invalid_policy_is_located(text: str, expected: str) -> None:
    messages = errors_of(text)
    assert any(m.startswith(expected) for m in messages), messages


def test_all_errors_are_reported_not_just_the_first() -> None:
    messages = errors_of("defaults:\n  mode: nope\nrules:\n  - hosts: 'x:1'\n  - hosts: a.test\n    cleartext: maybe\n")
    assert [m.split(":")[1] for m in messages] == ["2", "4", "6"]


def test_most_specific_match_wins() -> None:
    policy = load_texts(
        [
            (
                "p.yaml",
                "defaults:\n  mode: enforce\n  cleartext: block\nrules:\n"
                "  - hosts: '*.example.com'\n    cleartext: allow\n"
                "  - hosts: '*.api.example.com'\n    mode: report\n"
                "  - hosts: [login.api.example.com, 192.0.2.7, '::1']\n    cleartext: block\n",
            )
        ]
    )

    def where(host: str) -> tuple[int, Mode, Cleartext]:
        match = policy.match(host)
        return match.source.line, match.settings.mode, match.settings.get("cleartext")

    assert where("www.example.com") == (5, Mode.ENFORCE, Cleartext.ALLOW)
    assert where("a.b.example.com") == (5, Mode.ENFORCE, Cleartext.ALLOW)
    assert where("v2.api.example.com") == (7, Mode.REPORT, Cleartext.BLOCK)
    assert where("LOGIN.api.Example.com.") == (9, Mode.ENFORCE, Cleartext.BLOCK)
    assert where("example.com") == (1, Mode.ENFORCE, Cleartext.BLOCK)  # the apex is not a subdomain
    assert where("api.example.com") == (5, Mode.ENFORCE, Cleartext.ALLOW)
    assert where("192.0.2.7") == (9, Mode.ENFORCE, Cleartext.BLOCK)
    assert where("[0:0::1]") == (9, Mode.ENFORCE, Cleartext.BLOCK)
    assert where("notexample.com") == (1, Mode.ENFORCE, Cleartext.BLOCK)


def test_unicode_names_match_their_punycode() -> None:
    policy = load_texts([("p.yaml", "rules:\n  - hosts: 'bücher.example'\n    cleartext: allow\n")])
    assert policy.match("xn--bcher-kva.example").rule is not None
    assert policy.match("BÜCHER.example").rule is not None


def test_unicode_names_are_encoded_as_devices_encode_them_idna_2008() -> None:
    """Android, iOS, browsers and curl send `faß.de` as xn--fa-hia.de (UTS 46, non-transitional); IDNA 2003 gave
    fass.de, so a rule for faß.de matched a host the app never reaches and missed the one it does."""
    policy = load_texts([("p.yaml", "rules:\n  - hosts: ['faß.de', '*.straße.example', 'ς.gr']\n    cleartext: allow\n")])
    assert policy.match("xn--fa-hia.de").rule is not None
    assert policy.match("fass.de").rule is None
    assert policy.match("www.xn--strae-oqa.example").rule is not None
    assert policy.match("www.strasse.example").rule is None
    assert policy.match("xn--3xa.gr").rule is not None  # final sigma kept, not folded to σ (xn--4xa)
    assert policy.match("ＦＡß.de").rule is not None  # full-width letters map as UTS 46 says
    assert normalize_host("_dmarc.bücher.example") == "_dmarc.xn--bcher-kva.example"  # ASCII labels keep DNS's `_`


def test_a_look_alike_that_idna_2008_refuses_is_a_located_error() -> None:
    """U+2044 FRACTION SLASH passed IDNA 2003 as a letter of `evil⁄com.de`; IDNA 2008 refuses it."""
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", "rules:\n  - hosts: 'evil\u2044com.de'\n")])
    assert any("p.yaml:2:" in str(m) and "not a valid internationalised name" in str(m) for m in caught.value.messages)


def test_directory_merge_and_cross_file_conflicts(tmp_path: Path) -> None:
    (tmp_path / "10-base.yaml").write_text("defaults:\n  mode: report\nrules:\n  - hosts: a.test\n    cleartext: allow\n")
    (tmp_path / "20-team.yaml").write_text("rules:\n  - hosts: b.test\n    mode: enforce\n")
    (tmp_path / "notes.txt").write_text("ignored")
    policy = load_policy([tmp_path])
    assert policy.rule_count == 2 and policy.defaults.mode is Mode.REPORT
    assert [Path(f).name for f in policy.files] == ["10-base.yaml", "20-team.yaml"]
    (tmp_path / "30-dup.yaml").write_text("defaults:\n  mode: enforce\nrules:\n  - hosts: [a.test]\n")
    with pytest.raises(PolicyError) as caught:
        load_policy([tmp_path])
    text = [str(m) for m in caught.value.messages]
    assert any("30-dup.yaml:2:3: defaults.mode is already set at" in m and "10-base.yaml:2:3" in m for m in text), text
    assert any("30-dup.yaml:4:13: host pattern 'a.test' is already listed at" in m for m in text), text


def test_missing_paths_and_empty_directories(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy([tmp_path / "nope.yaml", tmp_path])
    text = [str(m) for m in caught.value.messages]
    assert any("nope.yaml:1:1: no such policy file" in m for m in text)
    assert any("directory has no *.yaml policy files" in m for m in text)


def test_empty_file_is_the_safe_default() -> None:
    policy = load_texts([("p.yaml", "# nothing yet\n")])
    assert policy.defaults.mode is Mode.ENFORCE and policy.defaults.get("cleartext") is Cleartext.BLOCK


def test_rule_setting_nothing_is_a_warning() -> None:
    policy = load_texts([("p.yaml", "rules:\n  - hosts: a.test\n")])
    assert [str(w) for w in policy.warnings] == ["p.yaml:2:5: warning: this rule sets nothing; its hosts get the defaults anyway"]


def test_devices_exact_then_longest_network() -> None:
    policy = load_texts(
        [("p.yaml", "devices:\n  10.0.0.0/8: lab\n  10.1.0.0/16: floor-1\n  10.1.2.3: pixel-7\n  '::1': local\n")]
    )
    assert policy.device_for("10.1.2.3") == "pixel-7"
    assert policy.device_for("10.1.9.9") == "floor-1"
    assert policy.device_for("10.200.0.1") == "lab"
    assert policy.device_for("::ffff:10.1.2.3") == "pixel-7"
    assert policy.device_for("::1") == "local"
    assert policy.device_for("192.0.2.1") is None


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.lists(labels, min_size=1, max_size=5), st.lists(labels, min_size=1, max_size=3))
def test_wildcard_matches_every_subdomain_and_never_the_apex(base: list[str], sub: list[str]) -> None:
    apex = ".".join(base)
    assume(not all(label.isdigit() for label in base))  # an all-numeric name is an IP address: no wildcard
    policy = load_texts([("p.yaml", f"rules:\n  - hosts: '*.{apex}'\n    cleartext: allow\n")])
    assert policy.match(".".join([*sub, apex]).upper()).rule is not None
    assert policy.match(apex).rule is None
    assert normalize_host(apex + ".") == apex


def test_shipped_policies_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "policies"
    load_policy([root])
    for path in sorted(root.rglob("*.yaml")):
        assert not load_policy([path]).warnings, path


@given(st.one_of(st.text(max_size=45), st.ip_addresses().map(str), st.ip_addresses(v=6).map(lambda a: f"[{a}]")))
def test_is_address_agrees_with_ipaddress_on_any_string(text: str) -> None:
    """The shortcut for names (no colon, no final digit) never turns away a literal ipaddress accepts."""
    try:
        ipaddress.ip_address(text.strip("[]"))
        expected = True
    except ValueError:
        expected = False
    assert is_address(text) is expected
