"""`tlsgate run | validate | ca`: the shell around a lean mitmproxy master (app/master.py) and the pure core."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tlsgate import __version__
from tlsgate.app.paths import default_confdir, new_ca_warning
from tlsgate.policy import PolicyError, load_policy
from tlsgate.policy.loader import embedded_policy
from tlsgate.report import exitcodes
from tlsgate.tls import mastg

CONFDIR_HELP = (
    "CA directory (default: $TLSGATE_CONFDIR, else the checkout's certs/ when run from a checkout, "
    "else ~/.local/share/tlsgate; `tlsgate ca show` prints it)"
)
DEFAULT_FINDINGS = "findings.jsonl"
# What `mitmdump -s "$(tlsgate script-path)"` loads (see its folder's docstring for why it lives alone there).
SCRIPT_MODULE = "tlsgate.app.mitmproxy_script.tlsgate_addons"
# mitmdump's -q and -v, as mitmproxy's own command line sets them; an explicit --set after them wins.
LOUDNESS = {
    "quiet": ["termlog_verbosity=error", "flow_detail=0"],
    "verbose": ["termlog_verbosity=debug", "flow_detail=2"],
}


# What a shell reports for a program SIGPIPE ended (`yes | head -1`); 1 would read as "the gate failed".
BROKEN_PIPE = 128 + 13


def main(argv: Sequence[str] | None = None) -> int:
    """`tlsgate ... | head -1` ends quietly: the reader leaving is no crash, and no verdict either.

    The way the Python docs give (signal module, "Note on SIGPIPE"): stdout is
    pointed at /dev/null, so the interpreter's last flush of what is still
    buffered cannot raise again on the way out and print "Exception ignored".
    """
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # also for --help and --version, which leave through SystemExit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exitcodes.USAGE
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): main() ends quietly
    except Exception as exc:  # noqa: BLE001 - the last boundary: Python's own exit status for a crash is 1, the verdict's
        return exitcodes.internal_error(exc, f"running `tlsgate {args.command}`")


def version_text() -> str:
    """What `mitmdump --version` prints, under tlsgate's own line: a bug report then names every version that
    decides what the gate does (mitmproxy's proxy core, the OpenSSL that does the handshakes)."""
    import platform

    from mitmproxy import version
    from OpenSSL import SSL

    openssl: str | bytes = SSL.SSLeay_version(SSL.SSLEAY_VERSION)
    if isinstance(openssl, bytes):
        openssl = openssl.decode()
    return "\n".join(
        [
            f"tlsgate:   {__version__}",
            f"Mitmproxy: {version.get_dev_version()}",
            f"Python:    {platform.python_version()}",
            f"OpenSSL:   {openssl}",
            f"Platform:  {platform.platform()}",
        ]
    )


class _VersionAction(argparse.Action):
    """argparse's version action, with the text built only when asked for (it imports mitmproxy and pyOpenSSL)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: object, values: object, option: str | None = None) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlsgate",
        description="TLS-inspecting forward proxy with YAML policies.",
        epilog=f"{exitcodes.SUMMARY}. `validate` exits 1 when a policy has errors.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the versions of tlsgate, mitmproxy, Python and OpenSSL, and the platform"
    )
    sub = parser.add_subparsers(metavar="COMMAND", dest="command")

    run = sub.add_parser(
        "run",
        help="start the proxy",
        description="Exit 0 when stopped (and nothing of this run fails --fail-on); 1: this run's findings fail "
        "--fail-on; 2: it could not start (bad options, a policy with errors, a port in use, an unreadable CA); "
        "3: internal error (a tlsgate bug).",
    )
    run.add_argument(
        "--policy",
        action="append",
        metavar="PATH",
        help="policy file or directory of *.yaml (repeatable; default: the embedded policies/default.yaml)",
    )
    run.add_argument(
        "--listen-host",
        help="address to listen on (default 127.0.0.1; '' is every address, IPv4 and IPv6, as in mitmproxy, and the "
        "default with --mode transparent, whose traffic is redirected to this machine's LAN addresses; public "
        "clients stay refused, see --allow-public-clients)",
    )
    run.add_argument("-p", "--listen-port", type=int, default=8080, help="proxy port (default 8080), as mitmdump -p")
    run.add_argument(
        "-m",
        "--mode",
        action="append",
        metavar="MODE",
        help="mitmproxy mode: regular (default), socks5, transparent, wireguard, upstream:URL (repeatable), as mitmdump -m",
    )
    run.add_argument("--confdir", type=Path, help=CONFDIR_HELP)
    run.add_argument(
        "--findings",
        default=DEFAULT_FINDINGS,
        metavar="PATH",
        help=f"findings JSON-lines file (default {DEFAULT_FINDINGS}; '-' for JSON lines on stdout, for a log collector; "
        "'' for console only)",
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
        "--proxyauth",
        metavar="SPEC",
        default=os.environ.get("TLSGATE_PROXYAUTH") or None,
        help="require proxy authentication: '@htpasswd-file', 'user:pass' or mitmproxy's ldap spec "
        "(default: $TLSGATE_PROXYAUTH; prefer it or a file: a password on the command line shows in `ps`)",
    )
    run.add_argument(
        "--allow-public-clients",
        action="store_true",
        help="accept clients from every public (globally routable) address; off by default so tlsgate is never an open "
        "proxy (devices on this host's LAN prefixes, or --set tlsgate_lan_prefixes=PREFIX, are accepted without it)",
    )
    run.add_argument(
        "--workers", type=int, default=1, help="processes sharing the listening port (SO_REUSEPORT), e.g. one per core"
    )
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    run.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics, /healthz, /readyz (default 127.0.0.1)")
    run.add_argument(
        "--metrics-port", type=int, default=9464, help="Prometheus port (default 9464; 0 picks a free one; -1 turns it off)"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a mitmproxy option, passed through (repeatable), e.g. flow_detail=2 (0-2: per-flow lines, redacted); "
        'confdir=DIR is taken as --confdir DIR; replay/map/modify options need mitmdump -s "$(tlsgate script-path)"',
    )
    run.add_argument(
        "-s",
        "--scripts",
        action="append",
        default=[],
        metavar="PATH",
        help="as mitmdump -s: load a mitmproxy add-on script into the run (repeatable; the same as --set scripts=PATH)",
    )
    run.add_argument(
        "-w",
        "--save-stream-file",
        metavar="PATH",
        help="as mitmdump -w: write every flow to PATH as it passes ('+PATH' appends), 0600: it holds every secret "
        "the apps send (the same as --set save_stream_file=PATH)",
    )
    loudness = run.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="as mitmdump -q: errors only, no per-flow lines")
    loudness.add_argument("-v", "--verbose", action="store_true", help="as mitmdump -v: debug log, flow_detail=2")
    run.add_argument("--duration", metavar="D", help="stop after D (90s, 10m, 1h or seconds), e.g. one test session")
    run.add_argument("--until-idle", metavar="D", help="stop once no client has connected or sent a request for D")
    run.add_argument(
        "--fail-on",
        type=_gate_text,
        metavar="GATE",
        help="on stopping, exit 1 if a finding of this run was blocked or is at least this severe, or shows the app "
        f"failing a named MASVS control or MASTG test, as `report --fail-on` ({mastg.GATE_HELP})",
    )
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check policy files; prints file:line:column: message, exits 1 on errors")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="policy file or directory (a directory is one merged policy)")
    validate.add_argument(
        "--merge", action="store_true", help="check all PATHs as one policy, as `run --policy A --policy B` loads them"
    )
    validate.set_defaults(func=cmd_validate)

    pin = sub.add_parser("pin", help="print a server's (or PEM/DER files') chain with pins, and a policy snippet")
    pin.add_argument("targets", nargs="+", metavar="HOST[:PORT] | FILE", help="a live server, or certificate files (leaf first)")
    pin.add_argument("--upstream-ca", action="append", metavar="PATH", help="extra trusted root, as for `run`")
    pin.add_argument("--resolve", action="append", metavar="HOST:PORT:ADDRESS", help="as for `run`")
    pin.add_argument("--name", help="pin set name for the snippet (default: derived from the host)")
    pin.set_defaults(func=cmd_pin)

    ca = sub.add_parser("ca", help="create, show or export tlsgate's interception CA")
    ca.add_argument("action", choices=("create", "show", "export"))
    ca.add_argument("--confdir", type=Path, help=CONFDIR_HELP)
    ca.add_argument(
        "--format",
        choices=("pem", "der", "android"),
        default="pem",
        help="export format (android: <subject_hash_old>.0 for the system store)",
    )
    ca.add_argument("--out", metavar="DIR", help="directory to export into (default: the CA directory); '-' writes to stdout")
    ca.set_defaults(func=cmd_ca)

    script = sub.add_parser(
        "script-path",
        help='print the path of the add-on script for stock mitmproxy: mitmdump -s "$(tlsgate script-path)"',
        description="Print where tlsgate's add-on script for mitmdump, mitmweb and mitmproxy is, in this installation "
        '(a wheel or a checkout): mitmdump -s "$(tlsgate script-path)" --set tlsgate_policy=... Run the mitmdump of '
        "the environment this tlsgate is installed in.",
    )
    script.set_defaults(func=cmd_script_path)
    from tlsgate.report.cli import add_commands

    add_commands(sub)
    from tlsgate.app.wireguard import add_commands as add_wireguard_commands

    add_wireguard_commands(sub)
    from tlsgate.app.appimport import add_command as add_import_command

    add_import_command(sub)
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


def cmd_pin(args: argparse.Namespace) -> int:
    import datetime as dt

    from OpenSSL import SSL

    from tlsgate.app.pinfetch import fetch_chain, load_files
    from tlsgate.app.pinsnippet import describe_chain, snippet
    from tlsgate.tls.trust import TrustError

    files = [Path(t) for t in args.targets if Path(t).is_file()]
    try:
        if files:
            if len(files) != len(args.targets):
                print("tlsgate: give either certificate files or one HOST[:PORT], not both", file=sys.stderr)
                return 2
            chain = load_files(files)
            host = _first_dns_name(chain[0]) if chain else "example.com"
            print(f"# {len(chain)} certificate(s) from {', '.join(map(str, files))}")
        else:
            if len(args.targets) != 1:
                print("tlsgate: give one HOST[:PORT] at a time", file=sys.stderr)
                return 2
            host, port = _host_port(args.targets[0])
            address = _resolved(host, port, args.resolve or [])
            roots = [Path(p) for p in args.upstream_ca or []]
            fetched = fetch_chain(host, port, address, roots)
            chain = fetched.chain
            state = "verified" if fetched.verified else f"NOT VERIFIED ({fetched.error})"
            print(f"# {host}:{port}{f' via {address}' if address else ''}: chain {state}")
    except (OSError, TrustError, ValueError, SSL.Error) as exc:
        print(f"tlsgate: {exc}", file=sys.stderr)
        return 1
    if not chain:
        print("tlsgate: no certificates found", file=sys.stderr)
        return 1
    for line in describe_chain(chain):
        print(line)
    print("\n# paste into a policy (checked by `tlsgate validate`):")
    print(snippet(host, chain, dt.date.today(), args.name), end="")
    return 0


def _host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return host.strip("[]"), int(port)
    return target.strip("[]"), 443


def _resolved(host: str, port: int, specs: list[str]) -> str | None:
    from tlsgate.policy.hosts import parse_resolve

    for spec in specs:
        name, spec_port, address = parse_resolve(spec)
        if name == host.lower() and spec_port in (None, port):
            return address
    return None


def _first_dns_name(cert) -> str:
    from cryptography import x509

    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return names[0] if names else "example.com"


def cmd_ca(args: argparse.Namespace) -> int:
    from tlsgate.tls.ca import CAError, describe, ensure_ca, export_ca, load_ca

    confdir = args.confdir or default_confdir()
    try:
        if args.action == "create":
            info, created = ensure_ca(confdir)
            print(f"created a new CA in {confdir}/" if created else f"a CA already exists in {confdir}/; keeping it")
            warning = new_ca_warning(confdir) if created else None
            if warning:
                print(warning, file=sys.stderr)
        else:
            info = load_ca(confdir)
        for note in info.notes:
            print(f"tlsgate: {note}", file=sys.stderr)
        if args.action == "export":
            name, data = export_ca(info, args.format)
            if args.out == "-":
                sys.stdout.buffer.write(data)
                return 0
            target = Path(args.out or confdir) / name
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


def cmd_script_path(args: argparse.Namespace) -> int:
    """Where Python would load the script from, found without running it (that would import mitmproxy): the path
    of this installation's copy, whether it is a wheel in site-packages or a checkout."""
    import importlib.util

    spec = importlib.util.find_spec(SCRIPT_MODULE)
    origin = Path(spec.origin) if spec and spec.origin else None
    if origin is None or not origin.is_file():
        print(
            f"tlsgate: {SCRIPT_MODULE} is not a file mitmproxy can load ({origin}): reinstall tlsgate from its wheel",
            file=sys.stderr,
        )
        return exitcodes.USAGE
    print(origin)
    return 0


def _gate_text(text: str) -> str:
    """`run --fail-on`, checked here (a usage error, exit 2, before anything starts) and passed on as written."""
    try:
        mastg.parse_gate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--fail-on: ")) from None
    return text


def cmd_run(args: argparse.Namespace) -> int:
    from tlsgate.addons.resolve import resolve_scope_error
    from tlsgate.app.runner import RunConfig, default_listen_host, listen_problem, run_proxy

    policy_paths = args.policy or []
    try:
        policy = load_policy(policy_paths or [embedded_policy()])
    except PolicyError as exc:
        for message in [*exc.messages, *exc.warnings]:
            print(message, file=sys.stderr)
        print("tlsgate: the policy has errors; not starting (check it with `tlsgate validate`)", file=sys.stderr)
        return exitcodes.USAGE  # not 1: a CI job would read "the gate failed" and report on an empty run
    if (args.duration or args.until_idle or args.fail_on) and args.workers > 1:
        # Each worker would stop and judge on its own; a supervisor that aggregates them is not built yet.
        print("tlsgate: --duration, --until-idle and --fail-on need --workers 1", file=sys.stderr)
        return exitcodes.USAGE
    confdir, passthrough, problem = confdir_from_set(args.confdir, args.set)
    if problem:
        print(f"tlsgate: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    modes = args.mode or ["regular"]
    # '' is mitmproxy's "every address" (IPv4 and IPv6), not "not given": only a missing flag picks the default.
    listen_host = args.listen_host.strip() if args.listen_host is not None else default_listen_host(modes)
    problem = listen_problem(listen_host, modes) or (resolve_scope_error(modes) if args.resolve else None)
    if problem:
        print(f"tlsgate: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    from tlsgate.app.wireguard import wireguard_modes

    if args.workers > 1 and wireguard_modes(args.mode or []):
        # Each worker would bind UDP 51820 on its own; a WireGuard session cannot be shared between processes.
        print("tlsgate: --mode wireguard needs --workers 1", file=sys.stderr)
        return exitcodes.USAGE
    inline = args.proxyauth and not args.proxyauth.startswith(("@", "ldap:", "ldaps:")) and ":" in args.proxyauth
    if inline and args.proxyauth != os.environ.get("TLSGATE_PROXYAUTH"):
        print(
            "tlsgate: warning: --proxyauth user:pass is visible to every user in the process list; "
            "set TLSGATE_PROXYAUTH=user:pass or use --proxyauth @htpasswd-file",
            file=sys.stderr,
        )
    config = RunConfig(
        policy_paths=policy_paths,
        policy=policy,
        listen_host=listen_host,
        listen_port=args.listen_port,
        modes=modes,
        confdir=confdir or default_confdir(),
        findings=args.findings,
        upstream_ca=[Path(p) for p in args.upstream_ca or []],
        resolve=args.resolve or [],
        proxyauth=args.proxyauth,
        allow_public_clients=args.allow_public_clients,
        metrics_listen="" if args.metrics_port < 0 else f"{args.metrics_host}:{args.metrics_port}",
        workers=args.workers,
        duration=args.duration or "",
        until_idle=args.until_idle or "",
        fail_on=args.fail_on or "",
        worker_index=args.worker_index,
        extra_set=[
            *LOUDNESS.get("quiet" if args.quiet else "verbose" if args.verbose else "", []),
            *(f"scripts={path}" for path in args.scripts),
            *([f"save_stream_file={args.save_stream_file}"] if args.save_stream_file else []),
            *passthrough,
        ],
    )
    return run_proxy(config)


def confdir_from_set(confdir: Path | None, sets: list[str]) -> tuple[Path | None, list[str], str | None]:
    """`--set confdir=DIR`, the way mitmdump users name the CA directory, taken as `--confdir DIR`.

    Passed through, it reached mitmproxy after tlsgate had loaded (or made) the
    CA of the default directory: mitmproxy minted a second CA in DIR and served
    it, while the banner named the first, so HTTPS checked against the CA the
    banner names failed. Returns the directory (None: the default), the other
    `--set` items, and why the two options cannot both hold, if they name two
    directories. As in mitmproxy, the last `--set confdir=` wins, and `~` is
    the home directory.
    """
    given = [item.partition("=")[2] for item in sets if "=" in item and item.partition("=")[0].strip() == "confdir"]
    rest = [item for item in sets if not ("=" in item and item.partition("=")[0].strip() == "confdir")]
    if not given:
        return confdir, rest, None
    if not given[-1].strip():
        return None, rest, "--set confdir= needs a directory (or use --confdir DIR)"
    chosen = Path(given[-1]).expanduser()
    if confdir is not None and os.path.abspath(confdir.expanduser()) != os.path.abspath(chosen):
        two = f"--confdir {confdir} and --set confdir={given[-1]} name two CA directories, and devices trust one CA"
        return None, rest, f"{two}; give one of them (--confdir DIR is the same as --set confdir=DIR)"
    return chosen, rest, None


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    sys.exit(main())
