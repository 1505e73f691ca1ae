"""The layers' contract: dependencies point one way, and mitmproxy stays above the pure core.

tls <- policy <- checks <- addons <- app, with the sinks (findings, metrics, block page, redaction)
beside them depending on nothing above tls. Read from the source with `ast`, so a new import that
breaks the direction fails here, in CI, before anyone relies on it.
Inside addons/, a module may import only the shared state, the recording path and mitm_internals.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tlsgate.policy import load_texts
from tlsgate.policy import sections as registry
from tlsgate.policy.schema import build_schema

PACKAGE = Path(__file__).resolve().parents[2] / "tlsgate"

# Which tlsgate layers each layer may import (besides itself and the package root's __version__).
ALLOWED: dict[str, set[str]] = {
    "tls": set(),
    "apps": {"tls"},  # what apps declare about their network security (NSC, ATS): facts, beside tls
    "payload": {"tls"},  # byte-level facts about decrypted payloads, beside tls
    "policy": {"tls", "payload"},
    "checks": {"tls", "policy", "payload"},
    "sinks": {"tls"},
    "report": {"tls", "sinks"},
    "addons": {"tls", "payload", "policy", "checks", "sinks"},  # not report: it reads findings after the fact
    "app": {"tls", "apps", "payload", "policy", "checks", "sinks", "addons", "report"},
}
MITMPROXY_FREE = {"tls", "apps", "payload", "policy", "checks", "sinks", "report"}
THIRD_PARTY_TLS = ("mitmproxy", "OpenSSL")
PRIVATE_NAMES_MODULE = PACKAGE / "addons" / "mitm_internals.py"


def _modules() -> list[tuple[str, Path, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        layer = parts[0] if len(parts) > 1 else ""
        out.append((layer, path, ast.parse(path.read_text(), str(path))))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node))
            found += [(f"{node.module}.{alias.name}", node) for alias in node.names]
    return found


def test_every_module_belongs_to_a_layer() -> None:
    layers = {layer for layer, _, _ in _modules()}
    assert layers <= {"", *ALLOWED}, f"unknown layer folders: {layers - {'', *ALLOWED}}"


def test_dependencies_point_one_way() -> None:
    problems = []
    for layer, path, tree in _modules():
        if not layer:
            continue
        for name, node in _imports(tree):
            parts = name.split(".")
            if parts[0] != "tlsgate" or len(parts) < 2 or parts[1] in ("__version__", layer):
                continue
            if parts[1] in ALLOWED and parts[1] not in ALLOWED[layer]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {layer} imports {name}")
    assert not problems, "imports against the layer direction:\n" + "\n".join(problems)


def test_nothing_below_addons_imports_mitmproxy_or_pyopenssl() -> None:
    problems = []
    for layer, path, tree in _modules():
        if layer not in MITMPROXY_FREE:
            continue
        for name, node in _imports(tree):
            if name.split(".")[0] in THIRD_PARTY_TLS:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: imports {name}")
    assert not problems, "\n".join(problems)


def test_private_names_of_mitmproxy_and_pyopenssl_are_used_in_one_module_only() -> None:
    problems = []
    for _, path, tree in _modules():
        if path == PRIVATE_NAMES_MODULE:
            continue
        bound = set()
        for name, node in _imports(tree):
            if name.split(".")[0] in THIRD_PARTY_TLS:
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("_") and not leaf.startswith("__"):
                    problems.append(f"{path.name}:{node.lineno}: imports private {name}")
                bound.add(leaf)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if node.attr in ("_ssl", "_lib", "_ffi") or (isinstance(node.value, ast.Name) and node.value.id in bound):
                problems.append(f"{path.name}:{node.lineno}: uses private .{node.attr}")
    assert not problems, "move these into tlsgate/addons/mitm_internals.py:\n" + "\n".join(problems)


def test_the_contract_catches_a_wrong_way_import(tmp_path: Path) -> None:
    """The checks above must be able to fail: a policy module importing an add-on is found."""
    tree = ast.parse("from tlsgate.addons.state import Connections\nimport mitmproxy.http\n")
    names = [name for name, _ in _imports(tree)]
    assert "tlsgate.addons.state" in names and "mitmproxy.http" in names
    assert "addons" not in ALLOWED["policy"] and "policy" in MITMPROXY_FREE


# -- add-ons are glue: they share state and the recording path, nothing else of each other ------------------

ADDONS = PACKAGE / "addons"
# What an add-on module may import from its own folder: the shared per-connection state, the one recording path
# (verdicts, and findings, the sink it delegates to) and the one module allowed mitmproxy's private names. Any
# other logic one add-on needs from another is not glue: it belongs below (checks/, policy/, tls/, payload/,
# apps/, sinks/), where it is pure and tested without a proxy.
ADDON_MAY_IMPORT = frozenset({"state", "verdicts", "findings", "mitm_internals"})
# Modules whose job is to know every add-on: `make_addons()` wires them, script.py is mitmdump's `-s` entry point.
ADDON_ASSEMBLY = frozenset({"__init__", "script"})
# Known debts, each with its reason; remove an entry with the import it excuses.
ADDON_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _addon_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """(sibling add-on module, line) for every import of one: absolute or relative, at module level or in a function."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[:2] == ["tlsgate", "addons"]:
                    found.append((parts[2] if len(parts) > 2 else "__init__", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            module = node.module.split(".") if node.module else []
            if node.level == 0:
                base = module
            elif node.level == 1:  # `from . import state`, `from .state import ConnState`
                base = ["tlsgate", "addons", *module]
            else:  # `from ..addons import state` from a sibling package
                base = ["tlsgate", *module]
            if base[:2] != ["tlsgate", "addons"]:
                continue
            if len(base) > 2:
                found.append((base[2], node.lineno))
            else:  # `from tlsgate.addons import state, make_addons`: a module, or a name of the package itself
                found += [(alias.name, node.lineno) for alias in node.names]
    return found


def _addon_problems(name: str, tree: ast.Module) -> list[str]:
    if name in ADDON_ASSEMBLY:
        return []
    return [
        f"tlsgate/addons/{name}.py:{line}: imports tlsgate.addons.{imported}"
        for imported, line in _addon_imports(tree)
        if imported != name and imported not in ADDON_MAY_IMPORT and (name, imported) not in ADDON_EXCEPTIONS
    ]


def test_add_ons_import_only_the_shared_state_the_recording_path_and_mitm_internals() -> None:
    problems = []
    for path in sorted(ADDONS.glob("*.py")):
        problems += _addon_problems(path.stem, ast.parse(path.read_text(), str(path)))
    assert not problems, (
        f"an add-on may import from tlsgate.addons only {sorted(ADDON_MAY_IMPORT)}; move what these need below "
        "(checks/, policy/, tls/, payload/, apps/, sinks/) or into the shared state:\n" + "\n".join(problems)
    )


def test_the_add_on_contract_sees_every_form_of_import() -> None:
    """It must be able to fail: each way of reaching a sibling add-on is found, with module and line."""
    source = (
        "from tlsgate.addons.state import Connections\n"  # allowed
        "from tlsgate.addons import verdicts, mitm_internals\n"  # allowed
        "from tlsgate.addons.cleartext import CleartextGuard\n"
        "import tlsgate.addons.quic as quic\n"
        "from . import console\n"
        "from .resolve import Resolve\n"
        "from tlsgate.addons import make_addons\n"
        "def hook():\n"
        "    from tlsgate.addons.wireguard import install\n"
    )
    assert _addon_problems("toy", ast.parse(source)) == [
        "tlsgate/addons/toy.py:3: imports tlsgate.addons.cleartext",
        "tlsgate/addons/toy.py:4: imports tlsgate.addons.quic",
        "tlsgate/addons/toy.py:5: imports tlsgate.addons.console",
        "tlsgate/addons/toy.py:6: imports tlsgate.addons.resolve",
        "tlsgate/addons/toy.py:7: imports tlsgate.addons.make_addons",
        "tlsgate/addons/toy.py:9: imports tlsgate.addons.wireguard",
    ]
    assert _addon_problems("__init__", ast.parse(source)) == []  # the assembly wires every add-on


def test_each_add_on_exception_still_excuses_an_import() -> None:
    """A debt paid off leaves no stale excuse behind that would let the import come back unnoticed."""
    imports = {
        (path.stem, imported) for path in ADDONS.glob("*.py") for imported, _ in _addon_imports(ast.parse(path.read_text()))
    }
    assert set(ADDON_EXCEPTIONS) <= imports, f"remove from ADDON_EXCEPTIONS: {set(ADDON_EXCEPTIONS) - imports}"


# -- adding a section touches one policy module and one check module ------------------------------


@pytest.fixture
def toy_section():
    """A section and its check written the way a new feature would be: nothing else in tlsgate changes."""
    import yaml

    from tlsgate.checks.model import Check, Effect, Issue, Severity
    from tlsgate.policy import yamlnodes as yn
    from tlsgate.policy.sections.base import Section, register, unregister

    def parse(node: yaml.Node, reader: yn.Reader, context: object) -> int | None:
        value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if type(value) is not int or value < 0:
            reader.error(node, "toy must be a whole number")
            return None
        return value

    register(Section(name="toy", parse=parse, default=0, schema={"type": "integer", "minimum": 0}))

    def judge(count: int, settings_value: int) -> Issue | None:  # the check module: facts + rules -> issue
        if count <= settings_value:
            return None
        return Issue(Check.CLEARTEXT, "too_many", Effect.ENFORCED, Severity.LOW, f"{count} > {settings_value}")

    yield judge
    unregister("toy")


def test_a_toy_section_needs_no_change_elsewhere(toy_section) -> None:
    policy = load_texts([("p.yaml", "defaults:\n  toy: 2\nrules:\n  - hosts: a.test\n    toy: 5\n")])
    assert policy.match("b.test").settings.get("toy") == 2
    assert policy.match("a.test:443").settings.get("toy") == 5
    assert toy_section(3, policy.match("b.test").settings.get("toy")) is not None
    assert toy_section(3, policy.match("a.test").settings.get("toy")) is None
    assert build_schema()["$defs"]["settings"]["properties"]["toy"] == {"type": "integer", "minimum": 0}
    assert "toy" in registry.SECTIONS
    with pytest.raises(Exception, match="toy must be a whole number"):
        load_texts([("p.yaml", "defaults:\n  toy: many\n")])


def test_without_the_toy_section_its_key_is_unknown() -> None:
    with pytest.raises(Exception, match="unknown key 'toy'"):
        load_texts([("p.yaml", "defaults:\n  toy: 2\n")])


# -- an upstream check is a section, a judge and an import: no add-on names it ---------------------


@pytest.mark.parametrize("name", ["revocation", "ct"])
def test_the_upstream_checks_added_through_the_registry_touch_no_add_on(name: str) -> None:
    """The README's walk-through counts what OCSP stapling and CT took; this keeps the 'add-ons: none' row true."""
    from tlsgate.checks.registry import JUDGES

    (judge,) = [judge for judge in JUDGES if judge.check.value == name]
    assert judge.judge.__module__ == f"tlsgate.checks.{name}"
    assert (PACKAGE / "policy" / "sections" / f"{name}.py").read_text().count(f'name="{judge.section.name}"') == 1
    for path in sorted(ADDONS.glob("*.py")):
        text = path.read_text()
        for spelled in (f"checks.{name}", f"sections.{name}", f"Check.{name.upper()}", f"tls.{name}"):
            assert spelled not in text, f"{path.name} names {spelled}: the check is no longer added the registry's way"
