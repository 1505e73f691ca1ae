"""deploy/kubernetes/, checked without a cluster: every manifest against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields are errors, as `kubectl apply` rejects them) and the Prometheus
Operator's CRD schemas (vendored in tests/data/k8s/); then against each other, the Dockerfile, the
monitoring files and BENCHMARKS.md, so none of them can drift. Also the two things a ConfigMap volume
needs from the policy loader: its hidden `..data` entries are skipped, and a swap is always noticed."""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.docs import section
from tests.harness import REPO
from tests.live.test_container import dockerfile_cmd, instruction, run_args
from tlsgate import __version__
from tlsgate.addons.policy import fingerprint
from tlsgate.policy import load_policy
from tlsgate.policy.loader import policy_files
from tlsgate.tls.ca import ca_paths

DEPLOY = REPO / "deploy" / "kubernetes"
CRDS = REPO / "tests" / "data" / "k8s"
# The oldest Kubernetes minor still supported upstream when these were written, and the newest the
# validator knows. Every manifest must be valid for both.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CRD_FILES = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}


# -- the kubelet's volume layout ------------------------------------------------------------------------


def kubelet_write(mount: Path, files: dict[str, bytes], mode: int, group: int | None = None) -> None:
    """What the kubelet's AtomicWriter does for a Secret or ConfigMap volume, first write or update.

    The payload goes into a fresh `..<timestamp>.<random>` directory; `..data_tmp` -> that directory is
    renamed over `..data` (the one atomic step); every key is a symlink `key -> ..data/key`; keys no longer
    in the payload lose their symlink; the previous timestamped directory is removed.
    """
    mount.mkdir(exist_ok=True)
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    stamp = mount / f"..{datetime.now(UTC):%Y_%m_%d_%H_%M_%S}.{secrets.randbelow(10**9):09d}"
    stamp.mkdir()
    for key, data in files.items():
        (stamp / key).write_bytes(data)
        os.chmod(stamp / key, mode)
        if group is not None:
            os.chown(stamp / key, 0, group)
    (mount / "..data_tmp").symlink_to(stamp.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    for key in files:
        if not (mount / key).is_symlink():
            (mount / key).symlink_to(f"..data/{key}")
    for entry in mount.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
    if old is not None:
        shutil.rmtree(mount / old)


BLOCK = b"version: 1\nrules:\n  - hosts: api.test\n    cleartext: block\n"
ALLOW = b"version: 1\nrules:\n  - hosts: api.test\n    cleartext: allow\n"


def test_policy_files_of_a_configmap_volume_are_its_keys_once(tmp_path: Path) -> None:
    mount = tmp_path / "policies"
    kubelet_write(mount, {"app.yaml": BLOCK, "lab.yml": ALLOW.replace(b"api", b"lab")}, 0o644)
    (mount / ".app.yaml.swp.yaml").write_bytes(b"not: [a policy")  # an editor's leftover beside them
    files, problems = policy_files([mount])
    assert problems == []
    assert files == [mount / "app.yaml", mount / "lab.yml"]
    assert sorted(entry.name for entry in mount.iterdir() if entry.name.startswith("..")) != []  # the layout is real
    policy = load_policy([mount])
    assert policy.rule_count == 2


def test_a_configmap_swap_is_noticed_even_when_size_and_mtime_are_the_same(tmp_path: Path) -> None:
    """`block` -> `allow` keeps the file's size; a tool that keeps mtimes (tar, rsync -a, a reproducible
    build) keeps that too. Only the file behind `..data` changed: the fingerprint must still change."""
    assert len(BLOCK) == len(ALLOW)
    mount = tmp_path / "policies"
    kubelet_write(mount, {"app.yaml": BLOCK}, 0o644)
    os.utime(mount / "app.yaml", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    before = fingerprint([str(mount)])
    kubelet_write(mount, {"app.yaml": ALLOW}, 0o644)
    os.utime(mount / "app.yaml", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    assert (mount / "app.yaml").is_symlink() and os.readlink(mount / "app.yaml") == "..data/app.yaml"
    assert fingerprint([str(mount)]) != before
    assert fingerprint([str(mount)]) == fingerprint([str(mount)]), "and it is stable while nothing changes"


# -- loading the manifests ------------------------------------------------------------------------------


@cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


@cache
def documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, object) for every object `kubectl apply -k deploy/kubernetes/` applies."""
    out = []
    for name in kustomization()["resources"]:
        for document in yaml.safe_load_all((DEPLOY / name).read_text()):
            if document:
                out.append((name, document))
    return tuple(out)


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [doc for _, doc in documents() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    return found


def pod_spec() -> dict[str, Any]:
    return one("Deployment")["spec"]["template"]["spec"]


def container(name: str) -> dict[str, Any]:
    [found] = [c for c in pod_spec().get("initContainers", []) + pod_spec()["containers"] if c["name"] == name]
    return found


def tlsgate() -> dict[str, Any]:
    return container("tlsgate")


def init_container() -> dict[str, Any]:
    [init] = pod_spec()["initContainers"]
    return init


def volume(name: str) -> dict[str, Any]:
    [found] = [v for v in pod_spec()["volumes"] if v["name"] == name]
    return found


def mount_at(spec: dict[str, Any], path: str) -> dict[str, Any]:
    [found] = [m for m in spec["volumeMounts"] if m["mountPath"] == path]
    return found


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def container_port(name: str) -> int:
    [port] = [p["containerPort"] for p in tlsgate()["ports"] if p["name"] == name]
    return port


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


# -- schemas --------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_nothing_else() -> None:
    on_disk = {path.name for path in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == on_disk
    assert len(kustomization()["resources"]) == len(on_disk)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_openapi_schemas(version: str) -> None:
    checked = []
    for name, document in documents():
        if document["kind"] in CRD_FILES:
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {document['kind']} at {'.'.join(map(str, exc.path))}: {exc.message} (Kubernetes {version})")
        checked.append(document["kind"])
    assert sorted(checked) == ["ConfigMap", "Deployment", "Namespace", "PodDisruptionBudget", "Service", "Service"]


def test_the_kubernetes_validator_rejects_what_kubectl_would() -> None:
    """The validation above means something: a misspelt field, a wrong type and a quoted mode all fail."""
    deployment = one("Deployment")
    for mutate in (
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolcy="Always"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="8080"),
        lambda d: d["spec"]["template"]["spec"]["volumes"][0]["secret"].update(defaultMode="0440"),
        lambda d: d["spec"].pop("selector"),
    ):
        broken = copy.deepcopy(deployment)
        mutate(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def strict(schema: Any) -> Any:
    """A CRD's structural schema as `kubectl apply` (strict field validation) reads it: fields it does not
    name are errors unless the schema keeps unknown fields. Go's RE2 takes a flag group after `^`
    (`^(?i)(abort|warn)?$`), Python's re only at the start: the same pattern, moved."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        if isinstance(out.get("pattern"), str) and out["pattern"].startswith("^(?i)"):
            out["pattern"] = "(?i)^" + out["pattern"][len("^(?i)") :]
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"] and v["storage"]]
    schema = strict(served["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_prometheus_operator_resources_validate_against_their_crds(kind: str) -> None:
    assert "v0.93.0" in (CRDS / "SOURCE.md").read_text()
    document = one(kind)
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(kind).iter_errors(document)]
    assert errors == []
    broken = copy.deepcopy(document)
    broken["spec"]["endpointz" if kind == "ServiceMonitor" else "groupz"] = []
    assert list(crd_validator(kind).iter_errors(broken)), "an unknown field must be an error"


def test_prometheus_operator_validators_reject_wrong_values() -> None:
    monitor = copy.deepcopy(one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scheme"] = "gopher"
    assert list(crd_validator("ServiceMonitor").iter_errors(monitor))
    rule = copy.deepcopy(one("PrometheusRule"))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert list(crd_validator("PrometheusRule").iter_errors(rule))


# -- one source of truth --------------------------------------------------------------------------------


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", DEPLOY / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_manifests_are_current() -> None:
    done = subprocess.run([sys.executable, str(DEPLOY / "generate.py"), "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_prometheus_rule_is_monitoring_alerts_yml() -> None:
    alerts = yaml.safe_load((REPO / "monitoring" / "alerts.yml").read_text())
    assert one("PrometheusRule")["spec"]["groups"] == alerts["groups"]
    assert set(alerts) == {"groups"}, "alerts.yml holds only rule groups: anything else would not reach the cluster"


def test_policy_configmap_is_the_policies_directory() -> None:
    files, problems = policy_files([REPO / "policies"])
    assert problems == [] and files
    data = one("ConfigMap", "tlsgate-policies")["data"]
    assert data == {path.name: path.read_text() for path in files}


def test_generator_notices_a_stale_copy_and_refuses_a_broken_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate = load_generator()
    copy_dir = tmp_path / "k8s"
    shutil.copytree(DEPLOY, copy_dir)
    alerts = yaml.safe_load((REPO / "monitoring" / "alerts.yml").read_text())
    alerts["groups"][0]["rules"][0]["for"] = "7m"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(alerts))
    generate.HERE, generate.ALERTS = copy_dir, tmp_path / "alerts.yml"
    assert generate.main(["--check"]) == 1
    assert "prometheusrule.yaml" in capsys.readouterr().err
    assert generate.main([]) == 0 and generate.main(["--check"]) == 0
    assert yaml.safe_load((copy_dir / "prometheusrule.yaml").read_text())["spec"]["groups"][0]["rules"][0]["for"] == "7m"

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "app.yaml").write_text("version: 1\nrules:\n  - hosts: api.test\n    cleartext: sometimes\n")
    generate.POLICIES = policies
    with pytest.raises(SystemExit, match=r"app.yaml:4:16"):
        generate.main([])
    assert "sometimes" not in (copy_dir / "policies-configmap.yaml").read_text(), "nothing written from a broken policy"


# -- the Deployment against the image -------------------------------------------------------------------


def dockerfile_env() -> dict[str, str]:
    pairs = re.findall(r"(\w+)=(\S+)", " ".join(instruction("ENV")))
    return dict(pairs)


def test_deployment_runs_the_images_command_with_findings_on_stdout() -> None:
    spec = tlsgate()
    assert "command" not in spec, "the image's ENTRYPOINT (tlsgate) runs"
    args, cmd = spec["args"], dockerfile_cmd()
    assert option(args, "--findings") == "-"
    assert [a for i, a in enumerate(args) if i != args.index("--findings") + 1] == [
        a for i, a in enumerate(cmd) if i != cmd.index("--findings") + 1
    ], "only --findings differs from the Dockerfile's CMD"
    parsed = run_args(args)
    assert parsed.findings == "-" and not parsed.allow_public_clients
    assert parsed.listen_host == "0.0.0.0" and parsed.metrics_host == "0.0.0.0"


def test_ca_comes_from_the_secret_through_an_owner_only_copy() -> None:
    [workdir] = instruction("WORKDIR")
    confdir = {e["name"]: e["value"] for e in tlsgate()["env"]}["TLSGATE_CONFDIR"]
    # a directory of its own inside the image's CA volume: the emptyDir is root's and 0777, a directory others
    # could replace the key in (tlsgate would say so at every start); the init container's ca/ is the pod user's
    volume_dir = dockerfile_env()["TLSGATE_CONFDIR"]
    assert Path(confdir).parent == Path(volume_dir), "the CA directory lies in the image's CA volume"
    key_name = ca_paths(Path(confdir)).key_pem.name
    ca_mount = mount_at(tlsgate(), volume_dir)
    assert volume(ca_mount["name"])["emptyDir"]["medium"] == "Memory"
    secret = volume("ca-secret")["secret"]
    assert secret["optional"] is False and secret["items"] == [{"key": key_name, "path": key_name}]
    assert secret["defaultMode"] & 0o007 == 0, "not readable by others even before the copy"
    init = init_container()
    command = init["command"]
    assert command[:4] == ["install", "-D", "-m", "0600"], command  # -D: makes ca/, 0755, the pod user's
    source, target = Path(command[4]), Path(command[5])
    assert target == Path(confdir) / key_name and mount_at(init, volume_dir)["name"] == ca_mount["name"]
    secret_mount = mount_at(init, str(source.parent))
    assert secret_mount["name"] == "ca-secret" and secret_mount["readOnly"] is True and source.name == key_name
    assert not any(m["name"] == "ca-secret" for m in tlsgate()["volumeMounts"]), "tlsgate sees only the copy"
    assert init["image"] == tlsgate()["image"]
    assert workdir == "/app"


def test_policies_come_from_the_configmap_at_the_path_the_command_reads() -> None:
    [workdir] = instruction("WORKDIR")
    policy = option(tlsgate()["args"], "--policy")
    mount = mount_at(tlsgate(), str(Path(workdir) / policy))
    assert mount["readOnly"] is True
    assert "subPath" not in mount, "a subPath mount never sees a ConfigMap update: hot reload needs the whole volume"
    assert volume(mount["name"])["configMap"]["name"] == one("ConfigMap", "tlsgate-policies")["metadata"]["name"]


def test_probes_hit_healthz_and_readyz_on_the_metrics_port() -> None:
    spec = tlsgate()
    metrics_port = int(option(spec["args"], "--metrics-port"))
    assert container_port("metrics") == metrics_port
    assert container_port("proxy") == int(option(spec["args"], "--listen-port"))
    paths = {kind: spec[kind]["httpGet"]["path"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert {spec[kind]["httpGet"]["port"] for kind in paths} == {"metrics"}


def test_pod_meets_the_restricted_pod_security_standard() -> None:
    """The namespace enforces `restricted`: a pod that breaks it would never be admitted."""
    namespace = one("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = pod_spec()
    [user] = instruction("USER")
    uid, gid = (int(part) for part in user.split(":"))
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
    assert context["fsGroup"] == gid and context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    allowed = {"configMap", "emptyDir", "secret", "projected", "downwardAPI", "persistentVolumeClaim", "ephemeral", "csi"}
    assert all((set(v) - {"name"}) <= allowed for v in pod["volumes"])
    for spec in pod["initContainers"] + pod["containers"]:
        security = spec["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
        assert security["readOnlyRootFilesystem"] is True and "add" not in security["capabilities"]
        assert not security.get("privileged") and all("hostPort" not in port for port in spec.get("ports", []))
    writable = {m["mountPath"] for m in tlsgate()["volumeMounts"] if not m.get("readOnly")}
    confdir = {e["name"]: e["value"] for e in tlsgate()["env"]}["TLSGATE_CONFDIR"]
    assert writable == {str(Path(confdir).parent), "/tmp"}, "the only places tlsgate writes: its CA volume and /tmp"


def mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


def cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def benchmark_peak_rss_mib() -> float:
    """The highest peak RSS of a single tlsgate process in BENCHMARKS.md's throughput tables."""
    peaks = []
    header: list[str] = []
    for line in (REPO / "BENCHMARKS.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if "peak RSS MiB" in cells:
            header = cells
        elif header and len(cells) == len(header) and cells[0].startswith("tlsgate") and "worker" not in cells[0]:
            peaks.append(float(cells[header.index("peak RSS MiB")]))
    assert peaks, "BENCHMARKS.md has no single-process tlsgate peak RSS: the resource sizing cites it"
    return max(peaks)


def test_resources_are_sized_from_the_benchmarks() -> None:
    peak = benchmark_peak_rss_mib()
    resources = tlsgate()["resources"]
    request, limit = mib(resources["requests"]["memory"]), mib(resources["limits"]["memory"])
    assert request >= 1.25 * peak, f"memory request {request} MiB leaves under 25% above the measured peak {peak} MiB"
    assert limit >= 2 * peak and limit >= request
    assert 0 < cores(resources["requests"]["cpu"]) <= 1, "one worker uses at most one core"
    assert "cpu" not in resources.get("limits", {}), "no CPU limit: throttling a proxy only adds latency"
    assert "--workers" not in tlsgate()["args"], "one worker per pod; scale with replicas"


def test_image_is_this_version() -> None:
    [image] = kustomization()["images"]
    assert image["newTag"] == __version__
    for spec in pod_spec()["initContainers"] + pod_spec()["containers"]:
        assert spec["image"] == f"{image['name']}:{__version__}"


# -- Services, disruption budget, monitoring ------------------------------------------------------------


def test_proxy_service_keeps_client_addresses() -> None:
    service = one("Service", "tlsgate-proxy")["spec"]
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["type"] == "LoadBalancer" and service["externalTrafficPolicy"] == "Local"
    assert service["sessionAffinity"] == "ClientIP", "one device, one replica: probes and limits are per process"
    assert selects(service["selector"], pod_labels)
    [port] = service["ports"]
    assert container_port(port["targetPort"]) == int(option(tlsgate()["args"], "--listen-port"))
    ranges = [ipaddress.ip_network(r) for r in service["loadBalancerSourceRanges"]]
    assert ranges and all(r.is_private for r in ranges), "like tlsgate itself, the load balancer admits private sources only"


def test_metrics_service_is_internal_and_is_what_the_servicemonitor_scrapes() -> None:
    metrics = one("Service", "tlsgate-metrics")
    proxy = one("Service", "tlsgate-proxy")
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert metrics["spec"]["type"] == "ClusterIP" and selects(metrics["spec"]["selector"], pod_labels)
    [port] = metrics["spec"]["ports"]
    assert container_port(port["targetPort"]) == int(option(tlsgate()["args"], "--metrics-port"))
    assert all(p["port"] != port["port"] for p in proxy["spec"]["ports"]), "metrics stay off the load balancer"
    monitor = one("ServiceMonitor")["spec"]
    assert selects(monitor["selector"]["matchLabels"], metrics["metadata"]["labels"])
    assert not selects(monitor["selector"]["matchLabels"], proxy["metadata"]["labels"])
    assert monitor["namespaceSelector"]["matchNames"] == [metrics["metadata"]["namespace"]]
    [endpoint] = monitor["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    prometheus = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    assert endpoint["interval"] == prometheus["global"]["scrape_interval"]


def test_servicemonitor_job_is_the_job_the_alerts_name() -> None:
    job = one("Service", "tlsgate-metrics")["metadata"]["labels"][one("ServiceMonitor")["spec"]["jobLabel"]]
    expressions = [rule["expr"] for group in one("PrometheusRule")["spec"]["groups"] for rule in group["rules"]]
    named = set(re.findall(r'job="([^"]+)"', "\n".join(expressions)))
    assert named == {job}, f"alerts select job {named}, the ServiceMonitor makes job {job!r}"


def test_disruption_budget_covers_the_pods_and_leaves_one_serving() -> None:
    budget = one("PodDisruptionBudget")["spec"]
    deployment = one("Deployment")["spec"]
    assert selects(budget["selector"]["matchLabels"], deployment["template"]["metadata"]["labels"])
    assert budget["selector"]["matchLabels"] == deployment["selector"]["matchLabels"]
    assert deployment["replicas"] >= 2 and 0 < budget["maxUnavailable"] < deployment["replicas"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_every_object_is_in_the_tlsgate_namespace() -> None:
    for name, document in documents():
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == one("Namespace")["metadata"]["name"], name


def test_no_secret_material_in_the_manifests() -> None:
    text = json.dumps([doc for _, doc in documents()])
    assert "PRIVATE KEY" not in text and not any(doc["kind"] == "Secret" for _, doc in documents())


# -- findings on stdout, for the cluster's log collector ------------------------------------------------


def test_findings_dash_writes_json_lines_to_stdout_and_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mitmproxy.test import taddons

    from tlsgate.addons.findings import FindingsSink
    from tlsgate.sinks.findings import Finding

    monkeypatch.chdir(tmp_path)
    sink = FindingsSink()
    huge = {"headers": ["x" * 100] * 400}  # past the 16 KiB line cap: summarised, still one line
    with taddons.context(sink) as tctx:
        tctx.configure(sink, tlsgate_findings="-", tlsgate_findings_max_bytes=100)  # rotation cannot apply
        sink.record(Finding("cleartext", "blocked", "high", "api.test", 80, "10.0.0.5:1", "policies/a.yaml:3", "plain http"))
        sink.record(Finding("pin", "reported", "critical", "b.test", 443, None, "policies/a.yaml:9", "no pin", evidence=huge))
        tctx.configure(sink, tlsgate_findings="")  # back to console only: stdout stays open
        sink.record(Finding("cleartext", "blocked", "high", "c.test", 80, None, "policies/a.yaml:3", "plain http"))
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["host"] for line in lines] == ["api.test", "b.test"]
    assert json.loads(lines[1])["evidence"]["truncated"] is True
    assert list(tmp_path.iterdir()) == [], "no file named '-', no rotated copies"
    assert not sys.stdout.closed


# -- the README's steps ---------------------------------------------------------------------------------


def readme_kubernetes_commands() -> list[list[str]]:
    """The shell block of README's "### Kubernetes", one argv per line, comments dropped."""
    block = re.search(r"```sh\n(.*?)```", section("Kubernetes"), re.S)
    assert block, "the Kubernetes section shows the commands"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def readme_command(*prefix: str) -> list[str]:
    [found] = [argv for argv in readme_kubernetes_commands() if argv[: len(prefix)] == list(prefix)]
    return found


def test_readme_steps_create_the_secret_and_namespace_the_manifests_use() -> None:
    namespace = one("Namespace")["metadata"]["name"]
    assert readme_command("kubectl", "create", "namespace") == ["kubectl", "create", "namespace", namespace]
    secret = readme_command("kubectl", "-n", namespace, "create", "secret", "generic")
    volume_secret = volume("ca-secret")["secret"]
    assert secret[6] == volume_secret["secretName"]
    [from_file] = [arg.split("=", 1)[1] for arg in secret if arg.startswith("--from-file=")]
    key, _, path = from_file.partition("=")
    assert [item["key"] for item in volume_secret["items"]] == [key] and Path(path).name == key
    create = readme_command("tlsgate", "ca", "create")
    assert Path(create[create.index("--confdir") + 1]) == Path(path).parent, "the Secret is made from the CA just created"
    assert readme_command("kubectl", "apply", "-k") == ["kubectl", "apply", "-k", "deploy/kubernetes/"]
    proxy_service = readme_command("kubectl", "-n", namespace, "get", "service")
    assert proxy_service[-1] == one("Service", "tlsgate-proxy")["metadata"]["name"]
    [build] = [argv for argv in readme_kubernetes_commands() if argv[:2] == ["docker", "build"]]
    assert f":{__version__}" in build[3], "the README builds the tag kustomization.yaml deploys"
