"""One route from a verdict to its sinks: one severity vocabulary, one metrics table, one once-per-key helper.

Issue 22: severity was defined three times, metrics were fed by string
branches and by add-ons calling them directly, and "say it once" was written
per add-on. These tests hold the single definitions in place.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tlsgate.checks import model
from tlsgate.report import model as report_model
from tlsgate.sinks import findings as findings_sink
from tlsgate.tls import severity

PACKAGE = Path(__file__).resolve().parents[2] / "tlsgate"
SEVERITY_WORDS = re.compile(r"""["']info["']\s*,\s*["']low["']\s*,\s*["']medium["']""")


def _sources() -> list[tuple[Path, str]]:
    return [(path, path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))]


def test_severity_has_one_definition() -> None:
    """The enum is declared in tlsgate/tls/severity.py only, and no module spells the words out as its own list."""
    spelled = [path.relative_to(PACKAGE).as_posix() for path, text in _sources() if SEVERITY_WORDS.search(text)]
    declared = [
        path.relative_to(PACKAGE).as_posix()
        for path, text in _sources()
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ClassDef) and node.name == "Severity"
    ]
    assert spelled == []
    assert declared == ["tls/severity.py"]


def test_every_layer_uses_that_definition() -> None:
    assert model.Severity is severity.Severity
    assert findings_sink.SEVERITIES is severity.SEVERITIES
    assert report_model.SEVERITIES is severity.SEVERITIES and report_model.RANK is severity.RANK
    assert list(severity.RANK) == ["info", "low", "medium", "high", "critical"]  # least to most severe
