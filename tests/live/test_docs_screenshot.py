"""The documentation site's home page, built as CI builds it, in a real headless Chromium: it renders, names the
product and the way in, and runs without script errors. The screenshot is kept (tests/artifacts/docs-home.png)
for a person to look at; it is not compared pixel by pixel, so a theme update does not fail the suite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs import REPO
from tests.report_consumers import chromium_available, render_in_chromium
from tests.unit.test_docs_site import build

pytestmark = pytest.mark.skipif(not chromium_available(), reason="needs the Debian chromium package (/usr/bin/chromium)")


def test_the_built_home_page_renders_with_the_product_name_and_the_way_in(tmp_path: Path) -> None:
    done = build(REPO / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    home = tmp_path / "site" / "index.html"
    assert not re.search(r"""(src|href)=["']?(https?:)?//fonts\.""", home.read_text()), "the site must not fetch fonts"

    rendered = render_in_chromium(home, tmp_path, "docs-home.png")

    assert rendered.screenshot is not None and rendered.screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert rendered.screenshot.stat().st_size > 10_000
    text = re.sub(r"<[^>]+>", " ", rendered.dom)
    assert "tlsgate" in text and "TLS-inspecting forward proxy" in text
    assert "Get started" in text and "Policies" in text  # the navigation rendered
    assert not [line for line in rendered.console if "Uncaught" in line], rendered.console
