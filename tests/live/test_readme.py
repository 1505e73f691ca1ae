"""The README's two commands, from a clean clone, as a new user runs them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.docs import docs_text
from tests.docs import section as docs_section
from tests.harness import REPO, Tlsgate, Upstream, curl


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_run_and_test_and_ci_runs_the_test_command() -> None:
    assert readme_commands() == ["make run", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), "CI must run exactly the README's test command"


@pytest.mark.slow
def test_make_run_from_a_clean_clone_serves_https_and_blocks_http(
    tmp_path: Path, pki, https_upstream: Upstream, http_upstream: Upstream
) -> None:
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("no commit to clone yet")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    _, root_file, _, _ = pki
    args = (
        f"--listen-port 0 --upstream-ca {root_file} --findings {tmp_path / 'f.jsonl'} "
        f"--resolve api.test:{https_upstream.port}:127.0.0.1 --resolve www.test:{http_upstream.port}:127.0.0.1"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    gate = Tlsgate(clone)
    gate.findings_path = tmp_path / "f.jsonl"
    gate.proc = subprocess.Popen(
        ["make", "run", f"ARGS={args}"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # make does not pass SIGTERM on to tlsgate: stop the whole group
    )
    import threading

    threading.Thread(target=gate._pump, daemon=True).start()
    try:
        gate.port = int(gate.wait_for(r"listening at 127\.0\.0\.1:(\d+)", timeout=600).group(1))
        ok = curl(
            gate.proxy_url, f"https://api.test:{https_upstream.port}/", "--cacert", str(clone / "certs" / "mitmproxy-ca-cert.pem")
        )
        assert ok.status == 200 and ok.body == "hello from https-upstream\n"
        blocked = curl(gate.proxy_url, f"http://www.test:{http_upstream.port}/")
        assert blocked.status == 403
        assert blocked.headers["x-tlsgate-rule"] == "policies/default.yaml:5"  # `make run` loads policies/, as the container
        assert http_upstream.connections == 0
        assert (clone / ".venv" / "bin" / "tlsgate").exists()
    finally:
        os.killpg(gate.proc.pid, signal.SIGTERM)
        gate.proc.wait(20)
        shutil.rmtree(clone / ".venv", ignore_errors=True)


def test_make_test_names_every_missing_program_in_one_message(tmp_path: Path) -> None:
    """Checked before anything is installed: a new user learns the whole list at once, not one failing test at a time."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "curl", "openssl"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    done = subprocess.run(
        ["make", "-s", "prereqs"], cwd=REPO, env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    first = done.stderr.splitlines()[0]
    assert first.startswith("make test needs these programs:"), done.stderr
    assert {"nginx", "hey", "promtool", "wireguard-go"} <= set(first.split(":", 1)[1].split()) and "curl" not in first
    assert "apt-get install" in done.stderr
    assert subprocess.run(["make", "-s", "prereqs"], cwd=REPO, capture_output=True, timeout=60).returncode == 0  # all here


def test_the_ios_steps_name_the_ca_as_the_device_shows_it() -> None:
    from cryptography.x509.oid import NameOID

    from tlsgate.tls.ca import _generate_ca  # noqa: PLC2701 - the real name the CA is given

    (common_name,) = _generate_ca()[1].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert str(common_name.value).startswith("tlsgate CA ")
    iphone = docs_section("iPhone")
    assert '"tlsgate CA …"' in iphone and "mitmproxy CA" not in iphone


def test_the_start_banner_example_is_what_a_default_run_prints() -> None:
    """The banner Get started shows (its section "Two commands") line for line, from `findings:` on; labels before."""
    from tlsgate.app.runner import RunConfig, banner
    from tlsgate.policy import load_policy

    text = docs_section("Two commands", page="docs")
    example = re.search(r"On start tlsgate prints.*?```text\n(.*?)```", text, re.S)
    assert example, "README lost the banner example"
    shown = example.group(1).splitlines()
    config = RunConfig(["policies/"], load_policy([str(REPO / "policies")]), confdir=Path("/home/you/tlsgate/certs"))
    printed = banner(config, config.confdir / "mitmproxy-ca-cert.pem", "84:F1:…")
    assert shown[0].startswith("tlsgate ") and " on mitmproxy " in shown[0]  # versions change; the rest must not
    assert [line.split(":")[0] for line in shown[1:]] == [line.split(":")[0] for line in printed[1:]]
    start = next(i for i, line in enumerate(printed) if line.startswith("findings:"))
    assert shown[start:] == printed[start:]


def test_the_timeouts_example_is_a_valid_policy_that_sets_what_the_text_says() -> None:
    """README's "Limits and timeouts" policy block loads as written (tests/live/test_upstream_clocks.py also runs
    it through tlsgate), and the finding text the README quotes names the block's own line."""
    from tests.live.test_upstream_clocks import readme_timeouts_policy
    from tlsgate.policy import load_texts

    policy = load_texts([("policies/app.yaml", readme_timeouts_policy())])
    pay = policy.match("pay.example.com").settings.get("timeouts")
    push = policy.match("push.example.com").settings.get("timeouts")
    assert (pay.response_head.seconds, push.response_head.seconds) == (8.0, 300.0)
    assert pay.connect is None and policy.match("shop.example.com").settings.get("timeouts") is None
    quoted = f"within 8 s (timeouts.response_head at {pay.response_head.location.rule_ref})"
    assert quoted in docs_text()
