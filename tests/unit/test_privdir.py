"""Key directories: created 0700 whatever the umask, others' write access taken away or reported."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsgate.app.cli import main
from tlsgate.tls.privdir import ensure_private_dir, secure_dir, writable_by_others


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_missing_parents_are_created_0700_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    target = tmp_path / "a" / "b" / "confdir"
    assert ensure_private_dir(target) == []
    for directory in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert mode_of(directory) == 0o700, directory


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "certs").write_text("")
    with pytest.raises(OSError, match="exists but is not a directory"):
        ensure_private_dir(tmp_path / "certs")


def test_an_owned_world_writable_directory_loses_the_write_bits_and_says_so(tmp_path: Path) -> None:
    confdir = tmp_path / "certs"
    confdir.mkdir()
    os.chmod(confdir, 0o777)
    note = secure_dir(confdir)
    assert note and "writable by every local user (mode 0777)" in note and "now mode 0755" in note
    assert mode_of(confdir) == 0o755 and secure_dir(confdir) is None


def _other_group() -> grp.struct_group:
    """A group with members besides the directory's owner, or one not named after it: not a user-private group."""
    for group in grp.getgrall():
        if group.gr_gid != os.getegid():
            return group
    pytest.skip("no second group on this machine")


def test_group_write_is_fine_for_a_user_private_group_only(tmp_path: Path) -> None:
    import pwd

    private = tmp_path / "upg"
    private.mkdir()
    os.chmod(private, 0o775)
    st = private.stat()
    owner, group = pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid)
    if group.gr_name == owner and set(group.gr_mem) <= {owner}:
        assert writable_by_others(private) is None  # umask 002 with a user-private group: the owner alone
    if os.geteuid() != 0:
        pytest.skip("changing a directory's group needs root")
    shared = tmp_path / "shared"
    shared.mkdir()
    other = _other_group()
    os.chown(shared, -1, other.gr_gid)
    os.chmod(shared, 0o770)
    problem = writable_by_others(shared)
    assert problem and f"writable by group {other.gr_name} (mode 0770)" in problem


def test_a_directory_of_another_user_is_reported_to_a_non_root_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the directory to another user")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 1, 1)
    assert writable_by_others(theirs) is None  # root runs on a user's directory (sudo in a checkout)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # this process as an unprivileged third user
    problem = writable_by_others(theirs)
    assert problem and "belongs to another user" in problem
    note = secure_dir(theirs)
    assert note and "run `chmod 700" in note and mode_of(theirs) == 0o755  # not ours to change


def test_ca_commands_report_a_loose_confdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    confdir = tmp_path / "certs"
    assert main(["ca", "create", "--confdir", str(confdir)]) == 0
    assert mode_of(confdir) == 0o700
    os.chmod(confdir, 0o777)
    capsys.readouterr()
    assert main(["ca", "show", "--confdir", str(confdir)]) == 0
    err = capsys.readouterr().err
    assert "writable by every local user (mode 0777)" in err and "Check that no file in it was replaced" in err
    assert mode_of(confdir) == 0o755
