"""Policy files -> Policy, or every problem with its file:line:column.

One or more files (or directories of `*.yaml`) merge into one policy. Nothing
is put in force unless the whole set is valid: a half-read policy would fail
open on exactly the hosts its broken part was meant to guard.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tlsgate.policy import sections as registry
from tlsgate.policy import yamlnodes as yn
from tlsgate.policy.hosts import PatternError, parse_pattern
from tlsgate.policy.matcher import DeviceIndex, HostIndex
from tlsgate.policy.model import DeviceProbes, HostPattern, Location, Mode, Policy, PolicyError, PolicyMessage, Rule, Settings
from tlsgate.policy.sections import Context
from tlsgate.policy.sections.client import DEVICE_KEYS, parse_device_probes

POLICY_VERSION = 1
CORE_TOP_KEYS = ("version", "defaults", "rules", "devices")
CORE_RULE_KEYS = ("name", "hosts")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The packaged default policy's name wherever it is loaded from: the path it has in a checkout (where
# policies/default.yaml links to the packaged copy), the container and the Kubernetes ConfigMap.
DEFAULT_POLICY_NAME = "policies/default.yaml"
logger = logging.getLogger("tlsgate.policy")


def top_keys() -> tuple[str, ...]:
    return (*CORE_TOP_KEYS, *(s.name for s in registry.base.top_sections()))


def setting_keys() -> tuple[str, ...]:
    """`mode` plus every registered per-host section, in registration order."""
    return ("mode", *(s.name for s in registry.base.setting_sections()))


def rule_keys() -> tuple[str, ...]:
    return (*CORE_RULE_KEYS, *setting_keys())


def embedded_policy() -> Path:
    """The default policy shipped inside the package, so an installed wheel works from any directory."""
    return Path(str(resources.files("tlsgate.policy").joinpath("default.yaml")))


def display_path(path: Path) -> str:
    """Paths as the user would type them, never absolute: rule references reach every blocked client.

    Relative to the working directory when under it (`policies/app.yaml`);
    otherwise the file and the directory holding it (`tlsgate/policy.yaml` for
    `/etc/tlsgate/policy.yaml`), enough for the operator to find the line and
    nothing about the proxy host's layout for a client. The packaged default
    policy is `policies/default.yaml` however it is reached: installed (no
    `--policy`), or through the checkout's `policies/default.yaml` link under
    `make run`. One rule, one name, so a finding from a laptop and one from CI
    are the same problem to `tlsgate diff`.
    """
    absolute = Path(os.path.abspath(path))
    if _is_default_policy(absolute):
        return DEFAULT_POLICY_NAME
    try:
        return str(absolute.relative_to(Path(os.path.abspath(Path.cwd()))))
    except ValueError:
        return str(Path(*absolute.parts[-2:])) if len(absolute.parts) > 2 else absolute.name


def _is_default_policy(path: Path) -> bool:
    """The packaged default policy itself, or a link to it (the checkout's `policies/default.yaml`)."""
    try:
        return path.resolve() == embedded_policy().resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False


def policy_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[PolicyMessage]]:
    """Expand directories to their `*.yaml`/`*.yml` files, sorted so merges are reproducible.

    Hidden entries are skipped: editors' temporary copies, and the `..data` and `..<timestamp>` directories
    of a Kubernetes ConfigMap volume, whose keys are the visible symlinks (`app.yaml -> ..data/app.yaml`).
    """
    files: list[Path] = []
    problems: list[PolicyMessage] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
            )
            if not found:
                problems.append(PolicyMessage(Location(display_path(path), 1, 1), "directory has no *.yaml policy files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(PolicyMessage(Location(str(path), 1, 1), "no such policy file or directory"))
    return files, problems


def load_policy(paths: Iterable[str | os.PathLike[str]]) -> Policy:
    """Load and validate; raise PolicyError listing every problem, warnings kept on the policy."""
    files, problems = policy_files(paths)
    if not files and not problems:
        problems.append(PolicyMessage(Location("<none>", 1, 1), "no policy files given"))
    texts: list[tuple[str, str]] = []
    for path in files:
        try:
            if path.stat().st_size > yn.MAX_BYTES:  # refused before reading it into memory
                too_big = f"policy file is larger than {yn.MAX_BYTES >> 20} MiB"
                problems.append(PolicyMessage(Location(display_path(path), 1, 1), too_big))
                continue
            raw = path.read_bytes()
            texts.append((display_path(path), raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            where = Location(display_path(path), line, column)
            problems.append(PolicyMessage(where, f"policy files are UTF-8 text; byte 0x{raw[exc.start]:02x} is not"))
        except OSError as exc:
            problems.append(PolicyMessage(Location(display_path(path), 1, 1), f"cannot read policy: {exc.strerror or exc}"))
    try:
        policy = load_texts(texts)
    except PolicyError as exc:
        raise PolicyError(problems + exc.messages + exc.warnings) from None
    if problems:
        raise PolicyError(problems + list(policy.warnings))
    return policy


def load_texts(texts: list[tuple[str, str]]) -> Policy:
    """The pure part of loading: (display name, YAML text) pairs -> Policy.

    The cyclic garbage collector is paused meanwhile: a 10,000-rule policy
    allocates hundreds of thousands of acyclic node objects, and re-scanning
    the growing heap made loading superlinear (about half the time at 10k rules).
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        builder = _Builder()
        for name, text in texts:
            try:
                builder.add_file(name, text)
            except Exception as exc:  # noqa: BLE001 - the error boundary: no traceback leaves the loader
                builder.internal_error(name, exc)
        try:
            return builder.build()
        except PolicyError:
            raise
        except Exception as exc:  # noqa: BLE001
            builder.internal_error(builder.files[-1] if builder.files else "<policy>", exc)
            raise PolicyError(builder.messages) from None
    finally:
        if paused:
            gc.enable()


class _Builder:
    def __init__(self) -> None:
        self.messages: list[PolicyMessage] = []
        self.context = Context()
        self.defaults: dict[str, Any] = {}
        self.defaults_origin: dict[str, Location] = {}
        self.defaults_location: Location | None = None
        self.rules: list[Rule] = []
        self.patterns: dict[tuple[str, bool], Location] = {}
        self.devices: dict[str, str] = {}
        self.device_origin: dict[str, Location] = {}
        self.device_probes: dict[str, DeviceProbes] = {}
        self.files: list[str] = []

    def internal_error(self, name: str, exc: Exception) -> None:
        """A bug in tlsgate met by this file: still a located refusal (the policy is not put in force), never a traceback."""
        logger.debug("tlsgate: internal error reading %s", name, exc_info=exc)
        self.messages.append(
            PolicyMessage(
                Location(name, 1, 1),
                f"tlsgate could not read this policy ({type(exc).__name__}); this is a tlsgate bug, please report it",
            )
        )

    def add_file(self, name: str, text: str) -> None:
        self.files.append(name)
        reader = yn.Reader(name)
        root = yn.compose(text, reader)
        if root is not None:
            self._read_root(root, reader)
        self.messages.extend(reader.messages)

    def _read_root(self, root: yaml.Node, reader: yn.Reader) -> None:
        if isinstance(root, yaml.ScalarNode) and yn.scalar(root) is None:
            return  # an empty file is an empty policy
        top = yn.mapping(root, reader, "a policy file")
        if top is None:
            return
        yn.unknown_keys(top, top_keys(), reader, "the policy file")
        if "version" in top:
            node = top["version"][1]
            value = yn.scalar(node) if isinstance(node, yaml.ScalarNode) else None
            if type(value) is not int or value != POLICY_VERSION:
                reader.error(node, f"unsupported policy version; this tlsgate reads version {POLICY_VERSION}")
        for section in registry.base.top_sections():
            if section.name in top:
                section.parse(top[section.name][1], reader, self.context)
        if "defaults" in top:
            self._read_defaults(*top["defaults"], reader)
        if "devices" in top:
            self._read_devices(top["devices"][1], reader)
        if "rules" in top:
            self._read_rules(top["rules"][1], reader)

    def _read_defaults(self, key_node: yaml.Node, node: yaml.Node, reader: yn.Reader) -> None:
        values = self._read_settings(node, reader, "defaults")
        if self.defaults_location is None:
            self.defaults_location = reader.loc(key_node)
        for key, (value, where) in values.items():
            if key in self.defaults_origin:
                reader.error(where, f"defaults.{key} is already set at {self.defaults_origin[key]}; set it in one file only")
                continue
            self.defaults[key] = value
            self.defaults_origin[key] = where

    def _read_settings(
        self, node: yaml.Node, reader: yn.Reader, what: str, allowed: tuple[str, ...] | None = None
    ) -> dict[str, tuple[Any, Location]]:
        entries = yn.mapping(node, reader, what)
        if entries is None:
            return {}
        settings = setting_keys()
        yn.unknown_keys(entries, allowed or settings, reader, what)
        out: dict[str, tuple[Any, Location]] = {}
        for key, (key_node, value_node) in entries.items():
            if key not in settings:
                continue
            value = self._read_setting(key, key_node, value_node, reader, what)
            if value is not None:
                out[key] = (value, reader.loc(key_node))
        return out

    def _read_setting(self, key: str, key_node: yaml.Node, node: yaml.Node, reader: yn.Reader, what: str) -> Any:
        if key == "mode":
            value = yn.choice(node, reader, f"{what}.mode", tuple(Mode))
            return Mode(value) if value else None
        self.context.where = what
        return registry.SECTIONS[key].parse(node, reader, self.context)

    def _read_devices(self, node: yaml.Node, reader: yn.Reader) -> None:
        entries = yn.mapping(node, reader, "devices")
        for key, (key_node, value_node) in (entries or {}).items():
            try:
                address = str(ipaddress.ip_network(key, strict=False)) if "/" in key else str(ipaddress.ip_address(key))
            except ValueError:
                reader.error(
                    key_node, f"device address {key!r} is not an IP address or network (e.g. 192.168.1.23 or 10.0.0.0/24)"
                )
                continue
            fields: dict[str, tuple[yaml.Node, yaml.Node]] | None = None
            if isinstance(value_node, yaml.MappingNode):
                fields = yn.section(value_node, reader, f"the device entry for {key}", DEVICE_KEYS)
                if fields is None:
                    continue
                if "name" not in fields:
                    reader.error(value_node, f"the device entry for {key} needs a name: {{name: pixel-7, probes: all}}")
                    continue
                name_node = fields["name"][1]
            elif isinstance(value_node, yaml.SequenceNode):
                reader.error(
                    value_node,
                    f"the device entry for {key} must be a name (pixel-7) or a mapping ({{name: pixel-7, probes: all}}), "
                    "not a list",
                )
                continue
            else:
                name_node = value_node
            name = yn.string(name_node, reader, f"the device name for {key}")
            if name is None:
                continue
            if not _DEVICE_NAME.match(name):
                reader.error(
                    name_node, f"device name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (it becomes a metric label)"
                )
                continue
            if address in self.device_origin:
                reader.error(key_node, f"device address {key} is already named at {self.device_origin[address]}")
                continue
            probes = parse_device_probes(fields, reader, name, reader.loc(key_node)) if fields else None
            if probes is not None:
                first = self.device_probes.get(name)
                if first is not None:
                    reader.error(
                        value_node,
                        f"device '{name}' already has probe settings at {first.location}; write them once, in one "
                        f"entry (they apply to every address named {name}), and name this address with just {name}",
                    )
                    continue
                self.device_probes[name] = probes
            self.devices[address] = name
            self.device_origin[address] = reader.loc(key_node)

    def _read_rules(self, node: yaml.Node, reader: yn.Reader) -> None:
        for item in yn.sequence(node, reader, "rules") or []:
            self._read_rule(item, reader)

    def _read_rule(self, node: yaml.Node, reader: yn.Reader) -> None:
        entries = yn.mapping(node, reader, "a rule")
        if entries is None:
            return
        where = reader.loc(node)
        name = yn.string(entries["name"][1], reader, "rule name") if "name" in entries else None
        if "hosts" not in entries:
            reader.error(node, "a rule needs 'hosts': a host name, '*.domain' pattern or a list of them")
            return
        patterns = self._read_hosts(entries["hosts"][1], reader)
        values = self._read_settings(node, reader, "rule", rule_keys())
        if not values and patterns:
            reader.warn(node, "this rule sets nothing; its hosts get the defaults anyway")
        if patterns:
            overrides = {key: value for key, (value, _) in values.items()}
            self.rules.append(Rule(tuple(patterns), overrides, where, name))

    def _read_hosts(self, node: yaml.Node, reader: yn.Reader) -> list[HostPattern]:
        patterns: list[HostPattern] = []
        for item, text in yn.strings(node, reader, "hosts"):
            try:
                base, wildcard = parse_pattern(text)
            except PatternError as exc:
                reader.error(item, str(exc))
                continue
            where = reader.loc(item)
            first = self.patterns.get((base, wildcard))
            if first is not None:
                reader.error(
                    item,
                    f"host pattern {text!r} is already listed at {first}; a pattern may appear once in a policy "
                    "(two rules for one pattern would tie), so merge the two",
                )
                continue
            self.patterns[(base, wildcard)] = where
            patterns.append(HostPattern(text, wildcard, base, where))
        return patterns

    def _resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """Let sections finish what needed every file read (pin set names -> pin sets)."""
        out = dict(values)
        for key, value in values.items():
            section = registry.SECTIONS.get(key)
            if section is not None and section.resolve is not None:
                out[key] = section.resolve(value, self.context, self.messages)
        return out

    def build(self) -> Policy:
        self.defaults = self._resolve(self.defaults)
        self.rules = [replace(rule, overrides=self._resolve(rule.overrides)) for rule in self.rules]
        errors = [m for m in self.messages if not m.warning]
        if errors:
            raise PolicyError(self.messages)
        sections = self._resolve(registry.base.defaults())  # a section's default may need resolving too (payload)
        sections.update({k: v for k, v in self.defaults.items() if k != "mode"})
        settings = Settings(mode=self.defaults.get("mode", Mode.ENFORCE), sections=sections)
        defaults_location = self.defaults_location or Location(self.files[0] if self.files else "<built-in>", 1, 1)
        rules = tuple(self.rules)
        return Policy(
            defaults=settings,
            defaults_location=defaults_location,
            rules=rules,
            devices=dict(self.devices),
            files=tuple(self.files),
            warnings=tuple(sorted(self.messages)),
            index=HostIndex(settings, defaults_location, rules),
            device_index=DeviceIndex(self.devices),
            device_probes=dict(self.device_probes),
        )
