"""`make try-mitmproxy` (scripts/try_mitmproxy.py): its in-place path, run for real on this venv's mitmproxy.

The full trial builds a virtualenv from the registry (minutes, network): not for the suite. Its report is the
same code run on another interpreter; here it must find nothing on the mitmproxy the lock installs, and name a
pin that moved, with the digest to pin, when a tree's pinned digest no longer matches the installed source.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mitmproxy import version

from tests.unit import test_mitm_internals

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "try_mitmproxy.py"


def trial(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--python", sys.executable, "--pins-only", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_the_installed_mitmproxy_breaks_no_pin() -> None:
    done = trial()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"tlsgate on mitmproxy {version.VERSION}"
    assert "versions: as in requirements-dev.lock" in lines
    assert any(line.startswith("pinned mitmproxy functions: none changed (") for line in lines), lines
    assert lines[-1].startswith("verdict: nothing breaks")


def test_a_pin_that_no_longer_matches_is_named_with_the_digest_to_pin(tmp_path: Path) -> None:
    """A tree whose pinned digest differs from the installed source, as a new mitmproxy's would: the same report."""
    name = "TlsConfig.tls_start_client"
    digest = test_mitm_internals.PINNED[name][1]
    tree = tmp_path / "tree"
    (tree / "tests" / "unit").mkdir(parents=True)
    (tree / "pyproject.toml").symlink_to(ROOT / "pyproject.toml")
    for entry in (ROOT / "tests").iterdir():
        if entry.name != "unit":
            (tree / "tests" / entry.name).symlink_to(entry)
    for entry in (ROOT / "tests" / "unit").iterdir():
        if entry.name != "test_mitm_internals.py":
            (tree / "tests" / "unit" / entry.name).symlink_to(entry)
    source = (ROOT / "tests" / "unit" / "test_mitm_internals.py").read_text()
    assert source.count(f'"{digest}"') == 1
    (tree / "tests" / "unit" / "test_mitm_internals.py").write_text(source.replace(f'"{digest}"', '"0000000000000000"'))

    done = trial("--tree", str(tree))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    changed = [line for line in lines if line.startswith("  ")]
    assert changed == [f"  {name}: pinned 0000000000000000, now {digest}"], lines
    assert lines[-1].startswith("verdict: BREAKS")
