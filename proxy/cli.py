"""`tlsgate run | validate | ca`: the shell around mitmproxy's DumpMaster and the pure core."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy import __version__
from proxy.policy import PolicyError, load_policy

DEFAULT_CONFDIR = "certs"
DEFAULT_FINDINGS = "findings.jsonl"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlsgate", description="TLS-inspecting forward proxy with YAML policies.")
    parser.add_argument("--version", action="version", version=f"tlsgate {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="start the proxy")
    run.add_argument(
        "--policy",
        action="append",
        metavar="PATH",
        help="policy file or directory of *.yaml (repeatable; default: the embedded policies/default.yaml)",
    )
    run.add_argument(
        "--listen-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; see --allow-public-clients)"
    )
    run.add_argument("--listen-port", type=int, default=8080, help="proxy port (default 8080)")
    run.add_argument(
        "--mode",
        action="append",
        metavar="MODE",
        help="mitmproxy mode: regular (default), socks5, transparent, wireguard, upstream:URL (repeatable)",
    )
    run.add_argument("--confdir", default=DEFAULT_CONFDIR, help=f"CA directory (default {DEFAULT_CONFDIR}/)")
    run.add_argument(
        "--findings",
        default=DEFAULT_FINDINGS,
        metavar="PATH",
        help=f"findings JSON-lines file (default {DEFAULT_FINDINGS}; '' for console only)",
    )
    run.add_argument(
        "--upstream-ca",
        action="append",
        metavar="PATH",
        help="extra trusted root CA (PEM) for upstream servers, e.g. a staging CA; added to the system roots (repeatable)",
    )
    run.add_argument(
        "--resolve",
        action="append",
        metavar="HOST:PORT:ADDRESS",
        help="connect to ADDRESS for HOST:PORT, like curl --resolve; PORT may be '*' (repeatable)",
    )
    run.add_argument(
        "--proxyauth", metavar="SPEC", help="require proxy authentication: 'user:pass', '@htpasswd-file' or mitmproxy's ldap spec"
    )
    run.add_argument(
        "--allow-public-clients",
        action="store_true",
        help="accept clients from public (globally routable) addresses; off by default so tlsgate is never an open proxy",
    )
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any mitmproxy option, passed through (repeatable)"
    )
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check policy files; prints file:line:column: message, exits 1 on errors")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="policy file or directory (a directory is one merged policy)")
    validate.add_argument(
        "--merge", action="store_true", help="check all PATHs as one policy, as `run --policy A --policy B` loads them"
    )
    validate.set_defaults(func=cmd_validate)

    ca = sub.add_parser("ca", help="create, show or export tlsgate's interception CA")
    ca.add_argument("action", choices=("create", "show", "export"))
    ca.add_argument("--confdir", default=DEFAULT_CONFDIR)
    ca.add_argument(
        "--format",
        choices=("pem", "der", "android"),
        default="pem",
        help="export format (android: <subject_hash_old>.0 for the system store)",
    )
    ca.add_argument(
        "--out", metavar="DIR", default=".", help="directory to export into (default: current directory); '-' writes to stdout"
    )
    ca.set_defaults(func=cmd_ca)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    groups = [args.paths] if args.merge else [[path] for path in args.paths]
    return max(_validate_one(paths) for paths in groups)


def _validate_one(paths: list[str]) -> int:
    try:
        policy = load_policy(paths)
    except PolicyError as exc:
        for message in [*exc.messages, *exc.warnings]:
            print(message)
        print(f"{' '.join(paths)}: {len(exc.messages)} error(s), {len(exc.warnings)} warning(s)", file=sys.stderr)
        return 1
    for warning in policy.warnings:
        print(warning)
    summary = f"{policy.rule_count} rule(s) from {len(policy.files)} file(s), {len(policy.warnings)} warning(s)"
    print(f"{' '.join(paths)}: ok: {summary}", file=sys.stderr)
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    from proxy.tls.ca import CAError, describe, ensure_ca, export_ca, load_ca

    confdir = Path(args.confdir)
    try:
        if args.action == "create":
            info, created = ensure_ca(confdir)
            print("created a new CA" if created else "a CA already exists; keeping it")
        else:
            info = load_ca(confdir)
        if args.action == "export":
            name, data = export_ca(info, args.format)
            if args.out == "-":
                sys.stdout.buffer.write(data)
                return 0
            target = Path(args.out) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            print(f"wrote {target}")
            return 0
    except CAError as exc:
        print(f"tlsgate: {exc}", file=sys.stderr)
        return 1
    width = max(len(label) for label, _ in describe(info))
    for label, value in describe(info):
        print(f"{label:<{width}}  {value}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from proxy.runner import RunConfig, run_proxy

    policy_paths = args.policy or []
    try:
        from proxy.addons.policy import policy_paths as resolve_paths

        policy = load_policy(resolve_paths(policy_paths))
    except PolicyError as exc:
        for message in [*exc.messages, *exc.warnings]:
            print(message, file=sys.stderr)
        print("tlsgate: the policy has errors; not starting (check it with `tlsgate validate`)", file=sys.stderr)
        return 1
    config = RunConfig(
        policy_paths=policy_paths,
        policy=policy,
        listen_host=args.listen_host,
        listen_port=args.listen_port,
        modes=args.mode or ["regular"],
        confdir=Path(args.confdir),
        findings=args.findings,
        upstream_ca=[Path(p) for p in args.upstream_ca or []],
        resolve=args.resolve or [],
        proxyauth=args.proxyauth,
        allow_public_clients=args.allow_public_clients,
        extra_set=args.set,
    )
    return run_proxy(config)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    sys.exit(main())
