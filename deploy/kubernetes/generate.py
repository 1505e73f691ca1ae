"""Writes the two manifests that are copies of files kept elsewhere, so each has one source of truth.

- `prometheusrule.yaml`: the rule groups of `monitoring/alerts.yml`, as a Prometheus Operator PrometheusRule;
- `policies-configmap.yaml`: the policy files under `policies/` (what `tlsgate run --policy policies/` loads),
  as the ConfigMap the pods mount at `/app/policies`. A policy with errors is refused here, before it reaches
  a cluster, with the same file:line:column messages as `tlsgate validate`.

    python deploy/kubernetes/generate.py           # rewrite both after editing alerts.yml or policies/
    python deploy/kubernetes/generate.py --check   # exit 1 if either is stale (the tests run this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ALERTS = REPO / "monitoring" / "alerts.yml"
POLICIES = REPO / "policies"
NAMESPACE = "tlsgate"
LABELS = {"app.kubernetes.io/name": "tlsgate"}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so a PromQL expression or a policy reads as it does in its source."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def _dump(header: str, document: dict[str, Any]) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return header + body


def prometheus_rule() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tlsgate", "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {"groups": groups},
    }
    header = (
        "# Generated from monitoring/alerts.yml by deploy/kubernetes/generate.py: edit that file, then run it.\n"
        "# Your Prometheus selects rules by label (kube-prometheus-stack: `release: <its release name>`).\n"
    )
    return _dump(header, document)


def policy_configmap() -> str:
    sys.path.insert(0, str(REPO))  # run as a script from a checkout
    from tlsgate.policy import PolicyError, load_policy
    from tlsgate.policy.loader import policy_files

    try:
        load_policy([POLICIES])
    except PolicyError as exc:
        raise SystemExit(f"policies/ has errors; not writing the ConfigMap:\n{exc}") from None
    files, _ = policy_files([POLICIES])
    data = {path.name: path.read_text(encoding="utf-8") for path in files}
    document = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "tlsgate-policies", "namespace": NAMESPACE, "labels": dict(LABELS)},
        "data": data,
    }
    header = (
        "# Generated from policies/*.yaml by deploy/kubernetes/generate.py: edit those files, then run it and apply.\n"
        "# Mounted at /app/policies; running pods reload it by themselves (the kubelet updates the volume within\n"
        "# about a minute, tlsgate checks every second). A broken edit is refused by the generator.\n"
    )
    return _dump(header, document)


OUTPUTS = {"prometheusrule.yaml": prometheus_rule, "policies-configmap.yaml": policy_configmap}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated manifest differs from its source")
    args = parser.parse_args(argv)
    stale = []
    for name, render in OUTPUTS.items():
        text = render()
        target = HERE / name
        current = target.read_text() if target.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            target.write_text(text)
            print(f"wrote {target}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python deploy/kubernetes/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
