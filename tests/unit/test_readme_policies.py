"""Every policy the documentation shows (README.md and every page under docs/) is one `tlsgate validate` accepts:
what a user copies is what runs.

A block is skipped only when the sentence introducing it says it is abridged
(`... writes (abridged):`), and then by its file and line, so a new abridged block is a
visible choice, not an accident.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs import REPO, doc_files
from tlsgate.policy import PolicyError, load_texts

ABRIDGED = {"docs/policies/app.md"}  # `tlsgate import app.apk` writes (abridged): the one abridged policy


def yaml_blocks(path: Path) -> list[tuple[str, str, bool]]:
    """(file:line of the block's first YAML line, text, abridged?) for every ```yaml block of one page."""
    text = path.read_text()
    out = []
    for found in re.finditer(r"```yaml\n(.*?)```", text, re.S):
        line = text.count("\n", 0, found.start()) + 2
        before = text[max(0, found.start() - 300) : found.start()]
        abridged = "(abridged)" in before.rstrip().rsplit("\n\n", 1)[-1]
        out.append((f"{path.relative_to(REPO)}:{line}", found.group(1), abridged))
    return out


BLOCKS = [block for path in doc_files() for block in yaml_blocks(path)]


def test_the_docs_show_policies_and_say_which_are_abridged() -> None:
    assert len(BLOCKS) >= 8
    assert {where.split(":")[0] for where, _, abridged in BLOCKS if abridged} == ABRIDGED
    assert sum(abridged for _, _, abridged in BLOCKS) == 1


@pytest.mark.parametrize(("where", "text"), [pytest.param(w, t, id=w) for w, t, abridged in BLOCKS if not abridged])
def test_every_docs_policy_validates_without_warnings(where: str, text: str) -> None:
    try:
        policy = load_texts([(where, text)])
    except PolicyError as error:
        pytest.fail("\n".join(str(m) for m in error.messages))
    assert not policy.warnings, [str(w) for w in policy.warnings]
