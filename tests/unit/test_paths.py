"""The CA directory is the same wherever tlsgate starts; a second CA is never created silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsgate.app import paths
from tlsgate.tls.ca import ensure_ca

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(paths.ENV_CONFDIR, raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def test_a_checkout_keeps_its_ca_in_its_own_certs_wherever_tlsgate_starts(tmp_path: Path) -> None:
    assert paths.checkout_root() == REPO  # the suite runs from an editable install of this checkout
    assert paths.default_confdir() == REPO / "certs"


def test_the_environment_names_the_ca_directory_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(paths.ENV_CONFDIR, str(tmp_path / "volume"))
    assert paths.default_confdir() == tmp_path / "volume"


def test_the_per_user_directory_follows_xdg_and_ignores_a_relative_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert paths.user_data_dir() == tmp_path / "home" / ".local" / "share" / "tlsgate"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.user_data_dir() == tmp_path / "xdg" / "tlsgate"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # the XDG spec: relative paths are invalid, ignore them
    assert paths.user_data_dir() == tmp_path / "home" / ".local" / "share" / "tlsgate"


def test_a_new_ca_beside_an_existing_one_is_said_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(paths, "checkout_root", lambda: None)  # as installed: the checkout's own CA is not in play
    chosen = tmp_path / "home" / ".local" / "share" / "tlsgate"
    assert paths.new_ca_warning(chosen) is None  # nothing else exists: a first CA is not news
    ensure_ca(tmp_path / "certs")  # an older CA in ./certs, where tlsgate used to put it
    warning = paths.new_ca_warning(chosen)
    assert warning is not None and f"already exists in {tmp_path / 'certs'}/" in warning
    assert f"--confdir {tmp_path / 'certs'}" in warning
    assert paths.new_ca_warning(tmp_path / "certs") is None  # the chosen directory itself is not "another" CA
