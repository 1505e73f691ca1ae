"""Hot reload: good edits take effect, broken edits keep the last good policy in force."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.harness import Upstream, curl, eventually

ALLOW = "version: 1\nrules:\n  - hosts: api.test\n    cleartext: allow\n"
BLOCK = "version: 1\nrules:\n  - hosts: api.test\n    cleartext: block\n"
BROKEN = "version: 1\nrules:\n  - hosts: api.test\n    cleartext: sometimes\n"


def save(path: Path, text: str) -> None:
    path.write_text(text)
    stamp = time.time() + 1  # make the change visible even on coarse-mtime filesystems
    os.utime(path, (stamp, stamp))


def test_good_edit_applies_and_broken_edit_keeps_last_good(tlsgate, http_upstream: Upstream, tmp_path: Path) -> None:
    gate = tlsgate(ALLOW, resolve={"api.test": http_upstream.port})
    url = f"http://api.test:{http_upstream.port}/"
    assert curl(gate.proxy_url, url).status == 200

    policy = tmp_path / "policy.yaml"
    mark = len(gate.lines)
    save(policy, BLOCK)
    gate.wait_for("policy reloaded: 1 rules", start=mark)
    assert curl(gate.proxy_url, url).status == 403

    mark = len(gate.lines)
    save(policy, BROKEN)
    failure = gate.wait_for(r"policy reload failed: (policy\.yaml:\d+:\d+): (.*)", start=mark)
    assert failure.group(1) == "policy.yaml:4:16"
    assert "cleartext must be one of block, allow" in failure.group(2)
    gate.wait_for("keeping the last good policy", start=mark)
    assert curl(gate.proxy_url, url).status == 403, "the last good policy must stay in force"

    mark = len(gate.lines)
    save(policy, ALLOW)
    gate.wait_for("policy reloaded", start=mark)
    assert eventually(lambda: curl(gate.proxy_url, url).status == 200)


def test_deleted_policy_file_keeps_last_good(tlsgate, http_upstream: Upstream, tmp_path: Path) -> None:
    gate = tlsgate(BLOCK, resolve={"api.test": http_upstream.port})
    mark = len(gate.lines)
    (tmp_path / "policy.yaml").unlink()
    gate.wait_for("policy reload failed: .*no such policy file", start=mark)
    assert curl(gate.proxy_url, f"http://api.test:{http_upstream.port}/").status == 403
    assert http_upstream.connections == 0
