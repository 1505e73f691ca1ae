"""deploy/kubernetes/ run as a kubelet would, without a cluster: the pod's volumes are built in the
kubelet's own layout (Secret and ConfigMap files behind a `..data` symlink that is swapped atomically on
update; emptyDirs), the init container's and the tlsgate container's commands are read from
deployment.yaml and run natively, and tlsgate runs in a private mount namespace where its "image" is
read-only, the volumes are mounted at the manifest's paths and it holds no capabilities."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.certgen import Chain
from tests.harness import REPO, Tlsgate, Upstream, curl, eventually
from tests.unit.test_kubernetes import kubelet_write, readme_command

DEPLOY = REPO / "deploy" / "kubernetes"
CA_KEY = "mitmproxy-ca.pem"


@cache
def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


def pod_spec() -> dict[str, Any]:
    return manifest("deployment.yaml")["spec"]["template"]["spec"]


def container(name: str) -> dict[str, Any]:
    spec = pod_spec()
    [found] = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    return found


def volume(name: str) -> dict[str, Any]:
    [found] = [v for v in pod_spec()["volumes"] if v["name"] == name]
    return found


# -- the kubelet's side ---------------------------------------------------------------------------------


def configmap_files(text_by_key: dict[str, str]) -> dict[str, bytes]:
    return {key: text.encode() for key, text in text_by_key.items()}


class Pod:
    """The Deployment's pod on this machine: one directory per volume, and a read-only 'image' root."""

    def __init__(self, base: Path, ca_key: bytes) -> None:
        self.base = base
        self.root = base / "root"  # the container's filesystem: WORKDIR /app and the mount points
        self.volumes: dict[str, Path] = {}
        for spec in pod_spec()["volumes"]:
            path = base / "volumes" / spec["name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if "secret" in spec:
                assert spec["secret"]["secretName"] == "tlsgate-ca"
                files = {item["path"]: ca_key for item in spec["secret"]["items"] if item["key"] == CA_KEY}
                group = pod_spec()["securityContext"]["fsGroup"]
                kubelet_write(path, files, spec["secret"]["defaultMode"], group)
            elif "configMap" in spec:
                assert spec["configMap"]["name"] == manifest("policies-configmap.yaml")["metadata"]["name"]
                kubelet_write(path, configmap_files(manifest("policies-configmap.yaml")["data"]), 0o644)
            else:
                assert "emptyDir" in spec, spec
                path.mkdir()
                os.chmod(path, 0o777)  # as the kubelet makes an emptyDir
            self.volumes[spec["name"]] = path
        (self.root / "app").mkdir(parents=True)  # the image's WORKDIR

    def host_path(self, name: str, container_path: str) -> Path:
        """Where `container_path` of container `name` is on this machine (through its volume mounts)."""
        for mount in sorted(container(name)["volumeMounts"], key=lambda m: -len(m["mountPath"])):
            prefix = mount["mountPath"].rstrip("/")
            if container_path == prefix or container_path.startswith(prefix + "/"):
                return self.volumes[mount["name"]] / container_path[len(prefix) :].lstrip("/")
        return self.root / container_path.lstrip("/")

    def mapped(self, name: str, value: str) -> str:
        return str(self.host_path(name, value)) if value.startswith("/") else value

    def run_init(self, name: str) -> subprocess.CompletedProcess[str]:
        command = [self.mapped(name, arg) for arg in container(name)["command"]]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    def tlsgate_command(self, extra: list[str]) -> tuple[list[str], dict[str, str]]:
        """The tlsgate container's command line and environment, wrapped as the container runtime would:
        a private mount namespace, the image root read-only, volumes mounted over it, no capabilities."""
        if os.geteuid() != 0:
            pytest.fail("the pod's mounts need root: a private mount namespace (unshare --mount), as the netns tests do")
        spec = container("tlsgate")
        args = list(spec["args"])
        for option, value in (("--listen-host", "127.0.0.1"), ("--metrics-host", "127.0.0.1")):
            args[args.index(option) + 1] = value  # loopback only in tests
        for option in ("--listen-port", "--metrics-port"):
            args[args.index(option) + 1] = "0"  # free ports, read from the log
        env = {item["name"]: item["value"] for item in spec.get("env", [])}
        mounts = [f"mount --bind -o ro {shlex.quote(str(self.root))} {shlex.quote(str(self.root))}"]
        for mount in spec["volumeMounts"]:
            target = self.root / mount["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            ro = "-o ro " if mount.get("readOnly") else ""
            mounts.append(f"mount --bind {ro}{shlex.quote(str(self.volumes[mount['name']]))} {shlex.quote(str(target))}")
            env.update({"TMPDIR": str(target)} if mount["mountPath"] == "/tmp" else {})
        env = {key: str(self.root / value.lstrip("/")) if value.startswith("/") else value for key, value in env.items()}
        # the image's ENTRYPOINT is `tlsgate`; here it is this checkout's, with no capabilities at all
        tlsgate = ["setpriv", "--no-new-privs", "--bounding-set", "-all", "--inh-caps", "-all", sys.executable, "-m", "tlsgate"]
        script = " && ".join(mounts) + ' && cd "$0" && exec "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(self.root / "app")]
        return [*command, *tlsgate, *args, *extra], env

    def update_policies(self, text_by_key: dict[str, str]) -> None:
        """`kubectl apply` of a changed ConfigMap, as the kubelet then writes it into the volume."""
        [name] = [spec["name"] for spec in pod_spec()["volumes"] if "configMap" in spec]
        kubelet_write(self.volumes[name], configmap_files(text_by_key), 0o644)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """The CA made by the README's own `tlsgate ca create` line; the file its `kubectl create secret` line reads."""
    create = readme_command("tlsgate", "ca", "create")
    done = subprocess.run(
        [sys.executable, "-m", "tlsgate", *create[1:]], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    secret = readme_command("kubectl", "-n", manifest("namespace.yaml")["metadata"]["name"], "create", "secret", "generic")
    [from_file] = [arg.split("=", 1)[1] for arg in secret if arg.startswith("--from-file=")]
    key, _, path = from_file.partition("=")
    assert key == CA_KEY and (tmp_path / path).is_file()
    return (tmp_path / path).parent


@pytest.fixture
def ca_secret(ca_dir: Path) -> bytes:
    return (ca_dir / CA_KEY).read_bytes()


@pytest.fixture
def pod(tmp_path: Path, ca_secret: bytes) -> Iterator[Pod]:
    yield Pod(tmp_path / "pod", ca_secret)


def start(pod: Pod, extra: list[str]) -> Tlsgate:
    command, env = pod.tlsgate_command(extra)
    return Tlsgate(pod.root / "app", command=command, env=env).start()


def stdout_findings(gate: Tlsgate) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gate.lines if line.startswith('{"check":')]


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# -- the tests ------------------------------------------------------------------------------------------


def test_secret_mount_is_what_tlsgate_refuses_and_the_init_container_fixes(pod: Pod, ca_secret: bytes) -> None:
    """The kubelet leaves the key group-readable (fsGroup); tlsgate will not use such a key, the init
    container's copy is owner-only and is the same key."""
    secret = pod.host_path("ca-key", "/etc/tlsgate/ca/" + CA_KEY)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o440 and secret.is_symlink()
    refused = subprocess.run(
        [sys.executable, "-m", "tlsgate", "ca", "show", "--confdir", str(secret.parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "accessible by other users" in refused.stderr, refused.stderr

    done = pod.run_init("ca-key")
    assert done.returncode == 0, done.stderr
    copied = pod.host_path(
        "tlsgate", {item["name"]: item["value"] for item in container("tlsgate")["env"]}["TLSGATE_CONFDIR"] + "/" + CA_KEY
    )
    assert copied.read_bytes() == ca_secret
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600 and not copied.is_symlink()


def test_pod_serves_probes_signs_with_the_secret_ca_and_writes_findings_to_stdout(
    pod: Pod, ca_dir: Path, https_upstream: Upstream, http_upstream: Upstream, pki: tuple[Chain, Path, Path, Path]
) -> None:
    _, root_file, _, _ = pki
    assert pod.run_init("ca-key").returncode == 0
    extra = ["--upstream-ca", str(root_file), "--resolve", f"api.test:{https_upstream.port}:127.0.0.1"]
    extra += ["--resolve", f"www.test:{http_upstream.port}:127.0.0.1"]
    gate = start(pod, extra)
    try:
        # the probes the Deployment declares answer on the metrics port
        probes = container("tlsgate")
        for kind, want in (("startupProbe", "ok"), ("livenessProbe", "ok"), ("readinessProbe", "ready")):
            status, body = http_status(gate.metrics_url + probes[kind]["httpGet"]["path"])
            assert status == 200 and body.startswith(want), (kind, status, body)

        # devices trust the Secret's CA: an HTTPS request through the pod verifies against it
        ok = curl(gate.proxy_url, f"https://api.test:{https_upstream.port}/", "--cacert", str(ca_dir / "mitmproxy-ca-cert.pem"))
        assert ok.status == 200 and "https-upstream" in ok.body, ok.stderr

        # the default policy blocks cleartext; the finding is one JSON line on stdout, no findings file
        blocked = curl(gate.proxy_url, f"http://www.test:{http_upstream.port}/")
        assert blocked.status == 403 and http_upstream.connections == 0
        assert eventually(lambda: any(f["check"] == "cleartext" for f in stdout_findings(gate)))
        [finding] = [f for f in stdout_findings(gate) if f["check"] == "cleartext"]
        assert finding["action"] == "blocked" and finding["host"] == "www.test"
        assert finding["rule"].startswith("policies/default.yaml:"), finding["rule"]
        written = [p for p in pod.base.rglob("*") if p.is_file() and "finding" in p.name]
        assert written == [], "findings go to stdout only"
    finally:
        gate.stop()
    assert "Read-only file system" not in gate.output and "Permission denied" not in gate.output, gate.output
    # the CA directory is the init container's, not the kubelet's 0777 emptyDir: nothing to warn about
    assert "could replace the keys" not in gate.output, gate.output


def test_configmap_update_is_hot_reloaded(pod: Pod, http_upstream: Upstream) -> None:
    """`kubectl apply` of a changed ConfigMap: the kubelet swaps `..data`; the next request gets the new verdict,
    without a restart, and a later update that removes the key takes it back."""
    assert pod.run_init("ca-key").returncode == 0
    gate = start(pod, ["--resolve", f"www.test:{http_upstream.port}:127.0.0.1"])
    url = f"http://www.test:{http_upstream.port}/"
    try:
        assert curl(gate.proxy_url, url).status == 403
        shipped = dict(manifest("policies-configmap.yaml")["data"])
        lab = "version: 1\nrules:\n  - name: lab backend\n    hosts: www.test\n    cleartext: allow\n"
        mark = len(gate.lines)
        pod.update_policies({**shipped, "lab.yaml": lab})
        gate.wait_for("policy reloaded: 1 rules", start=mark)
        assert eventually(lambda: curl(gate.proxy_url, url).status == 200)
        assert http_upstream.connections >= 1 and http_upstream.requests

        # the same key, new content: only the file behind `..data` changes, the symlink `lab.yaml` does not
        mark = len(gate.lines)
        seen = http_upstream.connections
        pod.update_policies({**shipped, "lab.yaml": lab.replace("cleartext: allow", "cleartext: block")})
        gate.wait_for("policy reloaded: 1 rules", start=mark)
        assert eventually(lambda: curl(gate.proxy_url, url).status == 403)
        assert http_upstream.connections == seen, "blocked again: not one connection reached the upstream"

        mark = len(gate.lines)
        pod.update_policies(shipped)  # the key removed
        gate.wait_for("policy reloaded: 0 rules", start=mark)
        assert curl(gate.proxy_url, url).status == 403 and http_upstream.connections == seen
        # every reload loaded the per-key files once: never the `..data` or `..<timestamp>` copies
        reloads = [line for line in gate.lines if "policy reloaded" in line]
        assert reloads and all("..data" not in line and "/..2" not in line for line in reloads), reloads
        assert "lab.yaml" in reloads[0] and reloads[0].count("default.yaml") == 1, reloads[0]
    finally:
        gate.stop()
