"""The HTML report in a real headless Chromium: it renders, runs without console errors, and shows charts and hosts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.report_consumers import chromium_available, render_in_chromium
from tests.unit.test_report import LOW_REPORTED, PIN, PROBE_PASSED, finding
from tlsgate.report import cli

pytestmark = pytest.mark.skipif(not chromium_available(), reason="needs the Debian chromium package (/usr/bin/chromium)")


def test_the_console_check_catches_a_script_error(tmp_path: Path) -> None:
    """Proof that the check below can fail: a page with an uncaught error and a console.error is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); notAFunction();</script>")
    rendered = render_in_chromium(page, tmp_path)
    assert any("Uncaught ReferenceError" in line for line in rendered.console), rendered.console
    assert any("boom" in line for line in rendered.console)


def test_html_report_renders_with_charts_host_table_and_no_console_errors(tmp_path: Path) -> None:
    items = [finding(time=f"2026-11-23T10:{m:02d}:00.000+00:00", host=f"h{m % 4}.test") for m in range(0, 50, 3)] + [
        PIN,
        PROBE_PASSED,
        LOW_REPORTED,
        finding(host="<script>alert(1)</script>", device="pixel-8"),
    ]
    source = tmp_path / "f.jsonl"
    source.write_text("".join(json.dumps(i) + "\n" for i in items))
    page = tmp_path / "report.html"
    assert cli.main(["report", str(source), "--format", "html", "--out", str(page), "--fail-on", "high"]) == 1
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.read_text()), "the report must not fetch anything"

    rendered = render_in_chromium(page, tmp_path, "report-unit.png")
    assert rendered.console == []
    dom = rendered.dom
    assert 'data-ready="1"' in dom, "the inline script ran to its end"
    for chart in ("chart-severity", "chart-check", "chart-device", "timeline"):
        section = dom[dom.index(f'id="{chart}"') :]
        assert section.index("<svg") < section.index("</section>"), f"{chart} has no SVG"
        assert section.index("<rect") < section.index("</section>"), f"{chart} draws nothing"
    table = dom[dom.index('id="host-table"') : dom.index("</table>", dom.index('id="host-table"'))]
    assert table.count("<tr>") == 1 + 4 + 2 + 1  # header; h0-h3; api.test and cdn.test; the hostile host
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in table
    assert dom.count("<details") == len({(i["check"], i["host"], i.get("device")) for i in items})
    assert "FAIL" in dom[: dom.index("</header>")]
