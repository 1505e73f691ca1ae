"""mkdocs hooks: the docs link to repository files (policies, examples, deploy recipes) by their path, as they
read on GitHub; the site cannot serve them, so each must exist (else the build fails, as for a broken page link)
and becomes a link to the repository (`repo_url`) or, without one, the path itself in code type."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

LINK = re.compile(r"\[([^\]]*(?:\[[^\]]*\][^\]]*)*)\]\(([^)\s]+)\)")


def repo_file_link(label: str, target: str, page_path: str, repo: Path, repo_url: str | None) -> str | None:
    """The rewritten link when `target` (relative to the page) leaves docs/ for a repository file; None otherwise."""
    if re.match(r"^[a-z]+:", target) or target.startswith("#"):
        return None
    path, _, fragment = target.partition("#")
    joined = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_path), path))
    if joined.startswith("docs/") or joined == "docs":
        return None
    if joined.startswith("..") or not (repo / joined).exists():
        raise PluginError(f"docs/{page_path} links to {target!r}, which is not a file of the repository ({joined})")
    if repo_url:
        kind = "tree" if (repo / joined).is_dir() else "blob"
        url = f"{repo_url.rstrip('/')}/{kind}/HEAD/{joined}" + (f"#{fragment}" if fragment else "")
        return f"[{label}]({url})"
    return label if label.startswith("`") else f"`{joined}`" if label == joined else f"{label} (`{joined}`)"


REPO = Path(__file__).resolve().parents[1]


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:  # noqa: ARG001 - mkdocs' signature
    repo = REPO
    page_path = page.file.src_uri

    def replace(found: re.Match[str]) -> str:
        done = repo_file_link(found.group(1), found.group(2), page_path, repo, config.get("repo_url"))
        return found.group(0) if done is None else done

    return LINK.sub(replace, markdown)
