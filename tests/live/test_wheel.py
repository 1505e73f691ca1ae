"""`pip install .` gives a tlsgate that starts anywhere: the default policy travels inside the wheel.

Built and installed for real: the wheel into a bare venv (no site packages, dependencies from the
lock file) next to PyPI's proxy.py (which installs a top-level `proxy`, the name tlsgate's package
had until issue 22), then `tlsgate run` with no options from an empty directory, and a plain-HTTP
request through it blocked by the embedded policy; and stock mitmdump with the add-ons of the
installed wheel, by the README's command.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.harness import REPO, Tlsgate, Upstream, curl


def run(
    *cmd: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def wheel_top_level(names: list[str]) -> set[str]:
    """What a wheel puts directly into site-packages: its packages and modules, and its .dist-info."""
    return {name.split("/", 1)[0] for name in names}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, installed into a bare venv next to proxy.py: tlsgate as a user's `pip install` has it."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    dist = tmp_path / "dist"
    # setuptools builds in the checkout's build/: under xdist each worker builds this wheel, and two builds at once
    # collide there ("File exists: build/bdist.linux-x86_64/wheel/tlsgate-0.1.0.dist-info"). One at a time.
    with (tmp_path_factory.getbasetemp().parent / "tlsgate-wheel-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO))
    (wheel,) = dist.glob("tlsgate-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    assert "tlsgate/policy/default.yaml" in names and "tlsgate/tls/cipher_catalogue.csv" in names
    assert "tlsgate/app/mitmproxy_script/tlsgate_addons.py" in names
    # Nothing but the tlsgate package: no top-level `proxy` (PyPI's proxy.py has that name), no stray module.
    (record,) = [name for name in names if name.endswith(".dist-info/RECORD")]
    recorded = [line.split(",", 1)[0] for line in archive.read(record).decode().splitlines() if line]
    assert wheel_top_level(recorded) == wheel_top_level(names) == {"tlsgate", record.split("/")[0]}, wheel_top_level(recorded)
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert archive.read(entry_points).decode().split() == ["[console_scripts]", "tlsgate", "=", "tlsgate.app.cli:main"]

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    run(*pip, "--require-hashes", "-r", str(REPO / "requirements.lock"))
    run(*pip, "--require-hashes", "-r", str(REPO / "tests" / "data" / "beside-proxy-py.txt"))
    run(*pip, str(wheel))
    return venv


def test_the_wheel_installs_beside_proxy_py_and_both_import(venv: Path, tmp_path: Path) -> None:
    """One environment, both packages: neither overwrote a file of the other, and each imports as itself."""
    probe = """
import importlib.metadata as md, json, sys
import proxy, tlsgate
files = {name: {str(f) for f in md.distribution(name).files if ".dist-info" not in str(f)} for name in ("tlsgate", "proxy.py")}
print(json.dumps({
    "tlsgate": tlsgate.__file__, "proxy": proxy.__file__, "entry_point": callable(getattr(proxy, "entry_point", None)),
    "overlap": sorted(files["tlsgate"] & files["proxy.py"]),
    "proxy_files": sorted(f for f in files["proxy.py"] if f.startswith("proxy/"))[:1],
    "tlsgate_top": sorted({f.split("/")[0] for f in files["tlsgate"] if not f.startswith("../")}),
}))
"""
    empty = tmp_path / "empty"
    empty.mkdir()
    found = json.loads(run(str(venv / "bin" / "python"), "-c", probe, cwd=empty).stdout)
    site = str(venv / "lib")
    assert found["tlsgate"].startswith(site) and found["tlsgate"].endswith("/tlsgate/__init__.py"), found
    assert found["proxy"].startswith(site) and found["proxy"].endswith("/proxy/__init__.py") and found["entry_point"], found
    assert found["overlap"] == [] and found["proxy_files"] and found["tlsgate_top"] == ["tlsgate"], found
    assert run(str(venv / "bin" / "tlsgate"), "--version", cwd=empty).stdout.startswith("tlsgate:   ")
    run(str(venv / "bin" / "python"), "-m", "pip", "check", cwd=empty)


def test_the_installed_metadata_names_the_licence_by_spdx_and_where_to_go(venv: Path, tmp_path: Path) -> None:
    """What PyPI and `pip show` display: an SPDX licence (PEP 639, not the deprecated table), the licence file
    itself, and the project's links, the security one first among them for whoever found a flaw."""
    probe = """
import importlib.metadata as md, json
meta = md.metadata("tlsgate")
dist = md.distribution("tlsgate")
print(json.dumps({
    "version": meta["Metadata-Version"], "expression": meta["License-Expression"], "license": meta["License"],
    "files": meta.get_all("License-File"), "urls": meta.get_all("Project-URL"), "classifiers": meta.get_all("Classifier"),
    "keywords": meta["Keywords"], "shipped": [str(f) for f in dist.files if "licenses" in str(f)],
    "readme": meta["Description-Content-Type"], "described": "# tlsgate" in (meta.get_payload() or ""),
}))
"""
    empty = tmp_path / "empty"
    empty.mkdir()
    meta = json.loads(run(str(venv / "bin" / "python"), "-c", probe, cwd=empty).stdout)
    assert meta["expression"] == "MIT" and meta["license"] is None, meta  # the SPDX field, not the old free text
    assert meta["version"] >= "2.4" and meta["files"] == ["LICENSE"] and meta["shipped"], meta
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    urls = dict(entry.split(", ", 1) for entry in meta["urls"])
    assert set(urls) >= {"Homepage", "Repository", "Issues", "Changelog", "Security", "Documentation"}, urls
    assert urls["Security"] == urls["Repository"] + "/security/advisories/new"
    assert urls["Changelog"].endswith("/CHANGELOG.md") and (REPO / "CHANGELOG.md").is_file()
    assert not [c for c in meta["classifiers"] if c.startswith("License ::")], "PEP 639: the SPDX string replaces them"
    assert "Topic :: Security" in meta["classifiers"] and "Programming Language :: Python :: 3.12" in meta["classifiers"]
    assert "mitmproxy" in meta["keywords"].split(",")
    assert meta["readme"] == "text/markdown" and meta["described"]


def test_wheel_installs_into_a_bare_venv_and_blocks_with_the_embedded_policy(
    venv: Path, tmp_path: Path, http_upstream: Upstream
) -> None:
    tlsgate = venv / "bin" / "tlsgate"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "site-packages" in run(str(venv / "bin" / "python"), "-c", "import tlsgate; print(tlsgate.__file__)", cwd=empty).stdout
    resolve = f"api.test:{http_upstream.port}:127.0.0.1"
    home = tmp_path / "home"
    env = {"HOME": str(home), "XDG_DATA_HOME": "", "TLSGATE_CONFDIR": ""}
    command = [str(tlsgate), "run", "--listen-port", "0", "--metrics-port", "-1", "--resolve", resolve]
    gate = Tlsgate(empty, env=env, command=command).start()
    try:
        assert "policy:   policies/default.yaml" in gate.output  # the name it has in a checkout and in findings
        blocked = curl(gate.proxy_url, f"http://api.test:{http_upstream.port}/login")
        assert blocked.status == 403, blocked
        assert blocked.headers["x-tlsgate-check"] == "cleartext"
        assert blocked.headers["x-tlsgate-rule"] == "policies/default.yaml:5", blocked.headers
        assert http_upstream.connections == 0
        # An installed tlsgate keeps one CA per user, wherever it is started: nothing lands in the working directory.
        ca_dir = home / ".local" / "share" / "tlsgate"
        assert (ca_dir / "mitmproxy-ca.pem").stat().st_mode & 0o077 == 0
        assert {p.name for p in empty.iterdir()} <= {"findings.jsonl"}, list(empty.iterdir())
    finally:
        gate.stop()
    first = (ca_dir / "mitmproxy-ca-cert.pem").read_bytes()

    # Started again from another directory: the same CA, and no new one is created.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = Tlsgate(elsewhere, env=env, command=command).start()
    try:
        assert "created a new CA" not in again.output and str(ca_dir) in again.output
    finally:
        again.stop()
    assert (ca_dir / "mitmproxy-ca-cert.pem").read_bytes() == first

    # A CA somewhere else (an old ./certs) while a new one is created: said loudly, naming both.
    old = tmp_path / "old"
    old.mkdir()
    run(str(tlsgate), "ca", "create", "--confdir", str(old / "certs"), cwd=old)
    fresh_env = {**env, "HOME": str(tmp_path / "home2")}
    loud = Tlsgate(old, env=fresh_env, command=command).start()
    try:
        loud.wait_for(r"WARNING: created a NEW CA in .*home2.*a tlsgate CA already exists in .*old/certs/")
    finally:
        loud.stop()


def test_a_checkout_run_and_an_installed_run_name_the_default_rule_alike_and_diff_to_nothing(
    venv: Path, tmp_path: Path, http_upstream: Upstream
) -> None:
    """`make run` (the checkout's policies/, whose default.yaml links to the packaged copy) and an installed
    tlsgate (no --policy: the packaged copy) block the same request by the same rule, under one name, so
    `tlsgate diff` between a laptop's run and CI's finds nothing new and nothing fixed."""
    resolve = f"api.test:{http_upstream.port}:127.0.0.1"
    common = ["run", "--listen-port", "0", "--metrics-port", "-1", "--resolve", resolve]
    runs = {
        # As `make run` does it, from the checkout: `tlsgate run --policy policies/`.
        "checkout": (REPO, [sys.executable, "-m", "tlsgate", *common, "--policy", "policies/"]),
        "installed": (tmp_path / "installed", [str(venv / "bin" / "tlsgate"), *common]),
    }
    rules = {}
    for name, (cwd, command) in runs.items():
        cwd.mkdir(exist_ok=True)
        findings = tmp_path / f"{name}.jsonl"
        env = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": "", "TLSGATE_CONFDIR": str(tmp_path / f"certs-{name}")}
        gate = Tlsgate(cwd, env=env, command=[*command, "--findings", str(findings)]).start()
        try:
            for path in ("/login", "/feed"):
                blocked = curl(gate.proxy_url, f"http://api.test:{http_upstream.port}{path}")
                assert blocked.status == 403, blocked
        finally:
            gate.stop()
        lines = [json.loads(line) for line in findings.read_text().splitlines()]
        assert len(lines) == 2, lines
        rules[name] = {line["rule"] for line in lines}
    assert http_upstream.connections == 0
    assert rules["checkout"] == rules["installed"] == {"policies/default.yaml:5"}, rules

    tlsgate = venv / "bin" / "tlsgate"
    done = subprocess.run(
        [str(tlsgate), "diff", str(tmp_path / "checkout.jsonl"), str(tmp_path / "installed.jsonl"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (len(result["added"]), len(result["fixed"]), len(result["unchanged"])) == (0, 0, 1), result


def test_stock_mitmdump_loads_the_installed_add_ons_by_the_readmes_command(
    venv: Path, tmp_path: Path, http_upstream: Upstream, https_upstream: Upstream, pki
) -> None:
    """The README's installed command, as written, through bash with the venv's bin first on PATH (an activated
    venv), from an empty directory: no checkout anywhere. Appended only what a test cannot share: a free port,
    the local names, and trust in the test's upstream root."""
    from tests.live.test_operator import stock_commands

    line = stock_commands()[0]
    assert line.startswith('mitmdump -s "$(tlsgate script-path)" ') and ".venv" not in line, line
    _, root_file, _, _ = pki
    empty, home = tmp_path / "empty", tmp_path / "home"
    empty.mkdir()
    path = os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    env = {
        "HOME": str(home),
        "PATH": path,
        "PYTHONPATH": "",
        "VIRTUAL_ENV": str(venv),
        "XDG_DATA_HOME": "",
        "TLSGATE_CONFDIR": "",
    }
    printed = run("bash", "-c", "tlsgate script-path", cwd=empty, env={**os.environ, **env}).stdout.strip()
    assert printed.startswith(str(venv / "lib")) and printed.endswith(
        "/site-packages/tlsgate/app/mitmproxy_script/tlsgate_addons.py"
    )
    overrides = ["--listen-port", "0", "--set", f"ssl_verify_upstream_trusted_ca={root_file}"]
    for name, upstream in (("www.test", http_upstream), ("api.test", https_upstream)):
        overrides += ["--set", f"tlsgate_resolve={name}:{upstream.port}:127.0.0.1"]
    gate = Tlsgate(empty, env=env, command=["bash", "-c", f'exec {line} "$@"', "bash", *overrides])
    gate.start()
    try:
        gate.wait_for(f"Loading script {printed}")
        ca = home / ".local" / "share" / "tlsgate" / "mitmproxy-ca-cert.pem"  # the installed `tlsgate run`'s CA
        ok = curl(gate.proxy_url, f"https://api.test:{https_upstream.port}/", "--cacert", str(ca))
        assert ok.status == 200 and ok.body == "hello from https-upstream\n", ok
        blocked = curl(gate.proxy_url, f"http://www.test:{http_upstream.port}/login")
        assert blocked.status == 403 and blocked.headers["x-tlsgate-check"] == "cleartext", blocked
        assert blocked.headers["x-tlsgate-rule"] == "policies/default.yaml:5", blocked.headers  # the embedded policy
        assert http_upstream.connections == 0
        gate.wait_findings(1)
        cleartext = [f for f in gate.findings() if f["check"] == "cleartext"]
        assert [(f["action"], f["rule"]) for f in cleartext] == [("blocked", "policies/default.yaml:5")], gate.findings()
    finally:
        gate.stop()
    assert (ca.parent / "mitmproxy-ca.pem").stat().st_mode & 0o077 == 0
    assert not (home / ".mitmproxy").exists(), "mitmdump must not make a second CA in ~/.mitmproxy"
    assert {p.name for p in empty.iterdir()} == {"findings.jsonl"}, list(empty.iterdir())
