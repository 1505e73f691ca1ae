"""What changed between two runs (two app builds): new, fixed and unchanged problems.

Findings are matched by identity (check, kind, host pattern or host, deciding
rule, device or app fingerprint), never by time or port, so two runs of the
same build on the same devices diff to "nothing new" even though every line
differs, and a build that starts sending a token over http:// shows as one
new problem however many times it did it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tlsgate.report.formats import ICONS, _code
from tlsgate.report.model import RANK
from tlsgate.report.summary import Group, Summary


@dataclass
class Diff:
    base: Summary
    new: Summary
    added: list[Group]
    fixed: list[Group]
    unchanged: list[tuple[Group, Group]]  # (base, new)

    @property
    def failing_new(self) -> list[Group]:
        """New problems that fail the gate the NEW summary was built with (blocked, or at least that severe)."""
        return [g for g in self.added if g.failing]


def compare(base: Summary, new: Summary) -> Diff:
    order = {id(g): i for i, g in enumerate(new.sorted_groups())}
    base_order = {id(g): i for i, g in enumerate(base.sorted_groups())}
    added = sorted((g for key, g in new.groups.items() if key not in base.groups), key=lambda g: order[id(g)])
    fixed = sorted((g for key, g in base.groups.items() if key not in new.groups), key=lambda g: base_order[id(g)])
    unchanged = sorted(
        ((base.groups[key], g) for key, g in new.groups.items() if key in base.groups), key=lambda pair: order[id(pair[1])]
    )
    return Diff(base, new, added, fixed, unchanged)


def _describe(group: Group) -> dict[str, Any]:
    return {
        "rule_id": group.rule_id,
        "check": group.check,
        "kind": group.kind or None,
        "host": group.host,
        "rule": group.rule,
        "device": group.who,
        "severity": group.severity,
        "count": group.count,
        "failing": group.failing,
        "detail": group.worst.detail if group.worst else "",
    }


def as_json(diff: Diff) -> str:
    data = {
        "verdict": "fail" if diff.failing_new else "pass",
        "fail_on": f"new:{diff.new.threshold_name}",
        "base": {"findings": diff.base.total, "problems": len(diff.base.groups), "sources": diff.base.sources},
        "new": {"findings": diff.new.total, "problems": len(diff.new.groups), "sources": diff.new.sources},
        "added": [_describe(g) for g in diff.added],
        "fixed": [_describe(g) for g in diff.fixed],
        "unchanged": [{**_describe(n), "base_severity": b.severity, "base_count": b.count} for b, n in diff.unchanged],
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _line(mark: str, group: Group, base: Group | None = None) -> str:
    was = f" (was {base.severity})" if base is not None and base.severity != group.severity else ""
    count = f"{group.count}×" if base is None else f"{base.count}× → {group.count}×"
    detail = group.worst.detail if group.worst else ""
    return f"  {mark} [{group.severity}{was}] {group.rule_id} {group.host} on {group.who} (rule {group.rule}; {count})" + (
        f"\n      {detail}" if detail else ""
    )


def as_text(diff: Diff, show_unchanged: bool = True) -> str:
    lines = [
        f"base: {', '.join(diff.base.sources)}: {diff.base.total} finding(s), {len(diff.base.groups)} problem(s)",
        f"new:  {', '.join(diff.new.sources)}: {diff.new.total} finding(s), {len(diff.new.groups)} problem(s)",
        "",
        f"NEW ({len(diff.added)})",
        *[_line("+", g) for g in diff.added],
        f"FIXED ({len(diff.fixed)})",
        *[_line("-", g) for g in diff.fixed],
        f"UNCHANGED ({len(diff.unchanged)})",
    ]
    if show_unchanged:
        lines += [_line("=", n, b) for b, n in diff.unchanged]
    for note in [*diff.base.notes(), *diff.new.notes()]:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def as_markdown(diff: Diff) -> str:
    def rows(groups: list[Group]) -> list[str]:
        return [
            f"| {ICONS[g.severity]} {g.severity} | {_code(g.rule_id)} | {_code(g.host)} | {_code(g.who)} "
            f"| {g.count} | {_code(g.rule)} |"
            for g in groups
        ]

    head = ["| severity | problem | host | device | count | rule |", "|---|---|---|---|---:|---|"]
    verdict = "❌ new problems fail the gate" if diff.failing_new else "✅ nothing new fails the gate"
    lines = [
        f"### tlsgate diff: {verdict} (new:{diff.new.threshold_name})",
        "",
        f"**{len(diff.added)} new**, **{len(diff.fixed)} fixed**, {len(diff.unchanged)} unchanged.",
    ]
    if diff.added:
        lines += ["", "#### New", "", *head, *rows(diff.added)]
    if diff.fixed:
        lines += ["", "#### Fixed", "", *head, *rows(diff.fixed)]
    return "\n".join(lines) + "\n"


def threshold_of(spec: str) -> int:
    """`new:high` -> rank of high; anything else is a usage error (ValueError)."""
    scope, sep, level = spec.partition(":")
    if not sep or scope != "new" or level not in RANK or level == "info":
        raise ValueError(f"--fail-on wants new:SEVERITY (low, medium, high or critical), not {spec!r}")
    return RANK[level]
