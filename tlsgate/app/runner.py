"""Starts a lean mitmproxy master (tlsgate/app/master.py) with tlsgate's addons and safe defaults.

The options set here are the same ones a `mitmdump -s "$(tlsgate script-path)"`
user sets by hand, so the two ways of running stay equivalent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tlsgate import __version__
from tlsgate.addons import make_addons
from tlsgate.addons.console import ConsoleFlows
from tlsgate.policy import Policy
from tlsgate.report import exitcodes

if TYPE_CHECKING:
    from mitmproxy import options
    from mitmproxy.proxy import mode_specs

    from tlsgate.app.master import LeanMaster

logger = logging.getLogger("tlsgate")


@dataclass
class RunConfig:
    policy_paths: list[str]
    policy: Policy
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    modes: list[str] = field(default_factory=lambda: ["regular"])
    confdir: Path = Path("certs")
    findings: str = "findings.jsonl"
    upstream_ca: list[Path] = field(default_factory=list)
    resolve: list[str] = field(default_factory=list)
    proxyauth: str | None = None
    metrics_listen: str = "127.0.0.1:9464"
    allow_public_clients: bool = False
    extra_set: list[str] = field(default_factory=list)
    workers: int = 1
    duration: str = ""  # --duration: stop after this long
    until_idle: str = ""  # --until-idle: stop after this long without a connection or request
    fail_on: str = ""  # --fail-on: the exit status judges this run's findings
    worker_index: int | None = None  # set inside a worker process started by the supervisor


# mitmproxy's listen_host "" (its own default): asyncio binds 0.0.0.0 and :: (IPV6_V6ONLY), IPv4 and IPv6;
# `--listen-host ''` means the same in tlsgate, with the same public-client guard as any non-loopback host.
ALL_ADDRESSES = ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _transparent_listen_hosts(modes: list[str], listen_host: str | None) -> list[str]:
    """The address each transparent listener binds (its own `transparent@HOST:PORT`, else --listen-host)."""
    from mitmproxy.proxy import mode_specs

    hosts = []
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy's option check reports it
        if isinstance(mode, mode_specs.TransparentMode):
            hosts.append(mode.custom_listen_host or listen_host or "")
    return hosts


def default_listen_host(modes: list[str]) -> str:
    """127.0.0.1, except for transparent mode, which iptables and ip6tables REDIRECT feed on the gateway's LAN side.

    There it is "" (mitmproxy's "every address"): a socket on 0.0.0.0 and one on
    ::, so redirected IPv6 is taken too; with 0.0.0.0 alone ip6tables REDIRECT
    would only block. Binding every address is safe because `block_global`
    (kept on unless --allow-public-clients) still refuses public clients that are
    not on this host's LAN (tlsgate/addons/access.py).
    """
    if any(host == ALL_ADDRESSES for host in _transparent_listen_hosts(modes, None)):
        return ALL_ADDRESSES
    return "127.0.0.1"


def families(host: str) -> str:
    """Which address families a listen host takes connections from, as the banner says it."""
    if host in (ALL_ADDRESSES, "*"):
        return "IPv4 and IPv6"
    if host == "localhost":
        return "IPv4 and IPv6 loopback"
    try:
        version = ipaddress.ip_address(host.strip("[]")).version
    except ValueError:
        return "the addresses the name resolves to"
    return f"IPv{version} only"


def listen_problem(listen_host: str, modes: list[str]) -> str | None:
    """Why a listen address cannot work for these modes, or None: refused at start-up rather than failing silently."""
    for host in _transparent_listen_hosts(modes, listen_host):
        if is_loopback(host):
            return (
                f"--mode transparent cannot listen on {host}: iptables REDIRECT sends the devices' connections to the "
                "gateway's address on the interface they arrive on, and a loopback listener refuses them. "
                "Leave --listen-host out (transparent mode then listens on every address, IPv4 and IPv6) "
                "or give that interface's address"
            )
    return None


def mitmproxy_options(config: RunConfig) -> dict[str, object]:
    """The mitmproxy option values for a run; pure so tests and docs can show them."""
    options: dict[str, object] = {
        "listen_host": config.listen_host,
        "listen_port": config.listen_port,
        "mode": config.modes,
        "confdir": str(config.confdir),
        "tlsgate_policy": config.policy_paths,
        "tlsgate_findings": config.findings,
        "tlsgate_resolve": config.resolve,
        "tlsgate_metrics_listen": config.metrics_listen,
        # mitmproxy refuses clients from globally routable addresses by default; tlsgate keeps that
        # unless told otherwise, so binding to 0.0.0.0 in a lab never makes an open proxy.
        "block_global": not config.allow_public_clients,
        # Bodies above 1 MiB are streamed, not held whole: an endless chunked response grew RSS to 1.2 GiB
        # and a 64 MiB POST was buffered before its 403. tlsgate's checks read heads and at most 64 KiB of body.
        "stream_large_bodies": "1m",
    }
    if config.proxyauth:
        options["proxyauth"] = config.proxyauth
    if config.upstream_ca:
        options["ssl_verify_upstream_trusted_ca"] = str(config.confdir / "upstream-trust.pem")
    for key, value in (("duration", config.duration), ("until_idle", config.until_idle), ("fail_on", config.fail_on)):
        if value:
            options[f"tlsgate_{key}"] = value
    return options


def _address(host: str, port: int) -> str:
    """HOST:PORT as a device would use it: every-address hosts become a placeholder, IPv6 gets brackets."""
    if host in ("0.0.0.0", "::", ALL_ADDRESSES):
        host = "<this machine's LAN address>"
    elif ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def _listeners(config: RunConfig) -> list[tuple[mode_specs.ProxyMode, str, int]]:
    """(mode, listen host, port) for each parsable --mode (mitmproxy reports the others)."""
    from mitmproxy.proxy import mode_specs

    found = []
    for text in config.modes:
        try:
            mode = mode_specs.ProxyMode.parse(text)
        except ValueError:
            continue
        host = mode.custom_listen_host if mode.custom_listen_host is not None else config.listen_host
        port = mode.custom_listen_port if mode.custom_listen_port is not None else config.listen_port
        found.append((mode, host, port))
    return found


def banner(config: RunConfig, ca_cert: Path, fingerprint: str) -> list[str]:
    """What the operator and the devices must do, per mode: only advice that works for the modes that run.

    A proxy setting works only against a regular/socks5/upstream listener; in
    WireGuard-only mode nothing listens on TCP, and in transparent mode a proxy
    setting sends requests to the listener itself (refused as a connection to
    the proxy host), so neither gets a `curl -x` or Wi-Fi-proxy line.
    """
    from mitmproxy import version as mitm_version
    from mitmproxy.proxy import mode_specs

    setting_modes = (mode_specs.RegularMode, mode_specs.UpstreamMode, mode_specs.Socks5Mode)  # a proxy setting works
    policy = config.policy
    lines = [
        f"tlsgate {__version__} on mitmproxy {mitm_version.VERSION}",
        f"policy:   {', '.join(policy.files)} ({policy.rule_count} rules; "
        f"default mode {policy.defaults.mode}, cleartext {policy.defaults.get('cleartext')})",
        f"CA cert:  {ca_cert} (SHA-256 {fingerprint})",
        f"findings: {'(stdout, JSON lines)' if config.findings == '-' else config.findings or '(console only)'}",
        f"metrics:  {f'http://{config.metrics_listen}/metrics' if config.metrics_listen else '(off)'}",
    ]
    listeners = _listeners(config)
    proxies = [(mode, host, port) for mode, host, port in listeners if isinstance(mode, setting_modes)]
    tries: list[str] = []
    for proxy, host, port in proxies:
        scheme = "socks5" if isinstance(proxy, mode_specs.Socks5Mode) else "http"
        lines.append(f"proxy:    {scheme}://{_address(host, port)} ({proxy.full_spec})")
        flag = "--socks5-hostname " if scheme == "socks5" else "-x http://"
        tries.append(f"try:      curl {flag}{_address(host, port)} --cacert {ca_cert} https://example.com/")
    lines += tries[:1]
    if proxies:
        lines += [
            "devices:  set the Wi-Fi proxy to this address and port, open http://mitm.it to install the CA,",
            "          or see `tlsgate ca export --format android`; Flutter/Dart apps ignore the proxy: use --mode wireguard",
        ]
    from tlsgate.app.wireguard import banner_lines

    wireguard = banner_lines(config.modes, config.listen_host, config.confdir)
    lines += wireguard
    if wireguard and not proxies:
        lines.append(
            f"try:      on a device with the tunnel up, no proxy setting: curl --cacert {ca_cert} https://example.com/ "
            "(nothing listens on TCP here)"
        )
    for mode, host, port in listeners:
        if isinstance(mode, mode_specs.TransparentMode):
            lines += _transparent_lines(host, port)
        elif isinstance(mode, mode_specs.DnsMode):
            lines.append(
                f"dns:      UDP {host or '*'}:{port} ({families(host)}); hand this machine's address to the devices as "
                "their DNS server (DHCP option 6, IPv6 RDNSS), so tlsgate learns the name behind each address"
            )
        elif not isinstance(mode, (*setting_modes, mode_specs.WireGuardMode)):
            lines.append(f"listen:   {host or '*'}:{port} ({mode.full_spec})")
    if not is_loopback(config.listen_host):
        guard = (
            "ACCEPTED (--allow-public-clients)" if config.allow_public_clients else "refused, but for this host's LAN prefixes"
        )
        auth = "required" if config.proxyauth else "not required (see --proxyauth)"
        lines.append(f"access:   clients from public addresses {guard}; proxy authentication {auth}")
    return lines


def _transparent_lines(host: str, port: int) -> list[str]:
    lines = [
        f"transparent: TCP {host or '*'}:{port} ({families(host)}) takes the connections a gateway redirects here",
        "gateway:  redirect the devices' TCP here in both families (iptables and ip6tables -t nat -A PREROUTING -i <LAN> "
        f"-p tcp -m addrtype ! --dst-type LOCAL -j REDIRECT --to-ports {port}) and REJECT their udp/443 in both; "
        "see the docs, Transparent mode on a gateway (docs/get-started/transparent.md)",
        "devices:  no proxy setting (a proxy request to this port is refused): only the CA "
        "(`tlsgate ca export --format android`); their IPv4 and IPv6 default routes must lead through this gateway",
    ]
    if families(host) == "IPv4 only":
        lines.append(
            f"          IPv4 only (--listen-host {host}): IPv6 the gateway redirects here finds no listener and fails; "
            "leave --listen-host out to take both, or keep IPv6 from the devices"
        )
    return lines


def run_proxy(config: RunConfig) -> int:
    from tlsgate.app.master import dropped_option_problem
    from tlsgate.app.paths import new_ca_warning
    from tlsgate.tls.ca import CAError, ensure_ca
    from tlsgate.tls.trust import TrustError, build_bundle

    if config.worker_index is not None:
        from tlsgate.addons.mitm_internals import share_listening_port

        share_listening_port()
        os.umask(0o077)
        return asyncio.run(_serve(config))
    problem = dropped_option_problem(config.extra_set) or ports_problem(config)
    if problem:  # before the CA or the banner: nothing is created or announced for a run that cannot start
        print(f"tlsgate: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        info, created = ensure_ca(config.confdir)
        if config.upstream_ca:
            build_bundle(config.upstream_ca, config.confdir / "upstream-trust.pem")
    except (CAError, TrustError) as exc:
        print(f"tlsgate: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    for note in info.notes:
        print(f"tlsgate: {note}", file=sys.stderr)
    if created:
        print(f"created a new CA in {config.confdir}/ (private key mode 0600)")
        warning = new_ca_warning(config.confdir)
        if warning:
            print(warning, file=sys.stderr)
    if config.workers > 1:
        return _run_workers(config, info.paths.cert_pem, info.sha256_fingerprint)
    announce = banner(config, info.paths.cert_pem, info.sha256_fingerprint)
    # From here on every file tlsgate or mitmproxy creates (a `--set hardump=` or `save_stream_file=` capture
    # holds every secret the apps sent) is the owner's only. The CA files were written above with their own modes.
    os.umask(0o077)
    return asyncio.run(_serve(config, announce))


def ports_problem(config: RunConfig) -> str | None:
    """A taken proxy or metrics port, said in tlsgate's words (mitmproxy's hint names its own `--mode` syntax)."""
    wanted = [("--listen-port", config.listen_host, config.listen_port)]
    if config.metrics_listen:
        metrics_host, _, metrics_port = config.metrics_listen.rpartition(":")
        wanted.append(("--metrics-port", metrics_host, int(metrics_port)))
    for flag, host, port in wanted:
        if port == 0 or config.worker_index is not None:
            continue  # a free port is picked; workers share theirs through SO_REUSEPORT
        error = bind_error(host, port)
        if error:
            other = "--listen-host" if flag == "--listen-port" else "--metrics-host"
            return (
                f"cannot listen on {host or '*'}:{port} ({error}): another tlsgate or mitmproxy may be running; "
                f"stop it, or choose another port with {flag} (or address with {other})"
            )
    return None


def bind_error(host: str, port: int) -> str | None:
    """Why `host:port` cannot be bound now, or None; "" (every address) is probed in both families, as it binds."""
    import errno
    import socket

    if host == ALL_ADDRESSES:
        probes = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    else:
        probes = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
    for family, address in probes:
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this machine: mitmproxy binds IPv4 only, and so it is not a conflict
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real listener: TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's listener
            try:
                probe.bind((address, port))
            except OSError as exc:
                if host == ALL_ADDRESSES and exc.errno == errno.EADDRNOTAVAIL:
                    continue
                return exc.strerror or str(exc)
    return None


def worker_argv(config: RunConfig, index: int, port: int, metrics_port: int | None) -> list[str]:
    """The `tlsgate run` command line for one worker: the same options, one shared port, its own metrics port."""
    argv = ["run", "--listen-host", config.listen_host, "--listen-port", str(port), "--confdir", str(config.confdir)]
    argv += ["--findings", config.findings, "--worker-index", str(index)]
    for path in config.policy_paths:
        argv += ["--policy", path]
    for mode in config.modes:
        argv += ["--mode", mode]
    for ca_path in config.upstream_ca:
        argv += ["--upstream-ca", str(ca_path)]
    for spec in config.resolve:
        argv += ["--resolve", spec]
    # --proxyauth reaches the workers through the environment (TLSGATE_PROXYAUTH), never their command lines.
    if config.allow_public_clients:
        argv.append("--allow-public-clients")
    if metrics_port is None:
        argv += ["--metrics-port", "-1"]
    else:
        argv += ["--metrics-host", config.metrics_listen.rpartition(":")[0], "--metrics-port", str(metrics_port)]
    for item in config.extra_set:
        argv += ["--set", item]
    return argv


def _run_workers(config: RunConfig, ca_cert: Path, fingerprint: str) -> int:
    from tlsgate.app.workers import pick_port, supervise

    port = config.listen_port or pick_port(config.listen_host)
    base = int(config.metrics_listen.rpartition(":")[2]) if config.metrics_listen else None
    argvs = [worker_argv(config, i, port, None if base is None else (base + i if base else 0)) for i in range(config.workers)]
    shown = RunConfig(**{**config.__dict__, "listen_port": port})
    for line in banner(shown, ca_cert, fingerprint):
        print(line)
    metrics = "off" if base is None else f"ports {base}-{base + config.workers - 1}" if base else "a free port each"
    print(f"workers:  {config.workers} processes sharing port {port} (SO_REUSEPORT); metrics on {metrics}")
    sys.stdout.flush()
    if config.proxyauth:
        os.environ["TLSGATE_PROXYAUTH"] = config.proxyauth  # inherited by the workers, not shown in `ps`
    return supervise(argvs)


def build_master(opts: options.Options) -> LeanMaster:
    """The master `tlsgate run` serves with: mitmproxy's add-ons a run uses (tlsgate/app/master.py), then tlsgate's."""
    from tlsgate.app.master import LeanMaster

    master = LeanMaster(opts)
    # mitmdump's per-flow lines (flow_detail, dumper_filter), redacted; not in make_addons(), because
    # `mitmdump -s "$(tlsgate script-path)"` has mitmproxy's own Dumper already.
    master.addons.add(*make_addons(), ConsoleFlows())
    return master


async def _serve(config: RunConfig, announce: list[str] | None = None) -> int:
    from mitmproxy import exceptions, options

    logging.getLogger().setLevel(logging.DEBUG)  # as mitmdump does; termlog_verbosity filters what is shown
    for name in ("tornado", "asyncio", "hpack", "quic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    opts = options.Options()
    master = build_master(opts)
    try:
        opts.update(**mitmproxy_options(config))
        if config.extra_set:
            opts.set(*config.extra_set)
    except exceptions.OptionsError as exc:
        print(f"tlsgate: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    for line in announce or []:  # only once every option was accepted
        print(line)
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        await master.run()
    except SystemExit as exc:
        if exc.code == 1:  # mitmproxy's errorcheck add-on on a start-up error (port in use, ...): not a verdict
            return exitcodes.USAGE
        raise
    lifetime = master.addons.get("lifetime")
    return lifetime.exit_code if lifetime is not None else 0
