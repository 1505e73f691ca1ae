"""Live tests: every test here carries the `live` marker, and a failing one prints the tlsgate consoles it started."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import harness
from tests.clients import Builds


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/live/" in str(item.path):
            item.add_marker(pytest.mark.live)


@pytest.fixture(autouse=True)
def _track_started_gates() -> Iterator[None]:
    harness.STARTED.clear()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "/tests/live/" in str(item.path):
        for index, gate in enumerate(harness.STARTED):
            report.sections.append((f"tlsgate console #{index + 1} (port {gate.port})", gate.output or "(no output)"))


@pytest.fixture(scope="session")
def stack_builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """The Node, Java and Go clients of tests/clients/, each built once per session when a test first needs it."""
    return Builds(tmp_path_factory.mktemp("stack-clients"))
