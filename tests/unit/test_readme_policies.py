"""Every policy the README shows is one `tlsgate validate` accepts: what a user copies is what runs.

A block is skipped only when the sentence introducing it says it is abridged
(`... writes (abridged):`), and then by its line, so a new abridged block is a
visible choice, not an accident.
"""

from __future__ import annotations

import re

import pytest

from tests.harness import REPO
from tlsgate.policy import PolicyError, load_texts

README = REPO / "README.md"


def yaml_blocks() -> list[tuple[int, str, bool]]:
    """(line of the block's first YAML line, text, abridged?) for every ```yaml block."""
    text = README.read_text()
    out = []
    for found in re.finditer(r"```yaml\n(.*?)```", text, re.S):
        line = text.count("\n", 0, found.start()) + 2
        before = text[max(0, found.start() - 300) : found.start()]
        out.append((line, found.group(1), "(abridged)" in before.rstrip().rsplit("\n\n", 1)[-1]))
    return out


BLOCKS = yaml_blocks()


def test_the_readme_shows_policies_and_says_which_are_abridged() -> None:
    assert len(BLOCKS) >= 8
    assert sum(abridged for _, _, abridged in BLOCKS) == 1  # `tlsgate import app.apk` writes (abridged)


@pytest.mark.parametrize(
    ("line", "text"), [pytest.param(line, text, id=f"README.md:{line}") for line, text, abridged in BLOCKS if not abridged]
)
def test_every_readme_policy_validates_without_warnings(line: int, text: str) -> None:
    try:
        policy = load_texts([(f"README.md:{line}", text)])
    except PolicyError as error:
        pytest.fail("\n".join(str(m) for m in error.messages))
    assert not policy.warnings, [str(w) for w in policy.warnings]
