"""The files people look for (SECURITY.md, CONTRIBUTING.md, CHANGELOG.md, pyproject's metadata, .gitignore)
say only what the code and the tests make true: a promise names the tests that hold it, an option named
exists, a command named runs a target that exists."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import mitmproxy
import pytest

from tests.docs import section
from tests.harness import REPO
from tests.unit.test_access import config
from tlsgate import __version__
from tlsgate.app.cli import build_parser
from tlsgate.app.runner import default_listen_host, mitmproxy_options

SECURITY = (REPO / "SECURITY.md").read_text()
CONTRIBUTING = (REPO / "CONTRIBUTING.md").read_text()
CHANGELOG = (REPO / "CHANGELOG.md").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def promise_rows() -> dict[str, str]:
    """SECURITY.md's promises table: the promise's bold name -> its row."""
    rows = {}
    for line in SECURITY.splitlines():
        named = re.match(r"\| \*\*(.+?)\*\* \|", line)
        if named:
            rows[named.group(1)] = line
    return rows


@cache
def function_source(path: str, name: str) -> str | None:
    tree = ast.parse((REPO / path).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment((REPO / path).read_text(), node)
    return None


def held_by(promise: str) -> list[str]:
    """The sources of the tests a promise names."""
    sources = []
    for path, name in TEST_REF.findall(promise_rows()[promise]):
        source = function_source(path, name)
        assert source is not None, f"SECURITY.md: {path}::{name} does not exist"
        sources.append(source)
    return sources


def test_security_md_names_the_four_promises_and_each_names_tests_that_exist() -> None:
    rows = promise_rows()
    assert set(rows) == {
        "Fail closed",
        "No secrets recorded",
        "Keys and captures are the owner's only",
        "Never an open proxy by default",
    }
    for promise in rows:
        assert len(held_by(promise)) >= 2, promise
    # Every test reference anywhere on the page resolves, not only the table's.
    for path, name in TEST_REF.findall(SECURITY):
        assert function_source(path, name), f"{path}::{name}"


def test_each_promise_is_held_by_tests_that_assert_it() -> None:
    """The tests named are the ones that would fail if the promise broke, not merely tests nearby."""
    assert any("connections == 0" in source for source in held_by("Fail closed"))
    assert any("fails_closed" in source or "fail_closed" in source for source in held_by("Fail closed"))
    assert any("check_failed" in source for source in held_by("Fail closed"))
    keys = held_by("Keys and captures are the owner's only")
    assert sum("0o600" in source or "& 0o077 == 0" in source for source in keys) >= 3
    assert any("chmod 600" in source for source in keys), "a loose key refuses the start"
    secrets = held_by("No secrets recorded")
    assert any("not in" in source for source in secrets) and any("flow_detail=3" in source for source in secrets)
    assert any("block_global" in source for source in held_by("Never an open proxy by default"))


def test_the_default_access_rules_security_md_states_are_the_code_s_defaults() -> None:
    run = build_parser().parse_args(["run"])
    assert run.listen_host is None and default_listen_host(run.mode or ["regular"]) == "127.0.0.1"
    assert default_listen_host(["transparent"]) == ""  # "transparent mode, which listens on every address"
    assert run.allow_public_clients is False and run.metrics_host == "127.0.0.1"
    assert mitmproxy_options(config(listen_host="0.0.0.0"))["block_global"] is True
    assert mitmproxy_options(config(listen_host="0.0.0.0", allow_public_clients=True))["block_global"] is False
    assert "listens on 127.0.0.1" in SECURITY and "Metrics listen on 127.0.0.1" in SECURITY


def run_options() -> set[str]:
    parser = build_parser()
    strings = {s for action in parser._actions for s in action.option_strings}
    for sub in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        strings |= {s for action in sub._actions for s in action.option_strings}
    return strings


def option_registered(name: str) -> bool:
    """A `--set NAME=` option: registered by a tlsgate add-on, or one of mitmproxy's (its options or add-ons)."""
    quoted = re.compile(rf"[\"']{re.escape(name)}[\"']")
    sources = [*(REPO / "tlsgate").rglob("*.py"), *Path(mitmproxy.__file__).parent.glob("addons/*.py")]
    sources.append(Path(mitmproxy.__file__).parent / "options.py")
    return any(quoted.search(path.read_text()) for path in sources)


def test_every_option_and_policy_key_security_md_names_exists() -> None:
    spans = re.findall(r"`([^`]+)`", SECURITY)
    flags = {flag for span in spans for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", span)} - {"--set"}
    assert flags >= {"--allow-public-clients", "--proxyauth", "--listen-host", "--upstream-ca", "--version"}
    assert flags <= run_options(), flags - run_options()
    for short in re.findall(r"`(-[a-z])`", SECURITY):
        assert short in run_options(), short
    sets = set(re.findall(r"--set ([a-z_]+)=", SECURITY)) | set(re.findall(r"`([a-z_]+)` 3 and 4", SECURITY))
    assert sets >= {"hardump", "save_stream_file", "tlsgate_lan_prefixes", "scripts", "flow_detail"}, sets
    for name in sets:
        assert option_registered(name), name
    schema = (REPO / "policies" / "tlsgate-policy.schema.json").read_text()
    for key in re.findall(r"`([a-z_]+): [a-z]+`", SECURITY):
        assert f'"{key}"' in schema, key
    assert "TLSGATE_PROXYAUTH" in (REPO / "tlsgate" / "app" / "cli.py").read_text()


def test_the_private_report_channel_is_the_repository_s_advisories() -> None:
    urls = PYPROJECT["project"]["urls"]
    assert urls["Security"] == urls["Repository"] + "/security/advisories/new"
    assert f"<{urls['Security']}>" in SECURITY
    assert "within 7 days" in SECURITY and "90 days" in SECURITY


def test_pyproject_declares_its_licence_as_an_spdx_string_matching_the_licence_file() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    assert not [c for c in project["classifiers"] if c.startswith("License ::")], "setuptools refuses both"
    assert project["readme"] == "README.md" and "mitmproxy" in project["keywords"]
    # SPDX strings need setuptools 77; the build requirement says so and the lock has one at least as new.
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]
    for lock in ("requirements.lock", "requirements-dev.lock"):
        pinned = re.search(r"^setuptools==(\d+)\.", (REPO / lock).read_text(), re.M)
        assert pinned and int(pinned.group(1)) >= 77, lock


def test_changelog_follows_keep_a_changelog_and_its_newest_version_is_the_package_s() -> None:
    versions = re.findall(r"^## \[(.+?)\](.*)$", CHANGELOG, re.M)
    assert versions[0] == ("Unreleased", ""), versions[0]
    released = versions[1:]
    assert released and all(re.fullmatch(r" - \d{4}-\d{2}-\d{2}", date) for _, date in released), released
    assert released[0][0] == __version__
    kinds = set(re.findall(r"^### (.+)$", CHANGELOG, re.M))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
    assert "keepachangelog.com" in CHANGELOG
    # Every issue that was worked on says what it changed (the numbers missing here were never filed).
    for issue in (2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14, 15, 16, 21, 22, 23, 24, 25):
        assert f"(issue {issue})" in CHANGELOG, issue


def test_contributing_names_make_targets_and_files_that_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = {target.replace("$(VENV)", ".venv") for target in re.findall(r"^([\w./$()-]+):", makefile, re.M)}
    named = set(re.findall(r"make ([\w./-]+)", CONTRIBUTING))
    assert named >= {".venv/.dev", "test", "lint", "lock"}, named
    assert named <= targets, named - targets
    paths = re.findall(r"((?:tests|tlsgate|benchmarks|policies)/[\w./-]*\w)", CONTRIBUTING)
    assert len(paths) > 20
    for path in paths:
        assert (REPO / path).exists(), path
    assert "tests/unit/test_architecture.py" in CONTRIBUTING and "benchmarks/run.py" in CONTRIBUTING


@pytest.mark.skipif(not (REPO / ".git").exists() or not shutil.which("git"), reason="not a git checkout")
def test_the_ca_directories_the_docs_create_are_git_ignored() -> None:
    kubernetes = section("Kubernetes")
    confdir = re.search(r"tlsgate ca create --confdir (\S+)", kubernetes)
    assert confdir, "the Kubernetes recipe creates its CA directory with `tlsgate ca create --confdir DIR`"
    keys = [f"{confdir.group(1).rstrip('/')}/mitmproxy-ca.pem", "certs/mitmproxy-ca.pem"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *keys], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split() == keys, done
    # ...and out of a `docker build` context: the daemon is sent every file the context holds.
    dockerignore = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {confdir.group(1).rstrip("/"), "certs"} <= dockerignore
