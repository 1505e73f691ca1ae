"""The HTML report: one self-contained file a tester opens from a CI artifact.

Jinja2 with autoescaping on for every value: hosts, SNI names, user agents and
URLs in findings come from the app (or whoever talks through the proxy), so a
host named `<script>` must stay text. Charts are inline SVG computed here, so
the page needs no script and no network to show them; the small inline script
only adds filtering and expand/collapse.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from tlsgate.report.formats import tool_version
from tlsgate.report.model import SEVERITIES, Record
from tlsgate.report.summary import Summary
from tlsgate.tls import mastg

COLOURS = {"critical": "#b3122e", "high": "#e4572e", "medium": "#f3a712", "low": "#4c8bf5", "info": "#9aa5b1"}
BAR_ROWS = 12  # bars per chart; the rest are summed into "other"
MASVS_DEVICES = 50  # devices in the MASVS-NETWORK table: a dozen rows each


@functools.cache
def _environment() -> Environment:
    """One per process: building it compiles the template again, which cost more than rendering a small report
    (`tlsgate report` renders once, but the fuzz tests render thousands)."""
    env = Environment(
        loader=PackageLoader("tlsgate.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return env


def _bars(counts: list[tuple[str, int]], colour_of: dict[str, str] | None = None) -> list[dict[str, Any]]:
    top = counts[:BAR_ROWS]
    rest = sum(n for _, n in counts[BAR_ROWS:])
    if rest:
        top.append((f"({len(counts) - BAR_ROWS} more)", rest))
    peak = max((n for _, n in top), default=0) or 1
    return [
        {"label": label, "value": n, "width": round(100 * n / peak, 2), "colour": (colour_of or {}).get(label, "#3d5a80")}
        for label, n in top
    ]


def _severity_bars_by(summary: Summary, names: list[str]) -> list[dict[str, Any]]:
    """Stacked bars (one per device), each segment one severity."""
    rows = []
    peak = max((summary.by_who[name] for name in names), default=0) or 1
    for name in names[:BAR_ROWS]:
        counts: Mapping[str, int] = summary.who_severity.get(name, {})
        offset = 0.0
        segments = []
        for severity in reversed(SEVERITIES):
            n = counts.get(severity, 0)
            if n:
                width = 100 * n / peak
                segments.append(
                    {"x": round(offset, 2), "width": round(width, 2), "colour": COLOURS[severity], "n": n, "sev": severity}
                )
                offset += width
        rows.append({"label": name, "value": summary.by_who[name], "segments": segments, "total_width": round(offset, 2)})
    return rows


def _timeline(summary: Summary) -> dict[str, Any]:
    bins, width = summary.timeline()
    if not bins:
        return {"columns": [], "width": 0}
    peak = max(sum(c.values()) for _, c in bins) or 1
    columns = []
    for start, counts in bins:
        stack, y = [], 100.0
        for severity in SEVERITIES:
            n = counts.get(severity, 0)
            if n:
                height = 100 * n / peak
                y -= height
                stack.append({"y": round(y, 3), "height": round(height, 3), "colour": COLOURS[severity], "n": n, "sev": severity})
        label = datetime.fromtimestamp(start, UTC).strftime("%H:%M:%S")
        columns.append({"stack": stack, "label": label, "total": sum(counts.values())})
    return {
        "columns": columns,
        "width": width,
        "peak": peak,
        "first": datetime.fromtimestamp(bins[0][0], UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "last": datetime.fromtimestamp(bins[-1][0] + width, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def _example(record: Record) -> dict[str, Any]:
    return {
        "severity": record.severity,
        "action": record.action,
        "time": record.time,
        "port": record.port,
        "client": record.client,
        "detail": record.detail,
        "remedy": record.remedy,
        "evidence": record.evidence,
    }


def html(summary: Summary, title: str = "tlsgate report") -> str:
    groups = summary.sorted_groups()
    devices = summary.devices()
    problems: list[dict[str, Any]] = [
        {
            "id": f"p{index}",
            "rule_id": g.rule_id,
            "check": g.check,
            "host": g.host,
            "who": g.who,
            "rule": g.rule,
            "severity": g.severity,
            "count": g.count,
            "failing": g.failing,
            "actions": ", ".join(f"{n} {a}" for a, n in g.by_action.most_common()),
            "detail": g.worst.detail if g.worst else "",
            "remedy": g.worst.remedy if g.worst else "",
            "examples": [_example(r) for r in g.examples],
            "omitted": g.omitted,
            "first_time": g.first_time,
            "last_time": g.last_time,
        }
        for index, g in enumerate(groups)
    ]
    by_device: dict[str, list[dict[str, Any]]] = {name: [] for name in devices}
    for problem in problems:
        by_device.setdefault(problem["who"], []).append(problem)
    hosts = [
        {
            "host": h.host,
            "ports": ", ".join(h.ports),
            "transport": ", ".join(h.transports),
            "versions": ", ".join(h.versions) or "—",
            "suites": ", ".join(h.suites) or "—",
            "pins": h.pins or "—",
            "worst": h.worst.rule_id if h.worst else "",
            "worst_severity": h.worst.severity if h.worst else "info",
            "worst_detail": h.worst.detail if h.worst else "",
            "count": h.count,
            "failing": h.failing,
            "devices": ", ".join(h.devices),
        }
        for h in summary.sorted_hosts()
    ]
    severity_bars: list[dict[str, Any]] = [
        {"label": name, "value": summary.by_severity[name], "colour": COLOURS[name]} for name in reversed(SEVERITIES)
    ]
    peak = max((b["value"] for b in severity_bars), default=0) or 1
    for bar in severity_bars:
        bar["width"] = round(100 * bar["value"] / peak, 2)
    masvs = list(summary.masvs_view().items())
    template = _environment().get_template("report.html.j2")
    return template.render(
        title=title,
        summary=summary,
        severities=list(reversed(SEVERITIES)),
        colours=COLOURS,
        severity_bars=severity_bars,
        check_bars=_bars(summary.by_check.most_common()),
        device_bars=_severity_bars_by(summary, devices),
        timeline=_timeline(summary),
        hosts=hosts,
        problems=problems,
        by_device=by_device,
        notes=summary.notes(),
        masvs=masvs[:MASVS_DEVICES],
        masvs_more=max(0, len(masvs) - MASVS_DEVICES),
        campaigns=list(summary.campaigns.items())[:MASVS_DEVICES],
        campaigns_more=max(0, len(summary.campaigns) - MASVS_DEVICES),
        mastg_source=mastg.SOURCE,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        version=tool_version(),
    )
