"""Real consumers of tlsgate's reports, shared by the unit and live report tests.

Each format is checked by what reads it in the wild: Chromium renders the HTML,
the official OASIS schema judges the SARIF, and two independent JUnit parsers
(junitparser, which CI result publishers use, and xunitparser) read the JUnit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

REPO = Path(__file__).resolve().parent.parent
SARIF_SCHEMA = REPO / "tests" / "data" / "sarif" / "sarif-schema-2.1.0.json"
ARTIFACTS = REPO / "tests" / "artifacts"  # ignored by git; CI can keep it as a build artifact
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def validate_sarif(document: dict[str, Any]) -> None:
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    jsonschema.Draft4Validator(schema).validate(document)


@dataclass
class Rendered:
    dom: str
    console: list[str]  # every console message and uncaught error, as Chromium logs them
    screenshot: Path | None


def chromium_available() -> bool:
    return Path(CHROMIUM).exists()


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def render_in_chromium(page: Path, tmp: Path, screenshot_name: str | None = None) -> Rendered:
    """Load `page` from disk in headless Chromium: the DOM after scripts ran, console messages, and a screenshot."""
    done = _chromium(tmp, "--enable-logging=stderr", "--v=1", "--virtual-time-budget=3000", "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-3000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    shot = None
    if screenshot_name:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / screenshot_name
        taken = _chromium(tmp, f"--screenshot={shot}", "--window-size=1400,2000", "--hide-scrollbars", page.as_uri())
        assert taken.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, taken.stderr[-3000:]
    return Rendered(done.stdout, console, shot)
