"""mypy stays clean: the add-ons narrow mitmproxy's `Connection` to `Client`/`Server`, the policy language hands
parsed sections around, and a wrong guess at either is a bug a type checker finds before a device does.

mypy runs as CI runs it (`python -m mypy` from the repository root, reading `[tool.mypy]` in pyproject.toml), so
a failure here prints the same errors a developer sees. The configuration itself is checked too: a run that
passes because the checks were switched off or the packages left out would prove nothing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKED = ("tlsgate", "benchmarks")
# What makes the run worth having; see the comment on [tool.mypy] in pyproject.toml.
REQUIRED_FLAGS = ("check_untyped_defs", "warn_unused_ignores", "warn_redundant_casts", "no_implicit_optional")

needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed in this venv (it comes with requirements-dev.lock: pip install -r requirements-dev.lock)",
)


def _config() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]


def test_mypy_configuration_checks_every_package_without_exemptions() -> None:
    config = _config()
    assert set(CHECKED) <= set(config["files"]), f"mypy must check {CHECKED}; pyproject.toml lists {config['files']}"
    assert all(config.get(flag) is True for flag in REQUIRED_FLAGS), {flag: config.get(flag) for flag in REQUIRED_FLAGS}
    # A bare `# type: ignore` hides every future error on its line, not just the one it was written for.
    assert "ignore-without-code" in config.get("enable_error_code", []), "mypy must refuse `# type: ignore` without a code"
    for override in config.get("overrides", []):
        # Missing third-party stubs may be tolerated; tlsgate's own errors may not be switched off.
        assert "ignore_errors" not in override, f"mypy override silences errors: {override}"
        modules = override["module"] if isinstance(override["module"], list) else [override["module"]]
        ours = [m for m in modules if m.split(".")[0] in (*CHECKED, "tests")]
        assert not ours, f"mypy override for tlsgate's own modules {ours}: fix the code instead"


@needs_mypy
def test_mypy_finds_no_errors() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--show-error-codes"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    clean = run.returncode == 0 and not errors
    assert clean, f"mypy exited {run.returncode} with {len(errors)} error(s):\n" + (run.stdout + run.stderr)[-20000:]


def test_the_licence_file_is_the_one_pyproject_declares() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]  # an SPDX expression (PEP 639)
    text = (REPO / "LICENSE").read_text()
    assert declared == "MIT" and text.startswith("MIT License\n") and "WITHOUT WARRANTY OF ANY KIND" in text
