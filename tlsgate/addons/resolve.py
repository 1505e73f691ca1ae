"""Points host names at other addresses, like curl's --resolve.

Device labs send apps at staging servers whose names only a lab DNS knows, and
tests need `api.test` to reach a server on 127.0.0.1 without editing
/etc/hosts. Only the TCP destination changes: SNI and certificate checks still
use the name the app asked for, so validation stays as strict as without it.

Only names tlsgate resolves itself can be pointed elsewhere: the targets of
regular, socks5 (with the name, not an address, sent: `curl --socks5-hostname`)
and upstream/reverse modes. In transparent and WireGuard modes the device
resolved the name and connects to an address; there is no name to look up.
A `--resolve` that would do nothing at all is refused at start-up instead of
being silently ignored, and one that covers only some listeners says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mitmproxy import ctx, exceptions
from mitmproxy.proxy import mode_specs, server_hooks

from tlsgate.addons.state import NAMED_TARGETS
from tlsgate.policy.hosts import Redirects, host_only

logger = logging.getLogger("tlsgate.resolve")


def unresolved_modes(specs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(modes where --resolve applies, modes where it cannot): by how each mode learns its target."""
    applies: list[str] = []
    cannot: list[str] = []
    for spec in specs:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy's own option check reports it
        (applies if isinstance(mode, NAMED_TARGETS) else cannot).append(mode.type_name)
    return applies, cannot


def resolve_scope_error(specs: Sequence[str]) -> str | None:
    applies, cannot = unresolved_modes(specs)
    if cannot and not applies:
        return (
            f"tlsgate_resolve (--resolve) does nothing in {', '.join(cannot)} mode: the device resolves names itself "
            "and connects to an address. Give the device the address instead (its DNS, or curl --resolve on a test "
            "device), or add --mode regular / --mode socks5 for clients that let the proxy resolve"
        )
    return None


class Resolve:
    def __init__(self, redirects: Redirects | None = None) -> None:
        self.redirects = redirects if redirects is not None else Redirects()  # shared with `DestinationGuard`

    def load(self, loader) -> None:
        loader.add_option(
            "tlsgate_resolve",
            Sequence[str],
            [],
            "Connect to ADDRESS for HOST:PORT instead of resolving HOST, as curl's --resolve HOST:PORT:ADDRESS. "
            "PORT may be '*'. SNI and certificate validation still use HOST.",
        )

    def configure(self, updated: set[str]) -> None:
        if ("tlsgate_resolve" in updated or "mode" in updated) and ctx.options.tlsgate_resolve:
            error = resolve_scope_error(ctx.options.mode)
            if error:
                raise exceptions.OptionsError(error)
            applies, cannot = unresolved_modes(ctx.options.mode)
            if cannot:
                logger.warning(
                    f"tlsgate: --resolve applies to {', '.join(applies)} clients only; "
                    f"in {', '.join(cannot)} mode the device connects to the address its own DNS gave"
                )
        if "tlsgate_resolve" in updated:
            try:
                self.redirects.load(ctx.options.tlsgate_resolve)
            except ValueError as exc:
                raise exceptions.OptionsError(f"tlsgate_resolve: {exc}") from None

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not self.redirects.table or data.server.address is None:
            return
        host, port = data.server.address[0], data.server.address[1]
        address = self.redirects.mapped(host_only(host), port)
        if address is None:
            return
        if data.server.sni is None:
            data.server.sni = host
        data.server.address = (address, port)
