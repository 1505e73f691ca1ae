"""monitoring/: Prometheus config, alert rules and the Grafana dashboard, checked with the real promtool
and against the metric names a real `proxy.metrics.Metrics()` registry exports, so that neither the rules
nor the dashboard can silently rot when a metric is renamed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docs import section as docs_section
from tests.harness import REPO
from tlsgate.sinks.metrics import Metrics

MONITORING = REPO / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
ALERTS_YML = MONITORING / "alerts.yml"
ALERTS_TEST_YML = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "tlsgate.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# Series that Prometheus itself adds to every scrape; the only non-tlsgate names rules may use.
PROMETHEUS_SERIES = {"up"}
SEVERITIES = {"critical", "warning", "info"}


# -- helpers ----------------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install the Debian/Ubuntu package `prometheus` "
            "(`apt-get install prometheus`, as .ci/run does); these checks are never skipped"
        )
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO)


@cache
def exported_series() -> frozenset[str]:
    """Every series name tlsgate's registry exposes, as PromQL sees it."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created")}
        elif family.type == "summary":
            names |= {family.name, f"{family.name}_sum", f"{family.name}_count", f"{family.name}_created"}
        elif family.type == "info":
            names.add(f"{family.name}_info")
        else:
            names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return frozenset(names)


@cache
def exported_families() -> dict[str, str]:
    """The names a reader looks for: counters with `_total`, histograms by their base name."""
    families = {}
    for family in Metrics().registry.collect():
        if not family.name.startswith("tlsgate_"):
            continue  # process_* and python_info: prometheus_client's standard collectors, documented as a group
        name = f"{family.name}_total" if family.type == "counter" else family.name
        families[name] = family.type
    return families


_KEYWORDS = {
    # binary operators and modifiers
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
    # aggregation operators (they may be followed by a `by (...)` clause rather than a parenthesis)
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    # literals
    "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Bare series names in a PromQL expression (not functions, keywords, labels, strings or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def unknown_names(expr: str, allowed: set[str] | frozenset[str]) -> set[str]:
    return {name for name in metric_names(expr) if name not in allowed}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in alert_rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(panels: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """All panels, including those inside collapsed rows."""
    found = []
    for panel in dashboard()["panels"] if panels is None else panels:
        found.append(panel)
        found += dashboard_panels(panel.get("panels") or [])
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel query and every query variable's metric."""
    exprs = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            if target.get("expr"):
                exprs.append((f"panel {panel['title']!r} {target.get('refId')}", target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        found = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
        exprs.append((f"variable ${variable['name']}", found.group(1) if found else query))
    return exprs


GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${__range}": "1h",
}


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so Prometheus' own parser can check it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # template variables only appear inside =~ matchers


# -- Prometheus configuration and alert rules -------------------------------------------------------


def test_prometheus_config_is_valid_and_loads_the_alert_rules() -> None:
    done = run_promtool("check", "config", PROMETHEUS_YML)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr, done.stdout + done.stderr
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml"]
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "tlsgate"]
    assert job["static_configs"][0]["targets"] == ["tlsgate:9464"]


def test_alert_rules_are_valid() -> None:
    done = run_promtool("check", "rules", ALERTS_YML)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rule_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", ALERTS_TEST_YML)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(ALERTS_TEST_YML.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert len(alerts) >= 8
    assert alerts - fires == set(), "alerts without a test in which they fire"
    assert alerts - quiet == set(), "alerts without a test in which they stay quiet"
    assert (fires | quiet) - alerts == set(), "tests for alerts that do not exist"


def test_alerts_have_severity_for_and_annotations_that_say_what_to_do() -> None:
    for rule in alert_rules():
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert "for" in rule, f"{name}: state `for:` explicitly, even 0m"
        assert {"summary", "description"} <= set(rule["annotations"]), name
        assert len(rule["annotations"]["description"]) > 80, f"{name}: the description should say what to do"
        assert name.startswith("Tlsgate"), name
        # a label the query aggregates by should be named in the text, so the alert says where
        aggregated = re.search(r"\b(?:sum|max|min|count) by \(([^)]*)\)", rule["expr"])
        for label in aggregated.group(1).split(",") if aggregated else []:
            label = label.strip()
            if label != "job":
                assert f"$labels.{label}" in json.dumps(rule["annotations"]), f"{name}: annotations do not name {label}"


def test_accepted_probes_page_or_warn_by_the_kinds_severity() -> None:
    """Every probe kind an app can accept lands in exactly one of the two alerts, by the severity its finding carries
    (tlsgate_findings_total's `severity` label): critical and high page, medium warns, and the warning names exactly
    the medium kinds. Before, one alert paged critical on any accepted probe, a medium `cn_only` included."""
    from tlsgate.checks.probes import PROBE_SEVERITY
    from tlsgate.checks.protocol_probes import SEVERITIES as PROTOCOL_SEVERITIES
    from tlsgate.tls.probes import PROBE_KINDS

    rules = {rule["alert"]: rule for rule in alert_rules() if "alert" in rule}
    page, warn = rules["TlsgateClientAcceptedInvalidCertificate"], rules["TlsgateClientAcceptedWeakTls"]
    assert (page["labels"]["severity"], warn["labels"]["severity"]) == ("critical", "warning")

    def routed(rule: dict[str, Any]) -> set[str]:
        selectors = set(re.findall(r'severity=~?"([^"]*)"', rule["expr"]))
        assert len(selectors) == 1, f"{rule['alert']}: one severity selector, the same wherever the rule reads"
        return set(selectors.pop().split("|"))

    paged, warned = routed(page), routed(warn)
    assert paged.isdisjoint(warned) and "low" not in paged | warned  # low: a probe that tested nothing accuses no app
    kinds = {kind: PROTOCOL_SEVERITIES.get(kind) or PROBE_SEVERITY.get(kind, "critical") for kind in PROBE_KINDS}
    assert {kind for kind, severity in kinds.items() if severity not in paged | warned} == set()
    named = set(re.findall(r"\b[a-z0-9]+(?:_[a-z0-9]+)+\b", warn["annotations"]["description"])) & set(PROBE_KINDS)
    assert named == {kind for kind, severity in kinds.items() if severity in warned}


def test_alert_rules_use_only_metrics_tlsgate_exports() -> None:
    allowed = exported_series() | PROMETHEUS_SERIES | recorded_names()
    used: set[str] = set()
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, f"no metric found in {rule['expr']!r}"
        assert unknown_names(rule["expr"], allowed) == set(), rule.get("alert") or rule.get("record")
        used |= names
    # the rules watch pins, findings, certificates, reloads, upstream verdicts and handshakes
    for name in (
        "tlsgate_pin_checks_total",
        "tlsgate_findings_total",
        "tlsgate_certificate_expiry_timestamp_seconds",
        "tlsgate_policy_reloads_total",
        "tlsgate_upstream_connections_total",
        "up",
    ):
        assert name in used, name


# -- Grafana ----------------------------------------------------------------------------------------


def test_dashboard_uses_only_metrics_tlsgate_exports() -> None:
    allowed = exported_series() | PROMETHEUS_SERIES | recorded_names()
    for where, expr in dashboard_expressions():
        assert metric_names(expr), f"{where}: no metric in {expr!r}"
        assert unknown_names(expr, allowed) == set(), f"{where}: {expr}"


def test_dashboard_shows_every_exported_metric() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_expressions()))
    for family, kind in exported_families().items():
        if kind == "histogram":
            assert f"{family}_bucket" in used, f"{family}: no quantile on the dashboard"
        else:
            assert family in used, f"{family} is exported but not on the dashboard"


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's variables replaced) as a recording rule."""
    rules = [{"record": f"dashboard:query:{i}", "expr": as_promql(expr)} for i, (_, expr) in enumerate(dashboard_expressions())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run_promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


def test_dashboard_is_provisionable_and_has_the_expected_views() -> None:
    board = dashboard()
    assert board["uid"] == "tlsgate"
    assert board["schemaVersion"] >= 39
    assert "__inputs" not in board and "${DS_" not in DASHBOARD.read_text(), "use the provisioned datasource uid"
    [datasource] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    [device] = [v for v in board["templating"]["list"] if v["name"] == "device"]
    assert device["query"]["query"] == "label_values(tlsgate_findings_total, device)"
    assert device["includeAll"] and device["multi"]
    # the per-device view: every findings query follows the variable
    for where, expr in dashboard_expressions():
        if "tlsgate_findings_total{" in expr:
            assert 'device=~"$device"' in expr, where
    exprs = " ".join(expr for _, expr in dashboard_expressions())
    for needle in (
        "sum by (decision) (rate(tlsgate_requests_total",  # verdicts over time
        'tlsgate_requests_total{decision="blocked"}',  # top block reasons
        "sum by (side, version, suite)",  # protocol and suite mix
        "sum by (result) (rate(tlsgate_pin_checks_total",  # pin results
        "tlsgate_certificate_expiry_timestamp_seconds - time()",  # days left per host
        "sum by (severity)",  # findings by severity
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
    ):
        assert needle in exprs, needle
    # no two panels overlap on the 24-column grid
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels():
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (check) (increase(tlsgate_findings_total{device=~"$device", check="a b"}[$__range])) '
        "/ ignoring (check) group_left sum(rate(tlsgate_requests_total[5m] offset 1h)) > 1e3 "
        'and on() up{job="tlsgate"} == bool 0 or histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))'
    )
    assert metric_names(expr) == {"tlsgate_findings_total", "tlsgate_requests_total", "up", "x_bucket"}
    assert unknown_names(expr, exported_series() | PROMETHEUS_SERIES) == {"x_bucket"}
    assert {"tlsgate_requests_total", "tlsgate_upstream_response_seconds_bucket", "tlsgate_build_info"} <= exported_series()


# -- where they are documented and installed --------------------------------------------------------


def readme_section(title: str) -> str:
    return docs_section(title)


def test_readme_documents_every_metric_endpoint_and_alert() -> None:
    section = readme_section("Metrics")
    for family in exported_families():
        assert f"`{family}`" in section, f"README's Metrics section does not document {family}"
    for rule in alert_rules():
        if "alert" in rule:
            assert rule["alert"] in section, f"README's Metrics section does not list alert {rule['alert']}"
    for needle in ("/healthz", "/readyz", "--metrics-host", "--metrics-port"):
        assert needle in section, needle


def test_ci_installs_promtool() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    apt = [line for line in ci.splitlines() if "apt-get install" in line]
    assert apt and "prometheus" in apt[0].split(), "promtool comes from the `prometheus` package"


# -- Prometheus 3 (the compose file runs prom/prometheus:v3.x; Debian's promtool is 2.x) ---------------


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))


def test_rules_and_dashboard_avoid_what_prometheus_3_changed() -> None:
    """No Prometheus 3 binary is installable here (Debian bookworm ships 2.42; neither PyPI nor npm carries
    one), so the rules are held to the 3.0 migration guide instead: what behaves differently there fails here."""
    compose = (REPO / "docker-compose.yml").read_text()
    assert re.search(r"image: prom/prometheus:v3\.\d+\.\d+", compose), "this test is written for Prometheus 3"
    interval = seconds(yaml.safe_load(PROMETHEUS_YML.read_text())["global"]["scrape_interval"])
    expressions = [("alert " + rule.get("alert", rule.get("record", "?")), rule["expr"]) for rule in alert_rules()]
    expressions += [(f"panel {title}", expr) for title, expr in dashboard_expressions()]
    for where, expr in expressions:
        # 3.0: range selectors are left-open, so a window holds one sample fewer; under 4 scrape intervals
        # `rate`/`increase` may see a single sample and return nothing.
        for found in re.findall(r"\[(\d+(?:ms|s|m|h|d|w|y))(?::[^\]]*)?\]", expr):
            assert seconds(found) >= 4 * interval, f"{where}: [{found}] is under 4 scrape intervals ({interval:.0f}s)"
        # 3.0: holt_winters is renamed (double_exponential_smoothing, behind a feature flag).
        assert "holt_winters" not in expr, where
        # 3.0: `le` and `quantile` label values are normalised to floats ("1" is "1.0"): an exact match on one
        # written as an integer finds nothing.
        assert not re.search(r'\b(?:le|quantile)\s*=~?\s*"[+-]?\d+"', expr), f"{where}: write le/quantile values as floats"
    # 3.0 fails a scrape whose Content-Type it cannot parse, instead of guessing: the live exposition test
    # (test_metrics.py) checks tlsgate answers prometheus_client's own content types.
