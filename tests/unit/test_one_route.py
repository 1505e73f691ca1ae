"""One route from a verdict to its sinks: one severity vocabulary, one metrics table, one once-per-key helper.

Issue 22: severity was defined three times, metrics were fed by string
branches and by add-ons calling them directly, and "say it once" was written
per add-on. These tests hold the single definitions in place.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mitmproxy.test import tflow
from prometheus_client import Counter

from tlsgate.addons import verdicts
from tlsgate.addons.metrics import MetricsExporter
from tlsgate.addons.policy import PolicyStore
from tlsgate.addons.state import Connections
from tlsgate.checks import model
from tlsgate.checks.client_bounds import HELLO_KINDS, STAGES, judge_request_head, judge_slow_client
from tlsgate.report import model as report_model
from tlsgate.sinks import findings as findings_sink
from tlsgate.sinks.findings import Finding, FindingsLog, Repeats
from tlsgate.sinks.metrics import BOUND_KINDS, FINDING_METRICS, Metrics
from tlsgate.tls import severity
from tlsgate.tls.recent import Once, Recent

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


# -- metrics: one row per check -----------------------------------------------------------------------


def _finding(check: str, **evidence: object) -> Finding:
    return Finding(check, "reported", "low", "api.example.com", 443, "10.0.0.2:5000", "policy.yaml:3", "x", evidence=evidence)


def test_every_check_has_a_metrics_row() -> None:
    """A check added to `Check` without saying what its findings count fails here, not silently on a dashboard."""
    missing = [check.value for check in model.Check if check.value not in FINDING_METRICS]
    assert not missing, f"checks without a row in tlsgate.sinks.metrics.FINDING_METRICS: {missing}"
    assert set(FINDING_METRICS) == {check.value for check in model.Check}, "rows for checks that no longer exist"


def test_every_row_names_a_counter_and_labels_it_fully() -> None:
    metrics = Metrics()
    for check, row in FINDING_METRICS.items():
        assert (row.counter is None) == (row.labels is None), check
        if row.counter is None or row.labels is None:
            continue
        counter = getattr(metrics, row.counter)
        assert isinstance(counter, Counter), check
        labels = row.labels(_finding(check, kind="anything"))
        assert labels is None or len(labels) == len(counter._labelnames), check


def test_a_finding_counts_in_its_checks_counter() -> None:
    metrics = Metrics()
    for finding in (
        _finding("cleartext", kind="plain_http", protocol="ws"),
        _finding("payload", kind="ecb", third_party=True),
        _finding("pinning", kind="not_pinned"),
        _finding("request", kind="oversized_request_head"),
        _finding("client_hello", kind="slow_client"),
        _finding("request", kind="check_failed"),  # not a bound: tlsgate_findings_total only
        _finding("pin", kind="pin_mismatch"),
    ):
        metrics.on_finding(finding)
    sample = metrics.registry.get_sample_value
    assert sample("tlsgate_cleartext_total", {"protocol": "http", "action": "reported"}) == 1
    assert sample("tlsgate_payload_findings_total", {"kind": "ecb", "action": "reported", "third_party": "true"}) == 1
    assert sample("tlsgate_app_conformance_total", {"check": "pinning", "kind": "not_pinned", "action": "reported"}) == 1
    assert sample("tlsgate_client_bounds_total", {"bound": "request_head"}) == 1
    assert sample("tlsgate_client_bounds_total", {"bound": "head_timeout"}) == 1
    assert sum(sample("tlsgate_client_bounds_total", {"bound": b}) or 0 for b in ("hello_bytes", "hello_records")) == 0
    assert sample("tlsgate_findings_total", {"severity": "low", "check": "pin", "action": "reported", "device": "unnamed"}) == 1


def test_every_client_bound_verdict_names_a_bound() -> None:
    """`tlsgate_client_bounds_total` is driven by the findings the bounds record: each one they can make has its label."""
    issues = [judge_request_head(70000, 65536, "c", "h")]
    issues += [judge_slow_client(31, 30, stage, "c", "h") for stage in STAGES]
    bounds = {"hello_bytes", "hello_records", "hello_malformed", "request_head", "head_timeout"}
    kinds = {(str(model.Check.CLIENT_HELLO), kind) for kind in HELLO_KINDS.values()}
    kinds |= {(str(issue.check), issue.kind) for issue in issues}
    assert {BOUND_KINDS[check][kind] for check, kind in kinds} == bounds


# -- one way into the metrics -------------------------------------------------------------------------

ADDONS = PACKAGE / "addons"
# The wiring, the recording path's sinks (which hold the metrics) and the exporter that serves them.
HOLD_METRICS = {"__init__.py", "findings.py", "metrics.py"}


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_no_addon_feeds_the_metrics_itself() -> None:
    """Verdicts reach the metrics through the recording path (`verdicts`, `FindingsSink`), never from a check's add-on."""
    holders = sorted(path.name for path in ADDONS.glob("*.py") if "tlsgate.sinks.metrics" in _imported(path))
    assert set(holders) <= HOLD_METRICS, holders
    callers = sorted(
        path.name
        for path in ADDONS.glob("*.py")
        if path.name not in HOLD_METRICS
        and any(isinstance(node, ast.Attribute) and node.attr == "metrics" for node in ast.walk(ast.parse(path.read_text())))
    )
    assert callers == ["verdicts.py"], callers


def test_the_metrics_addon_learns_nothing_from_other_addons() -> None:
    exporter = ADDONS / "metrics.py"
    assert "metadata" not in exporter.read_text()
    addons = {name for name in _imported(exporter) if name.startswith("tlsgate.addons.")}
    assert addons <= {"tlsgate.addons.state", "tlsgate.addons.state.Connections", "tlsgate.addons.verdicts"} | {
        "tlsgate.addons.verdicts.verdict_of"
    }, addons


def test_a_request_is_counted_by_its_recorded_verdict_not_by_what_a_script_left_in_metadata() -> None:
    metrics = Metrics()
    exporter = MetricsExporter(Connections(PolicyStore()), metrics)
    flow = tflow.tflow(resp=True)
    verdicts.mark(flow, Finding("cleartext", "blocked", "high", "example.com", 80, None, "p.yaml:3", "plain HTTP"))
    flow.metadata["tlsgate"] = {"action": "allowed"}  # another script's edit: not the verdict
    exporter.response(flow)
    allowed = tflow.tflow(resp=True)
    exporter.response(allowed)
    sample = metrics.registry.get_sample_value
    assert sample("tlsgate_requests_total", {"decision": "blocked", "check": "cleartext", "transport": "tcp"}) == 1
    assert sample("tlsgate_requests_total", {"decision": "allowed", "check": "none", "transport": "tcp"}) == 1
    assert verdicts.answered(flow) and not verdicts.answered(allowed)


# -- once per key ------------------------------------------------------------------------------------


def test_recent_forgets_the_least_recently_used_and_stays_bounded() -> None:
    forgotten: list[tuple[str, int]] = []
    recent: Recent[str, int] = Recent(3, lambda key, value: forgotten.append((key, value)))
    for index, key in enumerate("abc"):
        recent.put(key, index)
    assert recent.get("a") == 0  # used: now the most recent, so "b" is the least recently used
    recent.put("d", 3)
    assert forgotten == [("b", 1)] and "b" not in recent and recent.get("b") is None
    for index in range(1000):
        recent.put(f"k{index}", index)
    assert len(recent) == 3 and len(forgotten) == 1001
    assert [key for key, _ in forgotten[:5]] == ["b", "c", "a", "d", "k0"]  # least recently used first


def test_once_says_each_key_once_until_it_is_forgotten() -> None:
    once: Once[str] = Once(2)
    assert once.first("a") and not once.first("a")
    assert once.first("b")
    assert not once.first("a")  # refreshed: "b" is now the least recently seen
    assert once.first("c")  # forgets "b"
    assert len(once) == 2
    assert not once.first("a") and once.first("b")


def test_repeats_keeps_its_tallies_by_the_same_rule() -> None:
    """A forgotten problem's count is written, not lost; the least recently seen one is forgotten first."""
    log = FindingsLog()
    written: list[Finding] = []
    log.subscribe(written.append)
    repeats = Repeats(log, limit=2)
    for key in ("a", "b"):
        repeats.first(key, _finding("payload", kind=key))
    assert repeats.again("a") and repeats.again("a") and repeats.again("b")
    assert repeats.again("a")  # "b" is now the least recently seen
    repeats.first("c", _finding("payload", kind="c"))  # forgets "b"
    assert len(repeats) == 2 and not repeats.again("b")
    assert [(f.evidence["kind"], f.occurrences) for f in written] == [("b", 1)]


def test_only_the_recording_path_says_things_once() -> None:
    """Add-ons hand a key to `verdicts.record_once`; none keeps its own again/first dance over `Repeats`."""
    users = sorted(
        path.name
        for path in ADDONS.glob("*.py")
        if any(isinstance(node, ast.Attribute) and node.attr == "repeats" for node in ast.walk(ast.parse(path.read_text())))
    )
    assert users == ["findings.py", "verdicts.py"], users


def test_recent_can_be_read_and_walked_without_using_an_entry() -> None:
    """`peek` and iteration are how owners report what they remember; `pop` is an owner done with a key."""
    forgotten: list[str] = []
    recent: Recent[str, int] = Recent(2, lambda key, _value: forgotten.append(key))
    recent.put("a", 1)
    recent.put("b", 2)
    assert recent.peek("a") == 1 and recent.peek("z") is None
    assert list(recent) == ["a", "b"], "least recent first, and peeking did not make 'a' recent"
    recent.put("c", 3)
    assert forgotten == ["a"]
    assert recent.pop("b") == 2 and recent.pop("b") is None and forgotten == ["a"], "popped, not forgotten"
    assert list(recent) == ["c"] and len(recent) == 1
