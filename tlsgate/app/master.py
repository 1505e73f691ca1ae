"""The mitmproxy master `tlsgate run` serves with: DumpMaster minus the add-ons a gate never uses.

mitmproxy hands every event (each connection, TLS handshake, request, response)
to every loaded add-on in turn. DumpMaster loads all of mitmproxy's default
add-ons plus keepserving/readfile, ~34 of them, and a profile of tlsgate under
new-connection load put that dispatch ahead of tlsgate's own checks. Most of
them serve interactive or offline work (replay, map-local, export, ...) that a
proxy run never asks for, so this master loads only what a run, the README and
the tests rely on. Whoever needs a dropped feature keeps it with plain mitmdump:
`mitmdump -s "$(tlsgate script-path)" --set map_local=...` loads tlsgate's
add-ons on top of every default one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mitmproxy import log, master, options
from mitmproxy.addons import (
    blocklist,
    core,
    disable_h2c,
    dns_resolver,
    errorcheck,
    next_layer,
    onboarding,
    proxyauth,
    proxyserver,
    save,
    savehar,
    script,
    strip_dns_https_records,
    termlog,
    tlsconfig,
    update_alt_svc,
    upstream_auth,
)

from tlsgate.addons import access
from tlsgate.app.dispatch import DispatchTable


def kept_addons() -> list[object]:
    """mitmproxy's add-ons a run keeps, in `default_addons()` order (hooks run in this order)."""
    return [
        core.Core(),  # options and commands everything else builds on
        # block_global/block_private, as options only: tlsgate's ClientAccess applies them and takes this host's
        # LAN prefixes as LAN (mitmproxy's check refuses a LAN's global IPv6 devices); 0.0.0.0 is no open proxy
        access.Block(),
        # ECH would hide the real server name from the gate: DNS-mode answers lose their ech keys.
        strip_dns_https_records.StripDnsHttpsRecords(),
        blocklist.BlockList(),  # --set block_list=: refusing by filter is a gate's job too
        disable_h2c.DisableH2C(),  # an h2c upgrade would carry HTTP/2 past the HTTP/1 checks
        onboarding.Onboarding(),  # http://mitm.it/: the README sends users there for the CA
        proxyauth.ProxyAuth(),  # --proxyauth
        proxyserver.Proxyserver(),  # the listeners themselves
        script.ScriptLoader(),  # --set scripts=: extra add-ons (the hostile-client tests inject one)
        dns_resolver.DnsResolver(),  # name resolution for dns/wireguard modes
        next_layer.NextLayer(),  # protocol detection
        save.Save(),  # --set save_stream_file=: a capture the README documents
        savehar.SaveHar(),  # --set hardump=: likewise
        tlsconfig.TlsConfig(),  # certificates and upstream validation, which tlsgate builds on
        upstream_auth.UpstreamAuth(),  # upstream:... mode behind a corporate proxy
        update_alt_svc.UpdateAltSvc(),  # reverse mode: Alt-Svc must name the gate, not the origin
        errorcheck.ErrorCheck(),  # a start-up error (port in use, bad option) exits 1 instead of idling
    ]


# Options of the add-ons left out, each with what it is for; `tlsgate run --set` names the alternative.
# Left out because a proxy run has no use for them: they replay, rewrite or export flows for a person
# at a console (rewriting would also make the gate judge traffic the app did not send).
DROPPED_OPTIONS: dict[str, str] = {
    "anticache": "anticache (strip cache headers)",
    "anticomp": "anticomp (ask servers not to compress)",
    "client_replay": "client replay",
    "client_replay_concurrency": "client replay",
    "command_history": "the console's command history",
    "export_preserve_original_ip": "export (flows as curl/httpie commands)",
    "keepserving": "keepserving (exit after replay or reading a file)",
    "map_local": "map_local (answer from local files)",
    "map_remote": "map_remote (rewrite request URLs)",
    "modify_body": "modify_body (rewrite bodies)",
    "modify_headers": "modify_headers (rewrite headers)",
    "readfile_filter": "reading flows from a file",
    "rfile": "reading flows from a file",
    "server_replay": "server replay",
    "server_replay_extra": "server replay",
    "server_replay_ignore_content": "server replay",
    "server_replay_ignore_host": "server replay",
    "server_replay_ignore_params": "server replay",
    "server_replay_ignore_payload_params": "server replay",
    "server_replay_ignore_port": "server replay",
    "server_replay_kill_extra": "server replay",
    "server_replay_nopop": "server replay",
    "server_replay_refresh": "server replay",
    "server_replay_reuse": "server replay",
    "server_replay_use_headers": "server replay",
    "stickyauth": "stickyauth (replay authorization headers)",
    "stickycookie": "stickycookie (replay cookies)",
}
# Also left out, with no option to ask for them: Browser, Comment, Cut, Export's commands (console
# conveniences) and mitmdump's stdin flow reader.


def dropped_option_problem(settings: Sequence[str]) -> str | None:
    """Why a `--set` cannot work under `tlsgate run`, before mitmproxy's bare "unknown option".

    Names the option, never its value: a header rewrite can carry a token.
    """
    for setting in settings:
        name = setting.split("=", 1)[0].strip()
        if name in DROPPED_OPTIONS:
            return (
                f"--set {name}: tlsgate run leaves out mitmproxy's {DROPPED_OPTIONS[name]}; "
                f'use mitmdump -s "$(tlsgate script-path)" --set {name}=... for {DROPPED_OPTIONS[name]} '
                "with tlsgate's checks"
            )
    return None


class LeanMaster(master.Master):
    """DumpMaster's shape (terminal log, exit 1 on start-up errors) with only `kept_addons()`, and events
    dispatched through a `DispatchTable` instead of a walk over every add-on."""

    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts, with_termlog=False)
        # Master builds a plain AddonManager and subscribes it to option changes: swap both before any add-on loads.
        self.options.changed.disconnect(self.addons._configure_all)
        self.addons = table = DispatchTable(self)
        self._legacy_log_events.uninstall()
        self._legacy_log_events = LegacyLogOnDemand(self, table)
        self._legacy_log_events.install()
        self._termlog_addon = termlog.TermLog()
        self.addons.add(self._termlog_addon, *kept_addons())


class LegacyLogOnDemand(log.LegacyLogEvents):
    """mitmproxy's bridge from Python logging to the deprecated `add_log` hook, only while an add-on has one.

    The bridge formats every log record and wakes the event loop through its
    self-pipe to deliver it, even when nothing handles `add_log` (no add-on of
    a run does; a `scripts=` add-on still may): with a finding per connection
    that was ~1.6% of the proxy's CPU.
    """

    def __init__(self, master: LeanMaster, table: DispatchTable) -> None:
        super().__init__(master)
        self.table = table

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.table.handlers("add_log"):
            return False
        return bool(super().handle(record))
