"""Real consumers of tlsgate's reports, shared by the unit and live report tests.

Each format is checked by what reads it in the wild: Chromium renders the HTML,
the official OASIS schema judges the SARIF, two independent JUnit parsers
(junitparser, which CI result publishers use, and xunitparser) and expat read
the JUnit, and GitHub's own Markdown library (cmark-gfm, via cmarkgfm) renders
the Markdown a step summary or pull-request comment shows.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.dom import minidom

import jsonschema
import xunitparser
from junitparser import JUnitXml

REPO = Path(__file__).resolve().parent.parent
SARIF_SCHEMA = REPO / "tests" / "data" / "sarif" / "sarif-schema-2.1.0.json"
ARTIFACTS = REPO / "tests" / "artifacts"  # ignored by git; CI can keep it as a build artifact
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@functools.cache
def _sarif_validator() -> jsonschema.Draft4Validator:
    """Checking the OASIS schema itself against the meta-schema costs more than validating a report: done once."""
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def validate_sarif(document: dict[str, Any]) -> None:
    _sarif_validator().validate(document)


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


# -- HTML as a browser's tokenizer sees it -------------------------------------------------------------


@dataclass
class Markup:
    """Every element of an HTML text with its attributes, the text inside <script> elements, and the text
    outside <code> elements."""

    tags: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    text_outside_code: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # cells per table row, in order


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.markup = Markup()
        self._in_script = self._in_code = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.markup.tags.append((tag, {name: value or "" for name, value in attrs}))
        if tag == "script":
            self._in_script += 1
            self.markup.scripts.append("")
        elif tag == "code":
            self._in_code += 1
        elif tag == "tr":
            self.markup.rows.append(0)
        elif tag in ("td", "th") and self.markup.rows:
            self.markup.rows[-1] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script -= 1
        elif tag == "code":
            self._in_code -= 1

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.markup.scripts[-1] += data
        elif not self._in_code:
            self.markup.text_outside_code.append(data)


def parse_html(text: str) -> Markup:
    collector = _Collector()
    collector.feed(text)
    collector.close()
    return collector.markup


def github_markdown(text: str) -> Markup:
    """Markdown rendered by cmark-gfm with GitHub's extensions (tables, autolinks, strikethrough) and
    raw HTML let through unfiltered: what the text itself makes, before any sanitiser could rescue it."""
    import cmarkgfm  # a test dependency (pyproject's `test` extra); imported here so only Markdown checks need it
    from cmarkgfm.cmark import Options

    return parse_html(cmarkgfm.github_flavored_markdown_to_html(text, options=Options.CMARK_OPT_UNSAFE))


# -- JUnit by three readers ------------------------------------------------------------------------


def read_junit(path: Path) -> tuple[int, int]:
    """(tests, failures) as junitparser and xunitparser read the file, after expat found it well-formed XML."""
    minidom.parseString(path.read_bytes())  # expat: raises on a control character or a broken tag
    xml = JUnitXml.fromfile(str(path))
    with path.open() as handle:
        _, result = xunitparser.parse(handle)
    assert (xml.tests, xml.failures) == (result.testsRun, len(result.failures))
    return xml.tests, xml.failures


def strict_json(text: str) -> Any:
    """JSON as a strict reader takes it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)
