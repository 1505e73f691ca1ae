"""Points host names at other addresses, like curl's --resolve.

Device labs send apps at staging servers whose names only a lab DNS knows, and
tests need `api.test` to reach a server on 127.0.0.1 without editing
/etc/hosts. Only the TCP destination changes: SNI and certificate checks still
use the name the app asked for, so validation stays as strict as without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from mitmproxy import ctx, exceptions
from mitmproxy.proxy import server_hooks

from proxy.policy.hosts import host_only, parse_resolve

ResolveTable = dict[tuple[str, int | None], str]


class Resolve:
    def __init__(self) -> None:
        self.table: ResolveTable = {}

    def load(self, loader) -> None:
        loader.add_option(
            "tlsgate_resolve",
            Sequence[str],
            [],
            "Connect to ADDRESS for HOST:PORT instead of resolving HOST, as curl's --resolve HOST:PORT:ADDRESS. "
            "PORT may be '*'. SNI and certificate validation still use HOST.",
        )

    def configure(self, updated: set[str]) -> None:
        if "tlsgate_resolve" in updated:
            table: ResolveTable = {}
            for spec in ctx.options.tlsgate_resolve:
                try:
                    host, port, address = parse_resolve(spec)
                except ValueError as exc:
                    raise exceptions.OptionsError(f"tlsgate_resolve: {exc}") from None
                table[(host, port)] = address
            self.table = table

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not self.table or data.server.address is None:
            return
        host, port = data.server.address[0], data.server.address[1]
        name = host_only(host)
        address = self.table.get((name, port)) or self.table.get((name, None))
        if address is None:
            return
        if data.server.sni is None:
            data.server.sni = host
        data.server.address = (address, port)
