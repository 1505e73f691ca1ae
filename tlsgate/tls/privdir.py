"""Directories that hold keys: created owner-only whatever the umask; others' write access taken away or reported.

A file mode protects a key from being read; only the directory's mode protects
it from being *replaced*. Whoever can write to the CA directory can rename
`mitmproxy-ca.pem` away and put their own CA (or WireGuard server key) in its
place, and tlsgate would serve it. `mkdir(parents=True)` created every missing
parent with the umask's mode (0777 under `umask 000`), so the first
`tlsgate wireguard add` made such a directory.

Every directory tlsgate creates on the way is made 0700. An existing one that
others can write to is not refused (a Kubernetes emptyDir is 0777 by design,
and the pod has no other users), but tlsgate takes the others' write access
away when it owns the directory, and says so either way: whether a file was
replaced meanwhile is for the owner to check.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700


class PrivateDirError(OSError):
    """A key directory that cannot be made; the message says why."""


def ensure_private_dir(path: Path) -> list[str]:
    """Make `path` exist as a directory, creating it and any missing parent 0700; the notes say what was wrong
    with an existing one (see `secure_dir`)."""
    path = Path(path).expanduser()
    missing: list[Path] = []
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made by a concurrent tlsgate (0700 too) or the user: checked below like any existing one
        except OSError as exc:
            raise PrivateDirError(f"cannot create directory {directory}: {exc.strerror}") from None
        # The umask can only narrow the mode; a umask of 0777 would leave even the owner out.
        os.chmod(directory, PRIVATE_DIR_MODE)
    if not path.is_dir():
        raise PrivateDirError(f"{path} exists but is not a directory")
    note = secure_dir(path)
    return [note] if note else []


def secure_dir(path: Path) -> str | None:
    """Take other users' write access to the directory `path` away if this process owns it; the warning to show
    when others could write to it (now or until now), else None."""
    problem = writable_by_others(path)
    if problem is None:
        return None
    try:
        st = os.stat(path)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o022:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o022)
            now = stat.S_IMODE(os.stat(path).st_mode)
            return f"WARNING: {problem}; tlsgate removed that (now mode {now:04o}). Check that no file in it was replaced"
    except OSError:
        pass
    return f"WARNING: {problem}. Check that no file in it was replaced, and run `chmod 700 {path}` as its owner"


def writable_by_others(path: Path) -> str | None:
    """Why other local users could replace files in the directory `path`, or None (also for a missing one).

    Others: everyone (mode o+w); a group with members other than the owner (a
    user-private group, which `umask 002` systems give every user, is the owner
    alone); another owner who is not root (unless this process is root:
    `sudo tlsgate ...` in a user's checkout).
    """
    if os.name != "posix":
        return None  # no owner and mode bits to read there
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        return f"{path} is writable by every local user (mode {mode:04o}), who could replace the keys in it"
    if mode & 0o020 and not _private_group(st.st_gid, st.st_uid):
        group = _group_name(st.st_gid)
        return f"{path} is writable by group {group} (mode {mode:04o}), whose members could replace the keys in it"
    euid = os.geteuid()
    if st.st_uid not in (euid, 0) and euid != 0:
        return f"{path} belongs to another user ({_user_name(st.st_uid)}), who could replace the keys in it"
    return None


def _private_group(gid: int, uid: int) -> bool:
    """A user-private group: named after the owner and with nobody else in it."""
    import grp
    import pwd

    try:
        group = grp.getgrgid(gid)
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return group.gr_name == owner and set(group.gr_mem) <= {owner}


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
