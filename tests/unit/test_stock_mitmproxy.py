"""`mitmdump -s "$(tlsgate script-path)"`: the command prints a script mitmproxy can load, from wherever this
tlsgate is installed, and loading it the way mitmproxy does leaves nothing of tlsgate importable under a
top-level name (tests/live/test_wheel.py runs the README's command from an installed wheel)."""

from __future__ import annotations

import logging
import pkgutil
import shutil
import sys
from pathlib import Path

import pytest
from mitmproxy.addons.script import load_script

import tlsgate
from tlsgate.app.cli import main

PACKAGE = Path(tlsgate.__file__).resolve().parent


def script_path(capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["script-path"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1, out  # one line: `$(...)` takes it whole
    return Path(out.strip())


def test_script_path_prints_this_installations_script(capsys: pytest.CaptureFixture[str]) -> None:
    path = script_path(capsys)
    assert path.is_absolute() and path.is_file()
    assert path.resolve() == PACKAGE / "app" / "mitmproxy_script" / "tlsgate_addons.py"


def test_loading_it_as_mitmproxy_does_leaves_no_tlsgate_module_importable_by_a_bare_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """mitmproxy prepends the script's folder to sys.path and never removes it: from tlsgate/addons/ that made
    `policy`, `state`, `metrics`, `limits` ... importable as top-level modules for the life of mitmdump."""
    path = script_path(capsys)
    before = list(sys.path)
    try:
        module = load_script(str(path))
        added = [entry for entry in sys.path if entry not in before]
        exposed = {info.name for info in pkgutil.iter_modules(added)}
    finally:
        sys.path[:] = before
    assert module is not None
    assert len(module.addons) > 10 and any(type(addon).__name__ == "PolicyStore" for addon in module.addons)
    assert exposed <= {"tlsgate_addons"}, exposed
    assert {p.name for p in path.parent.iterdir() if p.name != "__pycache__"} == {"__init__.py", "tlsgate_addons.py"}


def test_the_script_of_another_installation_refuses_to_load_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A mitmdump given another environment's script would run its own environment's tlsgate (another version,
    maybe none): it stops at load and names both places."""
    other = tmp_path / "site-packages" / "tlsgate" / "app" / "mitmproxy_script" / "tlsgate_addons.py"
    other.parent.mkdir(parents=True)
    shutil.copy(script_path(capsys), other)
    before = list(sys.path)
    with caplog.at_level(logging.ERROR):
        try:
            assert load_script(str(other)) is None
        finally:
            sys.path[:] = before
    message = caplog.text
    assert f"belongs to the tlsgate in {other.parents[2]}" in message and str(PACKAGE) in message, message
    assert "run `tlsgate script-path` and mitmdump from the same environment" in message
