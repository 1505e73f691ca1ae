"""The docs' policy reference (docs/policies/reference.md) is the schema's, rendered: it cannot drift from the
sections the loader registers."""

from __future__ import annotations

import re

from tests.docs import DOCS, section
from tlsgate.policy import sections as registry
from tlsgate.policy.reference import SECTION_PAGES, render

PAGE = DOCS / "policies" / "reference.md"


def test_the_reference_page_is_what_the_schema_renders() -> None:
    assert PAGE.read_text() == render(), (
        "docs/policies/reference.md differs from the schema; regenerate it with "
        "`python -m tlsgate.policy.reference > docs/policies/reference.md`"
    )


def test_every_registered_section_and_key_has_its_entry() -> None:
    text = render()
    for name, found in registry.SECTIONS.items():
        if found.top_level:
            assert re.search(rf"^\| `{name}` \|", text, re.M), name
            continue
        assert f"### `{name}`" in text, name
        for key in found.schema.get("properties", {}):
            assert f"| `{name}.{key}` |" in text, f"{name}.{key}"
    assert "| `tls.min_version` |" in section("`tls`", page="docs/policies/reference.md")


def test_each_section_links_a_page_that_exists() -> None:
    for target in SECTION_PAGES.values():
        assert (DOCS / "policies" / target.split("#")[0]).is_file(), target
