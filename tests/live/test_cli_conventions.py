"""The command line behaves as mitmdump users and shell users expect: `--version` names every version a bug
report needs (as `mitmdump --version` does), mitmdump's short options mean the same here, and output piped
into `head` ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO, Tlsgate, Upstream, curl, free_port
from tlsgate import __version__
from tlsgate.app.cli import BROKEN_PIPE

MITMDUMP = Path(sys.executable).parent / "mitmdump"
SCENARIO = REPO / "tests" / "data" / "scenario" / "findings.jsonl"


def tlsgate(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlsgate", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_version_prints_what_mitmdump_version_prints_under_tlsgate_s_own_line() -> None:
    ours = tlsgate("--version")
    theirs = subprocess.run([str(MITMDUMP), "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert ours.returncode == 0 and ours.stderr == "", ours
    lines = ours.stdout.splitlines()
    assert lines[0] == f"tlsgate:   {__version__}"
    # The same mitmproxy, Python, OpenSSL and platform lines, word for word: one format for both tools' bug reports.
    assert lines[1:] == theirs.stdout.splitlines(), (ours.stdout, theirs.stdout)
    assert [line.split(":", 1)[0] for line in lines] == ["tlsgate", "Mitmproxy", "Python", "OpenSSL", "Platform"]


def test_mitmdump_short_options_p_m_s_and_w_mean_the_same(tmp_path: Path, http_upstream: Upstream) -> None:
    """`-p PORT -m socks5 -s script.py -w flows`, as a mitmdump command line would say it."""
    script = tmp_path / "hello.py"
    marker = tmp_path / "loaded"
    script.write_text(f"from pathlib import Path\n\ndef running():\n    Path({str(marker)!r}).write_text('yes')\n")
    port = free_port()
    flows = tmp_path / "capture.flows"
    command = [sys.executable, "-m", "tlsgate", "run", "-p", str(port), "-m", "socks5", "-s", str(script), "-w", str(flows)]
    command += [
        "--resolve",
        f"api.test:{http_upstream.port}:127.0.0.1",
        "--metrics-port",
        "-1",
        "--confdir",
        str(tmp_path / "certs"),
        "--findings",
        str(tmp_path / "f.jsonl"),
    ]
    gate = Tlsgate(tmp_path, command=command).start()
    try:
        assert gate.port == port
        assert f"SOCKS v5 proxy listening at 127.0.0.1:{port}" in gate.output or f"listening at *:{port}" in gate.output
        # The socks5 listener answers as one: a plain-HTTP request through it is judged (blocked by the default policy).
        blocked = curl(f"socks5h://127.0.0.1:{port}", f"http://api.test:{http_upstream.port}/login")
        assert blocked.status == 403 and blocked.headers["x-tlsgate-check"] == "cleartext", blocked
        assert http_upstream.requests == []
        assert marker.read_text() == "yes"
    finally:
        gate.stop()
    # The capture mitmdump -w writes: the flow is in it, and it is the owner's only, like every capture.
    assert b"api.test" in flows.read_bytes() and flows.stat().st_mode & 0o077 == 0


def closed_reader_run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[bytes]:
    """tlsgate with stdout a pipe whose reader is gone before it writes: what `| head -1` leaves once head exits.

    The read end is closed before the process starts, so the first write fails every time (a real `head`
    races the writer, and a short output can fit in the pipe before head leaves).
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "tlsgate", *args], stdout=write_end, stderr=subprocess.PIPE, cwd=cwd, timeout=60
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("--version",),
        ("run", "--help"),
        ("report", "--format", "junit", str(SCENARIO)),
        ("diff", str(SCENARIO), str(SCENARIO)),
        ("validate", "policies/"),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_output_into_a_reader_that_left_ends_quietly(args: tuple[str, ...]) -> None:
    done = closed_reader_run(*args)
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "Broken pipe" not in stderr and "internal error" not in stderr, stderr
    if args[0] == "validate" or args[-1] == "--help":
        # validate writes nothing to stdout; argparse's help printer drops its own write errors and exits 0.
        assert done.returncode == 0, stderr
    else:
        # Not 1 ("the gate failed") nor 3 (a tlsgate bug): what a shell reports for `yes | head -1`'s writer.
        assert done.returncode == BROKEN_PIPE, (done.returncode, stderr)


def test_a_command_s_last_buffered_lines_into_a_reader_that_left_end_quietly(tmp_path: Path) -> None:
    """`ca create` prints a few short lines: they wait in stdout's buffer until the interpreter flushes it on the
    way out, where an unhandled broken pipe prints "Exception ignored ... BrokenPipeError"."""
    done = closed_reader_run("ca", "create", "--confdir", str(tmp_path / "ca"), cwd=tmp_path)
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and "Broken pipe" not in stderr, stderr
    assert done.returncode == BROKEN_PIPE, (done.returncode, stderr)
    assert (tmp_path / "ca" / "mitmproxy-ca.pem").is_file(), "the command did its work; only its output had no reader"


def test_report_piped_into_head_as_the_readme_spells_it() -> None:
    """The shell's own pipe and head: the first line arrives, and nothing but tlsgate's own summary on stderr."""
    done = subprocess.run(
        f"{sys.executable} -m tlsgate report --format junit {SCENARIO} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.stdout.startswith("<?xml"), done
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
