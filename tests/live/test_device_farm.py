"""The README's device-farm walk-through, run as printed: its policy, its script (backend stand-in, tlsgate, three
phones on loopback addresses), its report and its gate, each output it shows checked against what the run printed.

The only change made to what the README prints: the ports 8080 and 8443 become free ones, so the run cannot meet
another process on this machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

from tests.docs import section as docs_section
from tests.harness import free_port

SECTION = "A device-farm run, start to finish"


def section() -> str:
    return docs_section(SECTION)


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), re.S)


def console_steps() -> list[tuple[str, list[str]]]:
    """Each `$ command` of the section's console blocks with the output lines shown under it."""
    steps: list[tuple[str, list[str]]] = []
    for block in blocks("console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
    return steps


def shell(command: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """`command` by bash as a user's terminal runs it, stdout and stderr as they interleave; whatever it started
    is stopped with it (its own session) even when it fails."""
    proc = subprocess.Popen(
        ["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    return proc.returncode, out


def test_the_readme_walk_through_runs_as_printed_and_shows_what_the_run_produced(tmp_path: Path) -> None:
    (policy,) = blocks("yaml")
    (script,) = blocks("sh")
    shown_run = blocks("text")[0]
    (tmp_path / "farm.yaml").write_text(policy)
    ports = {"8080": str(free_port()), "8443": str(free_port())}
    for old, new in ports.items():
        script = re.sub(rf"\b{old}\b", new, script)
    assert script.count(ports["8080"]) >= 3 and script.count(ports["8443"]) >= 4, "the README's ports moved"
    env = {k: v for k, v in os.environ.items() if k not in ("TLSGATE_CONFDIR", "LOG_LEVEL")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `tlsgate`: this checkout's

    status, out = shell(script, tmp_path, env, timeout=180)
    log = (tmp_path / "tlsgate.log").read_text() if (tmp_path / "tlsgate.log").exists() else "(no log)"
    assert status == 0, f"{out}\n--- tlsgate.log ---\n{log}"
    assert out == shown_run, f"{out}\n--- tlsgate.log ---\n{log}"  # every status of every phone, as printed

    steps = console_steps()
    assert [command for command, _ in steps] == [
        "tlsgate report farm.jsonl --format markdown",
        'tlsgate report farm.jsonl --fail-on MASVS-NETWORK-1 --format junit --out farm-junit.xml; echo "exit $?"',
    ]
    (report_command, report_shown), (gate_command, gate_shown) = steps

    status, report = shell(report_command, tmp_path, env, timeout=60)
    assert status == 0, report
    lines = report.splitlines()
    at = 0
    for line in report_shown:  # abridged: each line shown is one the report printed, in the order printed
        assert line in lines[at:], f"the README shows {line!r}; the report printed:\n{report}"
        at = lines.index(line, at) + 1
    heading = "#### MASVS-NETWORK: "
    assert [line for line in lines if line.startswith(heading)] == [line for line in report_shown if line.startswith(heading)]
    assert "`control`" not in report, "the control phone has no findings, so no table"

    status, gate = shell(gate_command, tmp_path, env, timeout=60)
    assert status == 0  # the `echo` ran: the shell's own status
    assert gate.splitlines() == gate_shown
    suites = ElementTree.parse(tmp_path / "farm-junit.xml").getroot().findall("testsuite")
    failures = {suite.get("name"): int(suite.get("failures") or 0) for suite in suites}
    devices = {name: count for name, count in failures.items() if not name.startswith("MASVS-NETWORK: ")}
    assert devices == {"pixel-6": 1, "pixel-7": 0}
    # and each device's MASVS-NETWORK view (a case per MASTG test): pixel-6 failed the tests its probes evidence
    assert failures["MASVS-NETWORK: pixel-7"] == 0 and failures["MASVS-NETWORK: pixel-6"] >= 3
