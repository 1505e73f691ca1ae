"""`tlsgate run` options an operator brings from mitmdump: `--set confdir=`, `-q`, `-v`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsgate.app.cli import confdir_from_set


def test_set_confdir_is_taken_as_the_confdir_and_not_passed_through() -> None:
    assert confdir_from_set(None, ["flow_detail=2", "confdir=/srv/ca"]) == (Path("/srv/ca"), ["flow_detail=2"], None)
    assert confdir_from_set(None, ["confdir=/a", "confdir=/b"])[0] == Path("/b")  # the last wins, as in mitmproxy
    assert confdir_from_set(None, ["confdir=~/ca"])[0] == Path.home() / "ca"  # mitmproxy expands ~ too
    assert confdir_from_set(Path("/srv/ca"), ["confdir=/srv/ca/"]) == (Path("/srv/ca"), [], None)  # the same one
    assert confdir_from_set(Path("/x"), ["termlog_verbosity=warn"]) == (Path("/x"), ["termlog_verbosity=warn"], None)


@pytest.mark.parametrize(
    ("confdir", "sets", "problem"),
    [
        (Path("/srv/a"), ["confdir=/srv/b"], "--confdir /srv/a and --set confdir=/srv/b name two CA directories"),
        (None, ["confdir="], "--set confdir= needs a directory"),
    ],
)
def test_two_ca_directories_are_refused(confdir: Path | None, sets: list[str], problem: str) -> None:
    assert problem in (confdir_from_set(confdir, sets)[2] or "")
