"""A probe catalogue per device: `devices:` entries with their own `probes` / `probe_fraction`, read, refused when
hostile, resolved against each host's rule, and applied by the client audit (the live run is in
tests/live/test_device_probes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import connection, tls
from mitmproxy.proxy.context import Context
from mitmproxy.test import tflow

from tests.certgen import make_chain
from tests.docs import section as docs_section
from tests.unit.test_addons import Gate, client_hello
from tests.unit.test_policy_hostile import YAML_VALUES, assert_refused_or_loaded
from tests.unit.test_quic import gate  # noqa: F401 - `gate` is a fixture
from tlsgate.checks.campaign import device_kinds, policy_kinds
from tlsgate.policy import PolicyError, load_policy, load_texts
from tlsgate.policy.loader import display_path
from tlsgate.policy.model import DeviceProbes
from tlsgate.policy.sections.client import Catalogue, catalogue
from tlsgate.tls.probes import PROBE_KINDS, ProbeMint

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "policies" / "tlsgate-policy.schema.json").read_text())

POLICY = """\
version: 1
devices:
  127.0.0.2: {name: pixel-7, probes: [wrong_host, self_signed], probe_fraction: 0.5}
  127.0.0.3: {name: control, probes: []}
  127.0.0.4: plain-name
  '::2': pixel-7
rules:
  - hosts: [api.test]
    client:
      probes: [expired]
  - hosts: [pay.test]
    client:
      probes: []
  - hosts: [cdn.test]
    client:
      min_version: "1.2"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_texts([("p.yaml", text)])
    return [str(m) for m in caught.value.messages]


# -- reading ------------------------------------------------------------------------------------------------------


def test_a_device_entry_is_a_name_as_before_or_a_mapping_with_its_own_probes() -> None:
    policy = load_texts([("p.yaml", POLICY)])
    assert policy.devices == {"127.0.0.2": "pixel-7", "127.0.0.3": "control", "127.0.0.4": "plain-name", "::2": "pixel-7"}
    pixel = policy.probes_of("pixel-7")
    assert pixel == DeviceProbes("pixel-7", pixel.location, ("wrong_host", "self_signed"), 0.5)
    assert str(pixel.location) == "p.yaml:3:3"
    assert policy.probes_of("control") == DeviceProbes("control", policy.probes_of("control").location, (), None)
    assert policy.probes_of("plain-name") is None and policy.probes_of(None) is None
    assert policy.device_for("::2") == "pixel-7"  # one device, two addresses: the settings belong to the name


def test_probes_all_is_every_kind_and_a_mapping_with_only_a_name_sets_nothing() -> None:
    policy = load_texts([("p.yaml", "version: 1\ndevices:\n  10.0.0.2: {name: a, probes: all}\n  10.0.0.3: {name: b}\n")])
    assert policy.probes_of("a").probes == PROBE_KINDS and len(PROBE_KINDS) == 18
    assert policy.probes_of("b") is None and policy.device_for("10.0.0.3") == "b"


def test_the_default_policy_and_name_only_devices_have_no_device_probes() -> None:
    assert load_policy([str(ROOT / "policies")]).device_probes == {}
    for example in sorted((ROOT / "policies" / "examples").glob("*.yaml")):
        assert load_policy([str(example)]).device_probes == {}, example


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  10.0.0.2: {name: a, probes: 5}", "p.yaml:3:31: the probes of device 'a' must be a list of probe kinds"),
        ("  10.0.0.2: {name: a, probes: some}", "or [] (never probe this device), not 'some'"),
        ("  10.0.0.2: {name: a, probes: {self_signed: 1}}", "must be a list of probe kinds ([self_signed, wrong_host"),
        ("  10.0.0.2: {name: a, probes: [self_signed, bogus]}", "each entry of the probes of device 'a' must be one of"),
        ("  10.0.0.2: {name: a, probes: [expired, expired]}", "probe 'expired' is listed twice in the probes of device 'a'"),
        ("  10.0.0.2: {name: a, probe_fraction: 0}", "the probe_fraction of device 'a' must be a number above 0 and at most 1"),
        ("  10.0.0.2: {name: a, probe_fraction: '0.5'}", "probe_fraction of device 'a' must be a number above 0"),
        ("  10.0.0.2: {name: a, probe_fraction: .nan}", "not nan"),
        ("  10.0.0.2: {name: a, probes: [], probe_fraction: 0.5}", "device 'a' has probes: [] (never probed): drop its"),
        ("  10.0.0.2: {name: a, probe: all}", "p.yaml:3:23: unknown key 'probe' in the device entry for 10.0.0.2; did you mean"),
        ("  10.0.0.2: {probes: all}", "p.yaml:3:13: the device entry for 10.0.0.2 needs a name: {name: pixel-7"),
        ("  10.0.0.2: {name: [a]}", "the device name for 10.0.0.2 must be a non-empty string, not a list"),
        ("  10.0.0.2: {name: 'my phone', probes: all}", "device name 'my phone' must be 1-64 letters"),
        ("  10.0.0.2: [pixel-7, all]", "p.yaml:3:13: the device entry for 10.0.0.2 must be a name (pixel-7) or a mapping"),
        ("  10.0.0.2: 7", "the device name for 10.0.0.2 must be a non-empty string, not a number"),
        ("  10.0.0.2: {name: a, name: b}", "duplicate key 'name' in the device entry for 10.0.0.2"),
        (
            "  10.0.0.2: {name: a, probes: all}\n  10.0.0.3: {name: a, probes: [expired]}",
            "p.yaml:4:13: device 'a' already has probe settings at p.yaml:3:3; write them once",
        ),
    ],
)
def test_hostile_device_entries_are_refused_where_written_with_what_to_change(text: str, expected: str) -> None:
    errors = errors_of(f"version: 1\ndevices:\n{text}\n")
    assert any(expected in e for e in errors), errors
    assert all(e.startswith("p.yaml:") for e in errors)


def test_a_huge_probe_list_is_one_message_not_one_per_entry() -> None:
    kinds = ", ".join(["expired"] * 100_000)
    for text in (
        f"version: 1\ndevices:\n  10.0.0.2: {{name: a, probes: [{kinds}]}}\n",
        f"version: 1\nrules:\n  - hosts: a.test\n    client:\n      probes: [{kinds}]\n",
    ):
        (error,) = errors_of(text)
        assert "lists 100000 entries, but there are 18 probe kinds and each is listed once" in error


def test_the_same_name_may_name_more_addresses_and_any_one_entry_may_give_its_probes() -> None:
    policy = load_texts([("p.yaml", "version: 1\ndevices:\n  10.0.0.2: a\n  '2001:db8::2': {name: a, probes: [expired]}\n")])
    assert policy.device_for("10.0.0.2") == policy.device_for("2001:db8::2") == "a"
    assert policy.probes_of("a").probes == ("expired",)


@pytest.mark.parametrize(
    "devices",
    [
        {"10.0.0.2": {"name": "a", "probes": "some"}},
        {"10.0.0.2": {"name": "a", "probes": ["expired", "expired"]}},
        {"10.0.0.2": {"name": "a", "probes": ["bogus"]}},
        {"10.0.0.2": {"name": "a", "probe_fraction": 0}},
        {"10.0.0.2": {"name": "a", "probe_fraction": 1.5}},
        {"10.0.0.2": {"name": "a", "probe": "all"}},
        {"10.0.0.2": {"probes": "all"}},
        {"10.0.0.2": ["a"]},
        {"10.0.0.2": {"name": "my phone"}},
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(devices: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"devices": devices}, SCHEMA)
    with pytest.raises(PolicyError):
        load_texts([("p.yaml", yaml.safe_dump({"version": 1, "devices": devices}))])


def test_the_schema_accepts_every_shape_the_loader_accepts() -> None:
    data = yaml.safe_load(POLICY)
    jsonschema.validate(data, SCHEMA)
    jsonschema.validate({"devices": {"10.0.0.2": {"name": "a", "probes": "all", "probe_fraction": 0.1}}}, SCHEMA)


# -- the effective catalogue --------------------------------------------------------------------------------------


def test_the_effective_catalogue_per_device_and_host() -> None:
    policy = load_texts([("p.yaml", POLICY)])
    pixel, control = policy.probes_of("pixel-7"), policy.probes_of("control")
    device_entry = pixel.location

    # no device settings: exactly the rule's list and fraction, as before
    assert catalogue(policy.match("api.test"), None) == Catalogue(("expired",), 1.0)
    assert catalogue(policy.match("other.test"), None) == Catalogue((), 1.0)
    # the device's list replaces the rule's, on hosts a rule names and on hosts none does
    assert catalogue(policy.match("api.test"), pixel) == Catalogue(("wrong_host", "self_signed"), 0.5, device_entry)
    assert catalogue(policy.match("other.test"), pixel) == Catalogue(("wrong_host", "self_signed"), 0.5, device_entry)
    assert catalogue(policy.match("cdn.test"), pixel).kinds == ("wrong_host", "self_signed")  # client: without probes
    # a rule that says probes: [] keeps its hosts unprobed for every device
    assert catalogue(policy.match("pay.test"), pixel).kinds == ()
    # a control device is never probed, even where the rule lists probes
    assert catalogue(policy.match("api.test"), control) == Catalogue((), 1.0)


def test_a_device_fraction_alone_keeps_the_rules_lists() -> None:
    policy = load_texts(
        [
            (
                "p.yaml",
                POLICY.replace(
                    "{name: pixel-7, probes: [wrong_host, self_signed], probe_fraction: 0.5}",
                    "{name: pixel-7, probe_fraction: 0.25}",
                ),
            )
        ]
    )
    pixel = policy.probes_of("pixel-7")
    assert catalogue(policy.match("api.test"), pixel) == Catalogue(("expired",), 0.25)  # the rule's list: the rule decided
    assert catalogue(policy.match("other.test"), pixel).kinds == ()


def test_the_defaults_list_written_or_not_is_replaced_by_the_devices() -> None:
    text = "version: 1\ndefaults:\n  client:\n    probes: []\ndevices:\n  10.0.0.2: {name: a, probes: [expired]}\n"
    policy = load_texts([("p.yaml", text)])
    assert catalogue(policy.match("any.test"), policy.probes_of("a")).kinds == ("expired",)


def test_a_campaign_is_judged_against_the_devices_own_list() -> None:
    policy = load_texts([("p.yaml", POLICY)])
    assert policy_kinds(policy) == ("expired",)
    assert device_kinds(policy, "pixel-7") == ("wrong_host", "self_signed")
    assert device_kinds(policy, "control") == ()
    assert device_kinds(policy, "plain-name") == device_kinds(policy, "127.0.0.9") == ("expired",)


# -- the client audit applies it ----------------------------------------------------------------------------------


def hello_from(gate: Gate, address: str, sni: str) -> connection.Client:  # noqa: F811
    client = tflow.tclient_conn()
    client.peername = (address, 40000)
    client.transport_protocol = "tcp"
    gate.audit.tls_clienthello(tls.ClientHelloData(Context(client, gate.tctx.options), tls.ClientHello(client_hello(sni=sni))))
    return client


def probed(gate: Gate, client: connection.Client) -> str | None:  # noqa: F811
    state = gate.connections.peek(client)
    assert state is not None and state.audit is not None
    return state.audit.run.kind if state.audit.run is not None else None


def test_the_audit_probes_a_catalogue_device_everywhere_and_a_control_device_nowhere(gate: Gate) -> None:  # noqa: F811
    gate.policy_path.write_text(POLICY.replace(", probe_fraction: 0.5", ""))
    gate.tctx.configure(gate.store, tlsgate_policy=[str(gate.policy_path)])
    root = make_chain().root
    gate.audit._mint, gate.audit._mint_source = ProbeMint(root.key, root.cert), None

    # a host no rule names: the device's own list, in its order, once per kind
    assert [probed(gate, hello_from(gate, "127.0.0.2", "other.test")) for _ in range(3)] == ["wrong_host", "self_signed", None]
    assert probed(gate, hello_from(gate, "127.0.0.2", "api.test")) == "wrong_host"  # the rule's [expired] is replaced
    assert probed(gate, hello_from(gate, "127.0.0.2", "pay.test")) is None  # the rule's probes: [] wins
    assert probed(gate, hello_from(gate, "127.0.0.3", "api.test")) is None  # the control phone
    assert probed(gate, hello_from(gate, "127.0.0.4", "api.test")) == "expired"  # a name-only device: the rule's list
    assert probed(gate, hello_from(gate, "127.0.0.4", "other.test")) is None

    summaries = {issue.evidence["device"]: issue for issue in gate.audit.campaigns()}
    assert set(summaries) == {"pixel-7", "plain-name"}, "the control device has no campaign"
    assert [row["kind"] for row in summaries["pixel-7"].evidence["probes"]] == ["wrong_host", "self_signed"]
    assert [row["kind"] for row in summaries["plain-name"].evidence["probes"]] == ["expired"]


def test_a_probe_the_devices_list_chose_points_at_the_devices_entry_and_a_rules_probe_at_the_rule(gate: Gate) -> None:  # noqa: F811
    gate.policy_path.write_text(POLICY)
    gate.tctx.configure(gate.store, tlsgate_policy=[str(gate.policy_path)])
    root = make_chain().root
    gate.audit._mint, gate.audit._mint_source = ProbeMint(root.key, root.cert), None
    clients = [hello_from(gate, "127.0.0.2", "other.test") for _ in range(2)]  # 0.5: the second is probed
    clients.append(hello_from(gate, "127.0.0.4", "api.test"))  # the rule's expired
    assert [probed(gate, c) for c in clients] == [None, "wrong_host", "expired"]
    for client in clients[1:]:  # the handshake completed, then the client hung up without a request: it refused
        state = gate.connections.peek(client)
        assert state is not None and state.audit is not None and state.audit.run is not None
        state.audit.run.handshake_done = True
        gate.audit.client_disconnected(client)
    rules = {f["evidence"]["kind"]: f["rule"] for f in gate.findings() if f["check"] == "client_probe"}
    where = display_path(gate.policy_path)
    assert rules == {"wrong_host": f"{where}:3", "expired": f"{where}:8"}


def test_the_readmes_example_error_is_what_the_loader_says() -> None:
    section = docs_section("A catalogue per device")
    with pytest.raises(PolicyError) as caught:
        load_texts([("farm.yaml", "version: 1\ndevices:\n  127.0.0.2: {name: pixel-7, probes: 5}\n")])
    (message,) = caught.value.messages
    assert "`127.0.0.2: {name: pixel-7, probes: 5}`\n  on the third line of `farm.yaml`" in section
    assert f"`{message}`" in section


ENTRY_VALUES = st.one_of(
    YAML_VALUES,
    st.sampled_from(["all", [], ["expired"], ["expired", "expired"], 0.5, 0, "pixel-7", ["all"]]),
)
DEVICE_ENTRIES = st.dictionaries(
    st.sampled_from(["10.0.0.2", "10.0.0.3", "2001:db8::2", "10.1.0.0/16", "phone"]),
    st.one_of(
        st.sampled_from(["pixel-7", "a", "my phone"]),
        st.dictionaries(st.sampled_from(["name", "probes", "probe_fraction", "probe", "Name"]), ENTRY_VALUES, max_size=4),
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DEVICE_ENTRIES)
def test_hostile_device_entries_never_escape_the_loader(devices: dict) -> None:
    assert_refused_or_loaded(yaml.safe_dump({"version": 1, "devices": devices}, allow_unicode=True))
