"""The names the documentation uses are the code's, both ways: every finding (check, kind) tlsgate can emit, every
option its add-ons declare and every metric it exports is documented somewhere (README.md or docs/), and every
check, kind, `--set` option and `tlsgate_*` name the docs mention exists. A renamed kind or a new metric fails here
instead of leaving the docs describing something that no longer is."""

from __future__ import annotations

import ast
import re
from functools import cache

from mitmproxy.addons import default_addons
from mitmproxy.test import taddons

from tests.docs import REPO, docs_text
from tests.unit.test_mastg import emitted
from tlsgate.addons import make_addons
from tlsgate.checks.model import Check
from tlsgate.sinks.metrics import Metrics

PACKAGE = REPO / "tlsgate"

# `tlsgate_*` and `--set` names the docs use that are neither an option nor a metric, and why.
OTHER_NAMES = {
    "tlsgate_source": "a key of the shipped CT log list (tlsgate/tls/data), naming where it was copied from",
    "termlog_verbosity": "mitmdump's own TermLog option (mitmdump adds that add-on itself)",
}


@cache
def options() -> tuple[frozenset[str], frozenset[str]]:
    """(tlsgate's add-ons' options, every option under mitmdump with tlsgate's add-ons loaded)."""
    with taddons.context() as tctx:
        core = set(tctx.options.keys())
        for addon in default_addons():
            if type(addon).__name__ != "Core":  # the context has it already
                tctx.master.addons.register(addon)
        stock = set(tctx.options.keys())
    with taddons.context(*make_addons()) as tctx:
        ours = set(tctx.options.keys()) - core
    return frozenset(ours), frozenset(stock | ours)


def metric_names() -> dict[str, str]:
    """Every metric tlsgate exports, by the name a reader looks for (counters with `_total`) -> its type."""
    families = {}
    for family in Metrics().registry.collect():
        if family.name.startswith("tlsgate_"):
            families[f"{family.name}_total" if family.type == "counter" else family.name] = family.type
    return families


def templates(text: str) -> list[re.Pattern[str]]:
    """Kinds the docs write as a pattern, such as `plain_<protocol>`."""
    return [re.compile(re.sub(r"<[a-z_]+>", "[a-z0-9]+", re.escape(t).replace(r"\<", "<").replace(r"\>", ">")) + "$")
            for t in re.findall(r"`([a-z_]+<[a-z_]+>[a-z_]*)`", text)]  # fmt: skip


def documents_kind(text: str, kind: str) -> bool:
    return f"`{kind}`" in text or f"/{kind}" in text or f'"kind":"{kind}"' in text or any(t.match(kind) for t in templates(text))


def test_every_check_and_kind_the_code_emits_is_documented() -> None:
    text = docs_text()
    kinds = emitted()
    missing = [
        f"{check}/{kind}"
        for check in sorted(kinds)
        if check != "*"
        for kind in sorted(kinds[check])
        if not documents_kind(text, kind)
    ]
    assert not missing, f"finding kinds no page of the docs names: {missing}"
    assert not [check.value for check in Check if f"`{check.value}`" not in text]


def test_the_kind_test_can_fail() -> None:
    assert not documents_kind("a `plain_<protocol>` finding, kind `weak_suite`", "weak_suite_allowed")
    assert documents_kind("a `plain_<protocol>` finding", "plain_mqtt") and not documents_kind(
        "`plain_<protocol>`", "xplain_mqtt"
    )


def doc_kinds(text: str) -> set[str]:
    """Kinds the docs name as kinds: `kind `x``, `"kind":"x"`, `check/kind` of a known check, and a check's row
    of kinds in a `| `check` | `kind`, ... |` table."""
    found = set(re.findall(r"\bkinds? `([a-z0-9_]+)`", text)) | set(re.findall(r'"kind": ?"([a-z0-9_]+)"', text))
    checks = {check.value for check in Check}
    found |= {kind for check, kind in re.findall(r"`([a-z_]+)/([a-z0-9_]+)`", text) if check in checks}
    for check, cells in re.findall(r"^\| `([a-z_]+)` \| (.*) \|$", text, re.M):
        if check in checks and "|" not in cells:
            found |= {kind for kind in re.findall(r"`([a-z0-9_]+)`", re.sub(r"\([^()]*(\([^()]*\)[^()]*)*\)", "", cells))}
    return found


@cache
def code_strings() -> frozenset[str]:
    """Every string constant in tlsgate/: the kinds a table or a mapping builds (certificate, fault, destination
    kinds) are among them, which the `Issue(...)` scan of tests/unit/test_mastg.py cannot follow."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return frozenset(found)


def test_every_kind_and_check_the_docs_name_exists() -> None:
    text = docs_text()
    known = set().union(*emitted().values()) | code_strings()
    named = doc_kinds(text)
    assert len(named) > 60, "the extraction found the kinds tables"
    assert {"weak_rsa_key", "reset", "loopback", "plain_mqtt"} <= named
    assert not sorted(named - known), f"the docs name kinds the code does not have: {sorted(named - known)}"
    checks = set(re.findall(r"\bcheck `([a-z_]+)`", text)) | set(re.findall(r'"check": ?"([a-z_]+)"', text))
    assert checks and not checks - {check.value for check in Check}, checks - {check.value for check in Check}


def test_every_option_the_add_ons_declare_is_documented() -> None:
    text = docs_text()
    ours, _ = options()
    assert len(ours) >= 15
    flag = lambda option: "--" + option.removeprefix("tlsgate_").replace("_", "-")  # noqa: E731 - `run`'s own flag for it
    missing = [option for option in sorted(ours) if f"`{option}" not in text and option not in text and flag(option) not in text]
    assert not missing, f"options no page of the docs names (as the option or `tlsgate run`'s flag): {missing}"


def test_every_option_and_tlsgate_name_the_docs_use_exists() -> None:
    text = docs_text()
    _, every = options()
    metrics = metric_names()
    histograms = {
        f"{name}{suffix}" for name, kind in metrics.items() if kind == "histogram" for suffix in ("_bucket", "_sum", "_count")
    }
    set_options = set(re.findall(r"--set[= ]([a-z][a-z0-9_]*)=", text))
    assert "tlsgate_lan_prefixes" in set_options
    unknown = sorted(set_options - every - set(OTHER_NAMES))
    assert not unknown, f"the docs `--set` options mitmdump with tlsgate's add-ons does not have: {unknown}"
    names = set(re.findall(r"\b(tlsgate_[a-z0-9_]+)", text))
    unknown = sorted(names - every - set(metrics) - histograms - set(OTHER_NAMES))
    assert not unknown, f"the docs name tlsgate_* that are no option and no metric: {unknown}"


def test_every_metric_is_documented_on_the_metrics_page_and_named_metrics_exist() -> None:
    from tests.docs import section

    page = section("Metrics")
    missing = [name for name in metric_names() if f"`{name}`" not in page]
    assert not missing, f"metrics the Metrics page does not list: {missing}"
    listed = set(re.findall(r"^\| `(tlsgate_[a-z0-9_]+)`", page, re.M))
    assert listed and not listed - set(metric_names()), listed - set(metric_names())
