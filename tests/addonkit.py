"""tlsgate's add-ons wired as `tlsgate run` wires them, under mitmproxy's test context, with a policy and a findings file.

The unit tests of the add-ons and the payload corpus all need the same set-up:
every add-on from `make_addons()`, the policy store pointed at a policy text,
the findings sink at a file, and a way to pick one add-on out by its class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy.test import taddons

from tlsgate.addons import make_addons
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.policy import PolicyStore


@dataclass
class Wired:
    tctx: taddons.context
    addons: list[Any]
    findings: Path

    def get[T](self, kind: type[T]) -> T:
        """The one add-on of this class (a second one would be a wiring mistake)."""
        (found,) = [addon for addon in self.addons if isinstance(addon, kind)]
        return found


@contextlib.contextmanager
def wired(policy: str, workdir: Path) -> Iterator[Wired]:
    """Every add-on, configured with `policy` (written to workdir/policy.yaml) and findings in workdir/findings.jsonl."""
    addons = make_addons()
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(policy)
    findings = workdir / "findings.jsonl"
    with taddons.context(*addons) as tctx:
        kit = Wired(tctx, addons, findings)
        tctx.configure(kit.get(PolicyStore), tlsgate_policy=[str(policy_file)])
        tctx.configure(kit.get(FindingsSink), tlsgate_findings=str(findings))
        yield kit
