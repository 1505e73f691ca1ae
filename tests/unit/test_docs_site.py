"""The documentation site builds with `mkdocs build --strict` (mkdocs.yml), so a broken page link, anchor or
repository path fails the suite, and CI (`.ci/run` runs `make test`) with it. The README stays a landing page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.docs import DOCS, REPO, doc_files, headings

MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]
ENV = {"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"}


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MKDOCS, "-f", str(config), "-d", str(site)], capture_output=True, text=True, timeout=300, env=ENV)


def nav_pages(nav: list[object]) -> list[str]:
    out: list[str] = []
    for item in nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            out += nav_pages(value) if isinstance(value, list) else [str(value)]
    return out


def test_the_site_builds_strict_with_every_page_in_the_nav(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["strict"] is True and all(v == "warn" for v in config["validation"].values())
    pages = nav_pages(config["nav"])
    assert sorted(pages) == sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")), "a page is missing from nav"
    done = build(REPO / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    for page in pages:
        built = tmp_path / "site" / re.sub(r"(index)?\.md$", "", page) / "index.html"
        assert built.exists(), built
    assert "tlsgate" in (tmp_path / "site" / "index.html").read_text()


def small_site(tmp_path: Path, link: str) -> Path:
    """A two-page site under the real configuration (validation, hooks) whose home page shows `link`."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    (docs / "policies").mkdir(parents=True)
    (docs / "index.md").write_text(f"# Home\n\nSee {link}.\n")
    (docs / "policies" / "tls.md").write_text("# TLS\n\n## Pin sets\n\nPins.\n")
    config.update(
        docs_dir=str(docs),
        hooks=[str(REPO / hook) for hook in config["hooks"]],
        nav=["index.md", "policies/tls.md"],
    )
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_small_site_with_good_links_builds(tmp_path: Path) -> None:
    """The control for the two below: what fails them is the one bad link."""
    done = build(
        small_site(tmp_path, "[pins](policies/tls.md#pin-sets) and [a policy](../policies/default.yaml)"), tmp_path / "s"
    )
    assert done.returncode == 0, done.stderr
    assert "<code>policies/default.yaml</code>" in (tmp_path / "s" / "index.html").read_text()


@pytest.mark.parametrize(
    ("link", "said"),
    [
        ("[pins](policies/tls.md#pins)", "does not contain an anchor '#pins'"),
        ("[pins](policies/pins.md)", "policies/pins.md"),
        ("[a policy](../policies/nonesuch.yaml)", "not a file of the repository (policies/nonesuch.yaml)"),
    ],
    ids=["anchor", "page", "repository-file"],
)
def test_a_broken_link_fails_the_build(tmp_path: Path, link: str, said: str) -> None:
    done = build(small_site(tmp_path, link), tmp_path / "s")
    assert done.returncode != 0
    assert said in done.stderr, done.stderr


def test_the_readme_is_a_landing_page_whose_links_reach_the_site() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    links = re.findall(r"\]\((docs/[^)#]+)\)", readme)
    assert len(links) > 20
    missing = [link for link in links if not (REPO / link).is_file()]
    assert not missing, missing


def test_every_heading_is_unique_so_tests_and_links_find_one_section() -> None:
    """tests/docs.py finds a section by its heading; the README's "Two commands" is the landing page's short copy."""
    seen: dict[str, list[str]] = {}
    for path in doc_files():
        for heading in headings(path):
            seen.setdefault(heading.title, []).append(str(path.relative_to(REPO)))
    repeated = {title: where for title, where in seen.items() if len(where) > 1}
    assert repeated == {"tlsgate": ["README.md", "docs/index.md"], "Two commands": ["README.md", "docs/get-started/index.md"]}


DOC_REFERENCE = re.compile(r"""\bdocs[,:] "?([A-Z][^"()\n]*?)"?(?: \((docs/[\w/.-]+\.md)\))?[")\n]""")


def test_what_tlsgate_alerts_and_dashboards_tell_users_to_read_exists() -> None:
    """Messages, alerts and dashboard panels send users to a section of the docs by its heading (and page)."""
    titles = [heading.title for path in doc_files() for heading in headings(path)]
    found = []
    for folder in ("tlsgate", "monitoring", "deploy"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yml", ".yaml", ".json") and path.is_file():
                found += [(path, *ref) for ref in DOC_REFERENCE.findall(path.read_text())]
    assert len(found) >= 5, found  # runner, wgpeers, alerts (and their test and Kubernetes copy), dashboard
    for path, title, page in found:
        assert any(t == title or t.startswith(title + ":") for t in titles), f"{path} names a docs section {title!r}"
        assert not page or (REPO / page).is_file(), f"{path} names {page}"
