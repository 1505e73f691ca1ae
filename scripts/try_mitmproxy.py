"""Try tlsgate on another mitmproxy (the newest by default) and say what breaks, without touching the repository.

tlsgate wraps and copies private mitmproxy code (tlsgate/addons/mitm_internals.py, tlsgate/addons/wireguard.py)
and pins the source of every function it follows by digest. Moving the `mitmproxy` cap in pyproject.toml starts
with this report: which pinned functions changed (re-read each, adapt tlsgate, then pin the new digest it prints),
which unit tests fail, and which installed versions differ from requirements-dev.lock.

    make try-mitmproxy                       # the newest mitmproxy the index has, pins + unit suite
    python3.12 scripts/try_mitmproxy.py --version 12.3.1 --pins-only
    .venv/bin/python scripts/try_mitmproxy.py --python .venv/bin/python --pins-only   # this venv, as it is

A throwaway virtualenv gets the lock's packages (hash-checked), then `pip install mitmproxy==VERSION`, which
moves only what that mitmproxy requires; the tests run on a copy of the working tree (committed or not), so the
checkout, its lock and its .venv stay as they were. `--python` skips the virtualenv and the copy: the tests
run in place with that interpreter (the suite's check that the pins of the installed mitmproxy hold).
Exit status: 0 nothing changed or failed, 1 something did, 2 the trial could not run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every test that pins or reads mitmproxy's private code.
PIN_TESTS = ("tests/unit/test_mitm_internals.py", "tests/unit/test_wireguard.py", "tests/unit/test_refusal_lines.py")

# The pin tests' failure message: "mitmproxy 12.3.1 changed NAME: re-read it, ..., then pin DIGEST", and pytest's
# rewritten comparison after it: "assert 'NEW' == 'PINNED'".
PIN_MESSAGE = re.compile(r"changed (?P<name>\S+): re-read it.*?then pin (?P<new>[0-9a-f]{16})", re.S)
COMPARISON = re.compile(r"assert '(?P<new>[0-9a-f]{16})' == '(?P<old>[0-9a-f]{16})'")


@dataclass
class Outcome:
    """What one pytest run said, read from its JUnit XML."""

    ran: int = 0
    pins: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (pinned, now)
    failures: dict[str, str] = field(default_factory=dict)  # test id -> first line of the error


def read_junit(text: str) -> Outcome:
    """Pins that changed and tests that failed, from pytest's --junitxml output."""
    outcome = Outcome()
    root = ET.fromstring(text)
    for case in root.iter("testcase"):
        outcome.ran += 1
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is None:
            continue
        detail = f"{problem.get('message') or ''}\n{problem.text or ''}"
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        pin = PIN_MESSAGE.search(detail)
        if pin is not None:
            compared = COMPARISON.search(detail)
            outcome.pins[pin["name"]] = (compared["old"] if compared else "?", pin["new"])
        else:
            first = next((line.strip() for line in (problem.get("message") or detail).splitlines() if line.strip()), "")
            outcome.failures[test_id] = first[:200]
    return outcome


def lock_pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            pins[_normal(match[1])] = match[2]
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(python: str) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True).stdout
    pairs = (line.partition("==") for line in out.splitlines() if not line.startswith(("#", "-e")))
    return {_normal(name): version for name, _, version in pairs if version}


def run(command: list[str], cwd: Path, log: Path) -> int:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        return subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=_env()).returncode


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def newest(python: str, log: Path) -> str:
    out = subprocess.run(
        [python, "-m", "pip", "index", "versions", "mitmproxy"], capture_output=True, text=True, env=_env(), check=False
    )
    log.open("a").write(out.stdout + out.stderr)
    match = re.search(r"^mitmproxy \(([^)]+)\)", out.stdout, re.M)
    if match is None:
        raise SystemExit(f"try-mitmproxy: the index named no mitmproxy version (see {log})")
    return match[1]


def copy_tree(dest: Path) -> Path:
    """The working tree as it is (tracked and untracked files, ignored ones left out) in `dest`."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / os.fsdecode(name)
        if source.is_symlink() or source.is_file():  # a link stays a link (policies/default.yaml: tests read it as one)
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    return dest


def prepare(work: Path, version: str | None, log: Path) -> tuple[str, Path, str]:
    """A throwaway venv with the lock's packages and the mitmproxy asked for; returns (python, tree, version)."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    if run(
        [python, "-m", "pip", "install", "-q", "--require-hashes", "--no-deps", "-r", str(ROOT / "requirements-dev.lock")],
        ROOT,
        log,
    ):
        raise SystemExit(f"try-mitmproxy: installing requirements-dev.lock failed (see {log})")
    version = version or newest(python, log)
    if run([python, "-m", "pip", "install", "-q", f"mitmproxy=={version}"], ROOT, log):
        raise SystemExit(f"try-mitmproxy: mitmproxy {version} does not install here (see {log})")
    tree = copy_tree(work / "src")
    if run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(tree)], tree, log):
        raise SystemExit(f"try-mitmproxy: installing tlsgate into the trial venv failed (see {log})")
    return python, tree, version


def pytest(python: str, tree: Path, work: Path, name: str, args: list[str], log: Path) -> Outcome:
    xml = work / f"{name}.xml"
    command = [python, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-q", f"--junitxml={xml}", *args]
    run(command, tree, log)
    if not xml.exists():
        raise SystemExit(f"try-mitmproxy: pytest wrote no report for the {name} run (see {log})")
    return read_junit(xml.read_text())


def report(version: str, changed: dict[str, tuple[str, str]], pins: Outcome, unit: Outcome | None) -> list[str]:
    lines = [f"tlsgate on mitmproxy {version}"]
    if changed:
        lines.append("versions that differ from requirements-dev.lock:")
        lines += [f"  {name} {old} -> {new}" for name, (old, new) in sorted(changed.items())]
    else:
        lines.append("versions: as in requirements-dev.lock")
    if pins.pins:
        lines.append(f"pinned mitmproxy functions that changed ({len(pins.pins)}): re-read each, adapt tlsgate, then pin")
        lines += [f"  {name}: pinned {old}, now {new}" for name, (old, new) in sorted(pins.pins.items())]
    else:
        lines.append(f"pinned mitmproxy functions: none changed ({pins.ran} pin tests)")
    if pins.failures:
        lines.append(f"other failures in the pin tests ({len(pins.failures)}):")
        lines += [f"  {test}: {error}" for test, error in sorted(pins.failures.items())]
    if unit is not None:
        failed = {test: error for test, error in unit.failures.items() if test not in pins.failures}
        lines.append(f"unit suite: {unit.ran} tests, {len(failed) + len(unit.pins)} failed")
        lines += [f"  {test}: {error}" for test, error in sorted(failed.items())]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", help="the mitmproxy version to try (default: the newest the index has)")
    parser.add_argument("--python", help="run in place with this interpreter and what it has installed (no venv)")
    parser.add_argument("--pins-only", action="store_true", help="only the tests that pin mitmproxy's private code")
    parser.add_argument("--workers", default="2", help="pytest-xdist workers for the unit suite (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the trial venv and tree (their path is printed)")
    parser.add_argument("--tree", type=Path, help="with --python: the tree whose tests run (default: this checkout)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tlsgate-try-mitmproxy-"))
    log = work / "log.txt"
    try:
        if args.python:
            python, tree = args.python, args.tree or ROOT
            version = installed(python).get("mitmproxy", "?")
            if args.version and args.version != version:
                raise SystemExit(f"try-mitmproxy: {args.python} has mitmproxy {version}, not {args.version}")
        else:
            python, tree, version = prepare(work, args.version, log)
        locked = lock_pins(ROOT / "requirements-dev.lock")
        now = installed(python)
        changed = {name: (pin, now.get(name, "absent")) for name, pin in locked.items() if pin != now.get(name)}
        if not args.python:  # what the new mitmproxy brought that the lock does not have (in place: whatever is installed)
            changed |= {
                name: ("absent", got) for name, got in now.items() if name not in locked and name not in ("pip", "tlsgate")
            }
        pins = pytest(python, tree, work, "pins", ["-n", "0", *PIN_TESTS], log)
        unit = None
        if not args.pins_only:
            unit = pytest(python, tree, work, "unit", ["-n", args.workers, "-m", "not live", "tests/unit"], log)
        lines = report(version, changed, pins, unit)
        broken = bool(pins.pins or pins.failures or (unit and unit.failures))
        lines.append(f"verdict: {'BREAKS: see above' if broken else 'nothing breaks'} (log: {log if args.keep else 'removed'})")
        print("\n".join(lines))
        return 1 if broken else 0
    except SystemExit as stop:
        print(stop, file=sys.stderr)
        if not args.keep:
            args.keep = True  # the log is what explains it
            print(f"try-mitmproxy: kept {work}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"try-mitmproxy: trial files in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
