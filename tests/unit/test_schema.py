"""The JSON Schema editors use must agree with the loader, or autocomplete lies to users."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tlsgate.policy import loader
from tlsgate.policy.schema import build_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "policies" / "tlsgate-policy.schema.json").read_text())


def test_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_keys_match_the_loader() -> None:
    assert set(SCHEMA["properties"]) == set(loader.top_keys())
    assert set(SCHEMA["$defs"]["settings"]["properties"]) == set(loader.setting_keys())
    assert set(SCHEMA["$defs"]["rule"]["properties"]) == set(loader.rule_keys())


def test_schema_file_is_what_the_sections_build() -> None:
    """Regenerate with `python -m tlsgate.policy.schema > policies/tlsgate-policy.schema.json`."""
    assert build_schema() == SCHEMA


@pytest.mark.parametrize("path", sorted((ROOT / "policies").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policies_satisfy_the_schema(path: Path) -> None:
    # Editors' YAML servers see dates as strings; a JSON round trip does the same here.
    data = json.loads(json.dumps(yaml.safe_load(path.read_text()) or {}, default=str))
    jsonschema.validate(data, SCHEMA)


@pytest.mark.parametrize(
    "policy",
    [
        {"defaults": {"mode": "block"}},
        {"rules": [{"mode": "report"}]},
        {"rules": [{"hosts": "a.test", "cleartxt": "allow"}]},
        {"rules": [{"hosts": "https://a.test/"}]},
        {"rules": [{"hosts": []}]},
        {"devices": {"10.0.0.1": "my phone"}},
        {"version": 2},
        {"defaults": {"tls": {"min_version": "1.4"}}},
        {"defaults": {"tls": {"ciphers": "strong"}}},
        {"pin_sets": {"a": {"pins": ["sha1/AAAA"]}}},
        {"defaults": {"certificates": {"min_rsa_bits": 512}}},
        {"defaults": {"client": {"min_version": "1.4"}}},
        {"defaults": {"client": {"weak_suites": "block"}}},
        {"defaults": {"client": {"require_sni": "yes"}}},
        {"defaults": {"client": {"probes": ["self_signed", "bad_signature"]}}},
        {"defaults": {"client": {"probes": ["expired", "expired"]}}},
        {"defaults": {"client": {"probes": "self_signed"}}},
        {"rules": [{"hosts": "a.test", "client": {"probe": ["expired"]}}]},
    ],
)
def test_schema_rejects_what_the_loader_rejects(policy: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(policy, SCHEMA)
    with pytest.raises(loader.PolicyError):
        loader.load_texts([("p.yaml", yaml.safe_dump(policy))])
