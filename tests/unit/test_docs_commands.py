"""The commands the docs show work as written: after the one set-up step Get started shows (`make run`, then
`source .venv/bin/activate`), `tlsgate`, `python -m ...` and the repo's helper scripts run by the names the docs
spell; every `python` command names a script or module that exists; and the shell examples listed in RUN_BY are
the ones the live suite runs as printed (each of those modules reads its section by heading)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.docs import REPO, doc_files, docs_text, section

# The docs' shell examples the suite runs as printed, by section heading -> the test module that reads that
# section (by its heading) and runs its commands or policy in a lab.
RUN_BY = {
    "Two commands": "tests/live/test_readme.py",  # `make run` from a clean clone: HTTPS inspected, plain HTTP blocked
    "In CI": "tests/live/test_report_live.py",  # examples/ci-job.sh, shown verbatim
    "A device-farm run, start to finish": "tests/live/test_device_farm.py",
    "Transparent mode on a gateway": "tests/live/test_modes.py",
    "WireGuard on a Linux device": "tests/live/test_modes.py",
    "With stock mitmproxy": "tests/live/test_operator.py",
    "Kubernetes": "tests/unit/test_kubernetes.py",
    "MASVS-NETWORK: OWASP MASTG tests per device": "tests/live/test_mastg_live.py",
    "Limits and timeouts": "tests/live/test_upstream_clocks.py",
    "A catalogue per device": "tests/unit/test_device_probes.py",
}
ACTIVATE = "source .venv/bin/activate"


def test_each_listed_example_is_run_by_the_module_that_names_its_section() -> None:
    for heading, module in RUN_BY.items():
        body = section(heading, page="docs")
        assert re.search(r"```(sh|console|yaml)\n", body), f"{heading!r} shows no command or policy to run"
        source = (REPO / module).read_text()
        assert f'"{heading}"' in source or f"'{heading}'" in source, f"{module} does not read the section {heading!r}"


def test_get_started_shows_the_activation_once_and_before_any_other_command_needs_it() -> None:
    page = section("Two commands", page="docs")
    blocks = re.findall(r"```sh\n(.*?)```", page, re.S)
    assert [b.strip() for b in blocks[:3]] == ["make run", "make test", ACTIVATE]
    shown = [
        path for path in doc_files() for block in re.findall(r"```sh\n(.*?)```", path.read_text(), re.S) if ACTIVATE in block
    ]
    assert shown == [REPO / "docs" / "get-started" / "index.md"], "the docs show the activation step once"


def test_after_the_documented_set_up_the_commands_run_as_spelled(tmp_path: Path) -> None:
    """Through bash with the system's PATH (no virtualenv on it), as a new shell is: the docs' activation step,
    then `tlsgate`, `python -m tlsgate...` and `python deploy/kubernetes/generate.py` by those names."""
    activate = Path(sys.prefix) / "bin" / "activate"
    assert activate.exists(), "the suite runs from the virtualenv `make test` builds"
    script = (
        f"source {activate} && tlsgate --help >/dev/null && tlsgate validate policies/ "
        "&& python -m tlsgate.policy.schema >/dev/null && python deploy/kubernetes/generate.py --check"
    )
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    bare = subprocess.run(["bash", "-c", "command -v tlsgate"], env=env, capture_output=True, timeout=30)
    assert bare.returncode != 0 or ".venv" not in os.fsdecode(bare.stdout), "the control: no tlsgate before activating"


def python_commands(text: str) -> list[tuple[str, str, str]]:
    """(interpreter, "-m" or "", target) for every `python ...` command in the docs' code."""
    return re.findall(r"(?<![\w/.-])((?:\.venv/bin/)?python3?(?:\.\d+)?) (-m )?([A-Za-z_][\w./-]*)", text)


def test_every_python_command_names_the_virtualenvs_interpreter_and_something_that_exists() -> None:
    commands = python_commands(docs_text())
    assert len(commands) >= 8
    for interpreter, module, target in commands:
        assert interpreter in ("python", ".venv/bin/python"), f"{interpreter} {module}{target}: the docs name `python` "
        "(with the virtualenv active) or `.venv/bin/python`; the system's has none of tlsgate's dependencies"
        if module:
            assert importlib.util.find_spec(target) is not None, f"python -m {target}: no such module"
        else:
            assert (REPO / target).is_file(), f"python {target}: no such file"


def test_get_started_names_every_program_make_test_checks_and_its_apt_line() -> None:
    """The prerequisites paragraph is what `make prereqs` checks: a program added there and not here leaves a new
    user at an error the page never mentioned."""
    makefile = (REPO / "Makefile").read_text()
    tools = re.search(r"^TOOLS\s*:=\s*(.+)$", makefile, re.M)
    apt = re.search(r"^APT\s*:=\s*(.+)$", makefile, re.M)
    assert tools and apt
    text = section("Two commands", page="docs/")
    named = set(tools.group(1).split())
    missing = [tool for tool in sorted(named) if not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", text)]
    assert not missing, f"Get started does not name {missing}, which `make test` requires"
    assert f"sudo apt-get install {apt.group(1).strip()}`" in text
