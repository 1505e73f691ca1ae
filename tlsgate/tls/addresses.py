"""What kind of address a connection is about to reach: the facts the destination check judges.

A proxy that lets a LAN device `CONNECT 127.0.0.1:6379` hands it every service
bound to the proxy host's loopback; `169.254.169.254` is a cloud metadata
service. Squid refuses `to_localhost` by default for the same reason.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket

LOCAL_KINDS = ("loopback", "link_local", "unspecified", "proxy_host")


def address_kind(address: str) -> str | None:
    """`loopback`, `link_local`, `unspecified`, or None for an ordinary address (or not an address at all)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_unspecified:
        return "unspecified"
    return None


@functools.lru_cache(maxsize=1024)
def is_own_address(address: str) -> bool:
    """Whether this host holds `address` on one of its interfaces: only then can a socket be bound to it.

    Asking the kernel beats listing interfaces: it covers every family and
    alias, and answers for the network namespace tlsgate runs in. Cached: the
    answers change only when interfaces do, and a stale True only refuses.
    """
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError as exc:
            return exc.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT)
    return True


def local_kind(address: str) -> str | None:
    """The kind of a destination that is this host or its link (see LOCAL_KINDS), else None."""
    return address_kind(address) or ("proxy_host" if is_own_address(address) else None)
