"""Where the documentation's text is, for the tests that check it: README.md (the landing page) and every page of
the site under docs/. Tests find a section by its heading text, whatever its level and whichever page it moved
to, so reorganising the pages does not break them; a heading must be unique across all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

FENCE = re.compile(r"^(`{3,}|~{3,})")
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")


def doc_files() -> list[Path]:
    """README.md, then the site's pages in path order."""
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


@dataclass(frozen=True)
class Heading:
    path: Path
    line: int  # 1-based
    level: int
    title: str


def headings(path: Path) -> list[Heading]:
    """The headings of one Markdown file, outside code blocks (a shell comment in a block is no heading)."""
    found, fence = [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        opening = FENCE.match(line)
        if opening:
            if fence is None:
                fence = opening.group(1)
            elif line.strip() == fence:
                fence = None
            continue
        heading = HEADING.match(line) if fence is None else None
        if heading:
            found.append(Heading(path, number, len(heading.group(1)), heading.group(2)))
    return found


@cache
def _all_headings() -> tuple[Heading, ...]:
    return tuple(h for path in doc_files() for h in headings(path))


def find_heading(title: str, page: str = "") -> Heading:
    """The heading `title`, on the one file whose path (from the repository root) starts with `page`."""
    found = [h for h in _all_headings() if h.title == title and str(h.path.relative_to(REPO)).startswith(page)]
    assert found, f"no page of the documentation (README.md, docs/) has a heading {title!r}"
    assert len(found) == 1, f"the heading {title!r} is on several pages: {[str(h.path) for h in found]}"
    return found[0]


def section(title: str, *, subsections: bool = True, page: str = "") -> str:
    """The text under the heading `title` (not the heading line), up to the next heading of its level or above
    (with `subsections=False`, up to the next heading of any level); `page` as in `find_heading`."""
    heading = find_heading(title, page)
    lines = heading.path.read_text().splitlines()
    end = len(lines)
    for other in headings(heading.path):
        if other.line > heading.line and (other.level <= heading.level or not subsections):
            end = other.line - 1
            break
    return "\n".join(lines[heading.line : end]) + "\n"


def page_of(title: str) -> Path:
    """The file the heading `title` is on."""
    return find_heading(title).path


def docs_text() -> str:
    """All of the documentation as one text, for a check that a string appears somewhere in it."""
    return "\n\n".join(path.read_text() for path in doc_files())


def where(text: str) -> Path:
    """The one file that shows `text`."""
    found = [path for path in doc_files() if text in path.read_text()]
    assert len(found) == 1, f"{text!r} is shown in {[str(p) for p in found] or 'no page'}"
    return found[0]
