"""A simulated network for end-to-end tests of the gateway modes: device <-> gateway <-> upstream, in namespaces.

Built from `ip netns` and veth pairs, so the device's packets really cross a
router: transparent mode needs iptables REDIRECT on the gateway's forwarding
path, WireGuard mode a tunnel endpoint the device reaches over a link. The
iptables rules and forwarding (IPv4 and IPv6) live inside the gateway namespace;
the host's own network is never touched.

    device (10.231.1.2) -- dev0 ==== gw-dev (10.231.1.1) gateway gw-up (10.231.2.1) ==== up0 -- upstream (10.231.2.10..)
           (fd00:231:1::2)            (fd00:231:1::1)           (fd00:231:2::1)              (fd00:231:2::10..)

The LAN is dual-stack as a phone's Wi-Fi usually is: the device has an IPv6
default route via the gateway (what a router advertisement would give it), so
anything a recipe leaves on IPv6 is routed straight to the upstream, around
tlsgate, exactly as on a real LAN. Addresses are ULA (fd00::/8) and added
without duplicate address detection, so they work at once.

A device's resolver is `/etc/netns/<ns>/resolv.conf` (`set_resolver`), which
`ip netns exec` mounts over /etc/resolv.conf: a recipe that writes
/etc/resolv.conf inside the namespace writes that file. `close()` removes it.

Namespace names carry the test process's pid and a sequence number
(`tg<pid>n<seq>dev`, ...), so parallel runs and several networks in one process
never collide, and `remove_stale()` deletes the ones whose process has died
(a test adding its own namespace names it `<net.tag>...` to be cleaned up too). Addresses can repeat across runs: each set of namespaces is its own world.
Servers inside the upstream namespace run in this process (`bound_in`): a socket
keeps the namespace it was created in, so their counters are plain attributes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "tg"
NETNS_DIR = Path("/run/netns")
_NAME = re.compile(rf"^{PREFIX}(\d+)(?:n\d+)?[a-z]+\d*$")  # tg<pid>n<seq>dev, ... and extras a test adds
_built = itertools.count(1)

DEVICE_NET = "10.231.1"
UPSTREAM_NET = "10.231.2"
DEVICE_IP = f"{DEVICE_NET}.2"
GATEWAY_DEVICE_SIDE = f"{DEVICE_NET}.1"
GATEWAY_UPSTREAM_SIDE = f"{UPSTREAM_NET}.1"
UPSTREAM_SUBNET = f"{UPSTREAM_NET}.0/24"
DEVICE_NET6 = "fd00:231:1::"
UPSTREAM_NET6 = "fd00:231:2::"
DEVICE_IP6 = f"{DEVICE_NET6}2"
GATEWAY_DEVICE_SIDE6 = f"{DEVICE_NET6}1"
GATEWAY_UPSTREAM_SIDE6 = f"{UPSTREAM_NET6}1"
UPSTREAM_SUBNET6 = f"{UPSTREAM_NET6}/64"
ETC_NETNS = Path("/etc/netns")


def ip6_of(address: str) -> str:
    """The upstream host's IPv6 address beside its IPv4 one: 10.231.2.12 -> fd00:231:2::12 (same digits)."""
    net, _, host = address.rpartition(".")
    if net != UPSTREAM_NET:
        raise ValueError(f"{address} is not an upstream address")
    return f"{UPSTREAM_NET6}{host}"


class NetnsUnavailable(RuntimeError):
    """The kernel (or the container around this process) refuses network namespaces."""


def ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete namespaces left by killed test runs (their pid is gone); running runs keep theirs."""
    removed = []
    listing = ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        found = _NAME.match(name)
        if found and not _alive(int(found.group(1))):
            ip("netns", "delete", name, check=False)
            removed.append(name)
    if ETC_NETNS.is_dir():
        for folder in ETC_NETNS.iterdir():
            found = _NAME.match(folder.name)
            if found and not _alive(int(found.group(1))):
                _remove_etc(folder.name)
    return removed


def _remove_etc(name: str) -> None:
    """Drop /etc/netns/<name>/ (a resolver file a test wrote), and /etc/netns itself once nothing is left in it."""
    folder = ETC_NETNS / name
    with contextlib.suppress(FileNotFoundError):
        for item in folder.iterdir():
            item.unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        folder.rmdir()
    with contextlib.suppress(FileNotFoundError, OSError):  # another test's folder still in it: keep it
        ETC_NETNS.rmdir()


@dataclass
class Network:
    """Three namespaces and the links between them; `close()` removes everything it made."""

    tag: str
    upstream_ips: tuple[str, ...]
    upstream_ips6: tuple[str, ...] = ()
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return f"{self.tag}dev"

    @property
    def gateway(self) -> str:
        return f"{self.tag}gw"

    @property
    def upstream(self) -> str:
        return f"{self.tag}up"

    # -- running things --------------------------------------------------------------------------

    def run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 30, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and done.returncode != 0:
            raise RuntimeError(f"[{ns}] {' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def spawn(self, ns: str, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """A long-running process in `ns`, stopped by `close()`."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def netns_command(self, ns: str, cmd: Sequence[str]) -> list[str]:
        """`cmd` wrapped to run inside `ns`, for tools that take a whole command line (harness.Tlsgate)."""
        return ["ip", "netns", "exec", ns, *cmd]

    @contextlib.contextmanager
    def entered(self, ns: str) -> Iterator[None]:
        """Run this thread inside `ns`: sockets created here belong to it for life."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(NETNS_DIR / ns, os.O_RDONLY)
        try:
            os.setns(target, os.CLONE_NEWNET)
            yield
        finally:
            os.setns(own, os.CLONE_NEWNET)
            os.close(target)
            os.close(own)

    def wait_port(self, ns: str, host: str, port: int, timeout: float = 20) -> None:
        """Wait until a TCP port in `ns` accepts connections."""
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while time.monotonic() < deadline:
            with self.entered(ns), socket.socket() as probe:
                probe.settimeout(1)
                try:
                    probe.connect((host, port))
                    return
                except OSError as exc:
                    last = exc
            time.sleep(0.1)
        raise AssertionError(f"nothing listens on {host}:{port} in {ns} after {timeout}s ({last})")

    def wait_udp_bound(self, ns: str, port: int, timeout: float = 20) -> None:
        """Wait until some process in `ns` has bound UDP `port` (`ss`; UDP has no handshake to probe)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f":{port} " in self.run(ns, "ss", "-Hlun").stdout + " ":
                return
            time.sleep(0.1)
        raise AssertionError(f"nothing bound UDP {port} in {ns} after {timeout}s")

    def iptables(self, *rule: str) -> None:
        self.run(self.gateway, "iptables", "-w", "5", *rule)

    def ip6tables(self, *rule: str) -> None:
        self.run(self.gateway, "ip6tables", "-w", "5", *rule)

    def set_resolver(self, ns: str, text: str) -> Path:
        """`ns`'s /etc/resolv.conf (what DHCP or a VPN client would write); programs started after this read it."""
        folder = ETC_NETNS / ns
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "resolv.conf"
        path.write_text(text)
        return path

    # -- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for name in reversed(self.created):  # deleting a namespace deletes its links and ip(6)tables rules
            ip("netns", "delete", name, check=False)
            _remove_etc(name)


def build(upstream_hosts: int = 6) -> Network:
    """Create the namespaces and links; raises NetnsUnavailable only when `ip netns add` itself is refused."""
    remove_stale()
    tag = f"{PREFIX}{os.getpid()}n{next(_built)}"
    addresses = tuple(f"{UPSTREAM_NET}.{10 + i}" for i in range(upstream_hosts))
    net = Network(tag, addresses, tuple(ip6_of(a) for a in addresses))
    for name in (net.device, net.gateway, net.upstream):
        ip("netns", "delete", name, check=False)  # a leftover of a killed run whose pid is this one again
    first = ip("netns", "add", net.device, check=False)
    if first.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` refused: {first.stderr.strip()}")
    net.created.append(net.device)
    try:
        for name in (net.gateway, net.upstream):
            ip("netns", "add", name)
            net.created.append(name)
        ip("link", "add", "dev0", "netns", net.device, "type", "veth", "peer", "name", "gw-dev", "netns", net.gateway)
        ip("link", "add", "up0", "netns", net.upstream, "type", "veth", "peer", "name", "gw-up", "netns", net.gateway)
        for ns, link in ((net.device, "dev0"), (net.gateway, "gw-dev"), (net.gateway, "gw-up"), (net.upstream, "up0")):
            net.run(ns, "ip", "link", "set", link, "up")
        for ns in (net.device, net.gateway, net.upstream):
            net.run(ns, "ip", "link", "set", "lo", "up")
        net.run(net.device, "ip", "addr", "add", f"{DEVICE_IP}/24", "dev", "dev0")
        net.run(net.device, "ip", "route", "add", "default", "via", GATEWAY_DEVICE_SIDE)
        net.run(net.gateway, "ip", "addr", "add", f"{GATEWAY_DEVICE_SIDE}/24", "dev", "gw-dev")
        net.run(net.gateway, "ip", "addr", "add", f"{GATEWAY_UPSTREAM_SIDE}/24", "dev", "gw-up")
        for address in net.upstream_ips:
            net.run(net.upstream, "ip", "addr", "add", f"{address}/24", "dev", "up0")
        net.run(net.upstream, "ip", "route", "add", "default", "via", GATEWAY_UPSTREAM_SIDE)
        # IPv6 beside it, as on a dual-stack Wi-Fi: `nodad` makes each address usable at once.
        net.run(net.device, "ip", "-6", "addr", "add", f"{DEVICE_IP6}/64", "dev", "dev0", "nodad")
        net.run(net.device, "ip", "-6", "route", "add", "default", "via", GATEWAY_DEVICE_SIDE6)  # as an RA would
        net.run(net.gateway, "ip", "-6", "addr", "add", f"{GATEWAY_DEVICE_SIDE6}/64", "dev", "gw-dev", "nodad")
        net.run(net.gateway, "ip", "-6", "addr", "add", f"{GATEWAY_UPSTREAM_SIDE6}/64", "dev", "gw-up", "nodad")
        for address in net.upstream_ips6:
            net.run(net.upstream, "ip", "-6", "addr", "add", f"{address}/64", "dev", "up0", "nodad")
        net.run(net.upstream, "ip", "-6", "route", "add", "default", "via", GATEWAY_UPSTREAM_SIDE6)
        net.run(net.gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    except BaseException:
        net.close()
        raise
    return net
