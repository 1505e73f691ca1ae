"""The WireGuard peer store under real concurrent `tlsgate wireguard` processes, a permissive umask and damage.

No tunnel here (tests/live/test_wireguard_peers.py has those): real `python -m tlsgate wireguard ...`
processes started together against one confdir, as a device-farm script adding a peer per phone does.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tlsgate.tls import wgpeers


def wireguard(confdir: Path, *args: str, umask: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tlsgate", "wireguard", *args, "--confdir", str(confdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def at_once(confdir: Path, commands: list[list[str]]) -> list[tuple[int, str, str]]:
    """Start every command before waiting for any: their read-modify-writes of the store overlap."""
    started = [wireguard(confdir, *command) for command in commands]
    done = []
    for proc in started:
        out, err = proc.communicate(timeout=300)
        done.append((proc.returncode, out, err))
    return done


def stored(confdir: Path) -> dict[str, dict[str, str]]:
    data = json.loads((confdir / "wireguard" / "peers.json").read_text())
    return {peer["name"]: peer for peer in data["peers"]}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_concurrent_adds_all_land_in_the_store(tmp_path: Path) -> None:
    """Each process read the store, added its peer and wrote it back: 1 to 6 of 12 peers were lost."""
    confdir = tmp_path / "certs"  # no store yet: the first writers also race to create it
    names = [f"phone-{i:02d}" for i in range(20)]
    results = at_once(confdir, [["add", name] for name in names])
    for (code, out, err), name in zip(results, names, strict=True):
        assert code == 0 and f"added WireGuard peer {name}:" in out, (name, out, err)
    peers = stored(confdir)
    assert sorted(peers) == names, f"lost: {sorted(set(names) - set(peers))}"
    assert len({p["address"] for p in peers.values()}) == len(names)
    assert len({p["private_key"] for p in peers.values()}) == len(names)
    store_dir = confdir / "wireguard"
    assert mode_of(store_dir / "peers.json") == 0o600 and mode_of(store_dir / ".peers.lock") == 0o600
    assert mode_of(store_dir) == 0o700 and mode_of(confdir) == 0o700
    assert not list(store_dir.glob(".*.tmp")), "no temporary file is left behind"
    created = [err for _, _, err in results if "created" in err and "peers.json" in err]
    assert len(created) == 1, "exactly one process created the store"


def test_adds_and_removes_at_once_never_resurrect_a_removed_peer(tmp_path: Path) -> None:
    confdir = tmp_path / "certs"
    old = [f"old-{i}" for i in range(10)]
    assert all(code == 0 for code, _, _ in at_once(confdir, [["add", name] for name in old]))
    assert sorted(stored(confdir)) == old
    new = [f"new-{i}" for i in range(10)]
    commands = [command for pair in zip(old, new, strict=True) for command in (["remove", pair[0]], ["add", pair[1]])]
    results = at_once(confdir, commands)
    assert all(code == 0 for code, _, _ in results), results
    assert sorted(stored(confdir)) == new, "a removed peer came back, or an added one was lost"
    listed = subprocess.run(
        [sys.executable, "-m", "tlsgate", "wireguard", "list", "--confdir", str(confdir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()[1:]) == new


def test_a_reader_never_sees_half_a_store_while_writers_add(tmp_path: Path) -> None:
    """What a starting `tlsgate run` does (it reads the store without the lock) while peers are being added."""
    confdir = tmp_path / "certs"
    assert at_once(confdir, [["add", "first"]])[0][0] == 0
    writers = [wireguard(confdir, "add", f"dev-{i}") for i in range(8)]
    seen = set()
    while any(proc.poll() is None for proc in writers):
        store = wgpeers.load(confdir)  # raises on a torn or empty file
        assert store is not None
        seen.add(len(store.peers))
    for proc in writers:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    assert len(wgpeers.load(confdir).peers) == 9  # type: ignore[union-attr]
    assert seen, "the reader ran while the writers did"


def test_under_umask_000_every_directory_tlsgate_creates_is_0700(tmp_path: Path) -> None:
    """`wireguard add` created the confdir (a parent of wireguard/) with the umask's mode: 0777, so another user
    could swap the whole wireguard/ directory, server key and all."""
    base = tmp_path / "home"
    confdir = base / "data" / "tlsgate"
    add = wireguard(confdir, "add", "pixel", umask=0)
    out, err = add.communicate(timeout=60)
    assert add.returncode == 0, err
    for directory in (base, base / "data", confdir, confdir / "wireguard"):
        assert mode_of(directory) == 0o700, (directory, oct(mode_of(directory)))
    assert mode_of(confdir / "wireguard" / "peers.json") == 0o600
    ca = subprocess.run(
        [sys.executable, "-m", "tlsgate", "ca", "create", "--confdir", str(tmp_path / "ca" / "deeper")],
        capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.umask(0),
    )  # fmt: skip
    assert ca.returncode == 0, ca.stderr
    assert mode_of(tmp_path / "ca") == 0o700 and mode_of(tmp_path / "ca" / "deeper") == 0o700


def test_a_confdir_others_can_write_is_closed_and_reported(tmp_path: Path) -> None:
    confdir = tmp_path / "certs"
    confdir.mkdir()
    os.chmod(confdir, 0o777)  # made by an older tlsgate under umask 000
    add = wireguard(confdir, "add", "pixel")
    out, err = add.communicate(timeout=60)
    assert add.returncode == 0, err
    assert f"{confdir} is writable by every local user (mode 0777)" in err and "now mode 0755" in err, err
    assert "Check that no file in it was replaced" in err
    assert mode_of(confdir) == 0o755
    again = wireguard(confdir, "add", "other")
    assert "writable" not in again.communicate(timeout=60)[1]


DAMAGE = {
    "a key pasted as the name": lambda d, key: d["peers"][0].update(name=key),
    "a key pasted as the address": lambda d, key: d["peers"][0].update(address=key),
    "a key pasted as address6": lambda d, key: d["peers"][0].update(address6=key),
    "a key pasted as the network": lambda d, key: d.update(network=key),
    "a key with a stray character": lambda d, key: d.update(server_private_key=key + "!"),
    "a peer that is only a key": lambda d, key: d["peers"].append(key),
    "two peers of one name": lambda d, key: d["peers"].append({**d["peers"][0], "address": "10.0.0.9"}),
}


@pytest.mark.parametrize("damage", [*DAMAGE, "truncated", "not UTF-8"])
def test_a_damaged_store_is_located_and_no_key_is_printed(tmp_path: Path, damage: str) -> None:
    confdir = tmp_path / "certs"
    assert at_once(confdir, [["add", "pixel"]])[0][0] == 0
    path = confdir / "wireguard" / "peers.json"
    data = json.loads(path.read_text())
    keys = [data["server_private_key"], data["peers"][0]["private_key"]]
    foreign = wgpeers.genkey()
    keys.append(foreign)
    if damage == "truncated":
        text = path.read_text()
        raw = text[: text.index(keys[1]) + 20].encode()  # cut inside the peer's key
    elif damage == "not UTF-8":
        raw = path.read_text().replace(keys[1], keys[1][:10] + "\udcff" + keys[1][10:]).encode("utf-8", "surrogateescape")
    else:
        DAMAGE[damage](data, foreign)
        raw = json.dumps(data, indent=2).encode()
    path.write_bytes(raw)
    for command in (["list"], ["remove", "pixel"]):  # a read (as show and run) and a read-modify-write (as add)
        proc = wireguard(confdir, *command)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (command, out, err)
        leaked = [key for key in keys if key in out + err or key[:16] in out + err]
        assert not leaked, f"{damage}: {command} printed key material:\n{err}"
        assert f"tlsgate: {path}:" in err and "Traceback" not in err, err
        line, col = err.split(f"{path}:", 1)[1].split(":")[:2]
        assert line.isdigit() and col.isdigit(), err
    assert path.read_bytes() == raw, "a damaged store is never overwritten"
