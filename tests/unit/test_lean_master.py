"""`tlsgate run`'s master loads exactly the mitmproxy add-ons a run needs; a dropped one's option says where it went."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import addons as mitm_addons
from mitmproxy import exceptions, options

from tlsgate.addons import make_addons
from tlsgate.app.master import DROPPED_OPTIONS, LeanMaster, dropped_option_problem, kept_addons
from tlsgate.app.runner import build_master

# mitmproxy's own add-ons under `tlsgate run`, by their mitmproxy names (hook order).
KEPT = [
    "termlog",
    "core",
    "block",
    "stripdnshttpsrecords",
    "blocklist",
    "disableh2c",
    "onboarding",
    "proxyauth",
    "proxyserver",
    "scriptloader",
    "dnsresolver",
    "nextlayer",
    "save",
    "savehar",
    "tlsconfig",
    "upstreamauth",
    "updatealtsvc",
    "errorcheck",
]
DROPPED = [
    "browser",
    "anticache",
    "anticomp",
    "clientplayback",
    "commandhistory",
    "comment",
    "cut",
    "export",
    "serverplayback",
    "mapremote",
    "maplocal",
    "modifybody",
    "modifyheaders",
    "stickyauth",
    "stickycookie",
]


def names(master: LeanMaster) -> list[str]:
    return [type(a).__name__.lower() for a in master.addons.chain]


def test_run_loads_the_kept_mitmproxy_addons_then_tlsgates() -> None:
    async def build() -> list[str]:
        return names(build_master(options.Options()))

    loaded = asyncio.run(build())
    tlsgate = [type(a).__name__.lower() for a in make_addons()] + ["consoleflows"]
    assert loaded == KEPT + tlsgate


def test_kept_and_dropped_cover_every_mitmproxy_default_addon() -> None:
    """A mitmproxy upgrade that adds a default add-on fails here until someone decides whether a run needs it."""
    defaults = sorted(type(a).__name__.lower() for a in mitm_addons.default_addons())
    assert sorted(set(KEPT) - {"termlog", "errorcheck"} | set(DROPPED)) == defaults
    assert [type(a).__name__.lower() for a in kept_addons()] == KEPT[1:]


def test_every_dropped_option_is_mitmproxys_and_absent_from_the_run() -> None:
    """The table names real options of the dropped add-ons (mitmdump has them) that the lean master does not define."""

    async def both() -> tuple[set[str], set[str]]:
        from mitmproxy.tools.dump import DumpMaster

        lean = set(build_master(options.Options()).options.keys())
        dump = set(DumpMaster(options.Options(), with_termlog=False, with_dumper=False).options.keys())
        return lean, dump

    lean, dump = asyncio.run(both())
    assert set(DROPPED_OPTIONS) <= dump
    assert not set(DROPPED_OPTIONS) & lean
    assert dump - lean == set(DROPPED_OPTIONS), "an option went missing without an entry in DROPPED_OPTIONS"


@pytest.mark.parametrize("setting", ["map_local=|~q|/tmp/answers", "server_replay=flows.mitm", "anticache", "rfile = x"])
def test_a_dropped_option_names_the_mitmdump_alternative(setting: str) -> None:
    name = setting.split("=")[0].strip()
    problem = dropped_option_problem(["termlog_verbosity=warn", setting])
    assert problem is not None
    assert problem.startswith(f"--set {name}: tlsgate run leaves out mitmproxy's ")
    assert f'use mitmdump -s "$(tlsgate script-path)" --set {name}=...' in problem
    assert "/tmp/answers" not in problem and "flows.mitm" not in problem  # the value may be a secret: never echoed


def test_kept_options_pass_and_still_configure() -> None:
    kept = ["block_global=false", "scripts=x.py", "save_stream_file=cap.mitm", "hardump=cap.har", "block_list=/~q/444"]
    assert dropped_option_problem(kept) is None

    async def configure() -> None:
        master = build_master(options.Options())
        master.options.set("onboarding_host=mitm.it", "proxyauth=user:pass", "block_list=/~q/444")
        with pytest.raises(exceptions.OptionsError, match="map_local"):
            master.options.set("map_local=|~q|/tmp")  # what the runner's own message pre-empts

    asyncio.run(configure())
