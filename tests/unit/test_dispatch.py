"""The dispatch table delivers every event exactly as mitmproxy's AddonManager does, only without the walk."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from mitmproxy import addonmanager, exceptions, hooks, master, options
from mitmproxy import log as mitmproxy_log
from mitmproxy.proxy import server_hooks
from mitmproxy.test import tflow

from tlsgate.app.dispatch import DispatchTable
from tlsgate.app.master import LeanMaster
from tlsgate.app.runner import build_master


class Recorder:
    """Appends (name, hook, args) to a shared log; one flavour per kind of handler mitmproxy accepts."""

    def __init__(self, name: str, log: list[tuple[str, str]], *, fail: bool = False, halt: bool = False) -> None:
        self.name, self.log, self.fail, self.halt = name, log, fail, halt
        self.children: list[Any] = []

    @property
    def addons(self) -> list[Any]:
        return self.children

    def client_connected(self, client: Any) -> None:
        self.log.append((self.name, "client_connected"))
        if self.fail:
            raise ValueError("boom")
        if self.halt:
            raise exceptions.AddonHalt()

    async def request(self, flow: Any) -> None:
        await asyncio.sleep(0)
        self.log.append((self.name, "request"))

    def running(self) -> None:
        self.log.append((self.name, "running"))


class SyncReturningAwaitable:
    """A sync handler that returns a coroutine: mitmproxy awaits it, so must the table."""

    name = "returns_awaitable"
    log_ = mitmproxy_log  # a module attribute that is not a hook: skipped, not an error

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.record = log

    def request(self, flow: Any) -> Any:
        async def later() -> None:
            self.record.append((self.name, "request"))

        return later()


def chain(log: list[tuple[str, str]], *, fail: str = "", halt: str = "") -> list[Any]:
    parent = Recorder("parent", log, fail=fail == "parent")
    parent.children = [Recorder("child1", log, fail=fail == "child1"), Recorder("child2", log)]
    parent.children[0].children = [Recorder("grandchild", log)]
    return [Recorder("first", log, halt=halt == "first"), parent, SyncReturningAwaitable(log), Recorder("last", log)]


async def deliver(manager_type: type[addonmanager.AddonManager], **chain_args: str) -> list[tuple[str, str]]:
    log: list[tuple[str, str]] = []
    m = master.Master(options.Options())
    if manager_type is not addonmanager.AddonManager:
        m.options.changed.disconnect(m.addons._configure_all)
        m.addons = manager_type(m)
    m.addons.add(*chain(log, **chain_args))
    log.clear()  # what loading did is not the question
    await m.addons.handle_lifecycle(server_hooks.ClientConnectedHook(tflow.tclient_conn()))
    await m.addons.handle_lifecycle(hooks.UpdateHook([]))
    await m.addons.trigger_event(hooks.RunningHook())
    m.addons.trigger(hooks.RunningHook())
    from mitmproxy.proxy.layers.http import HttpRequestHook

    await m.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
    m._legacy_log_events.uninstall()  # its log handler belongs to this master's loop
    return log


@pytest.mark.parametrize("variant", [{}, {"fail": "parent"}, {"fail": "child1"}, {"halt": "first"}])
def test_same_handlers_same_order_same_errors_as_mitmproxy(variant: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    async def both() -> tuple[list[tuple[str, str]], list[str], list[tuple[str, str]], list[str]]:
        theirs = await deliver(addonmanager.AddonManager, **variant)
        their_errors = [r.getMessage() for r in caplog.records]
        caplog.clear()
        ours = await deliver(DispatchTable, **variant)
        return theirs, their_errors, ours, [r.getMessage() for r in caplog.records]

    caplog.set_level(logging.ERROR)
    theirs, their_errors, ours, our_errors = asyncio.run(both())
    assert ours == theirs
    assert our_errors == their_errors
    assert ("first", "client_connected") in ours
    assert ("returns_awaitable", "request") in ours  # an awaitable returned by a sync handler is awaited


def test_an_addon_added_or_removed_later_is_seen_by_the_next_event() -> None:
    async def go() -> list[tuple[str, str]]:
        log: list[tuple[str, str]] = []
        m = master.Master(options.Options())
        m.options.changed.disconnect(m.addons._configure_all)
        m.addons = table = DispatchTable(m)
        first = Recorder("first", log)
        table.add(first)
        table.trigger(hooks.RunningHook())  # the table now holds `running`: [first]
        late = Recorder("late", log)
        table.add(late)
        table.trigger(hooks.RunningHook())
        table.remove(first)
        table.trigger(hooks.RunningHook())
        child = Recorder("registered", log)
        late.children.append(table.register(child))  # how the script loader adds a script's add-on
        table.trigger(hooks.RunningHook())
        late.children.reverse()  # a reorder inside configure: the options change that caused it drops the table
        m.options.update(listen_port=1234)
        table.trigger(hooks.RunningHook())
        return log

    assert asyncio.run(go()) == [
        ("first", "running"),
        ("first", "running"),
        ("late", "running"),
        ("late", "running"),
        ("late", "running"),
        ("registered", "running"),
        ("late", "running"),
        ("registered", "running"),
    ]


def test_a_non_callable_hook_attribute_is_an_error_per_event_as_in_mitmproxy(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        running = 42

    async def go() -> None:
        m = master.Master(options.Options())
        m.options.changed.disconnect(m.addons._configure_all)
        m.addons = DispatchTable(m)
        m.addons.add(Broken())
        await m.addons.trigger_event(hooks.RunningHook())

    caplog.set_level(logging.ERROR)
    asyncio.run(go())
    assert any("not callable" in r.getMessage() for r in caplog.records)


def test_the_run_master_dispatches_through_the_table_and_skips_unhandled_updates() -> None:
    async def go() -> tuple[LeanMaster, int, int]:
        m = build_master(options.Options())
        assert isinstance(m.addons, DispatchTable)
        # Exactly one manager listens to option changes: the replaced one would configure termlog twice.
        listeners = [r() for r in m.options.changed.receivers]
        assert [getattr(r, "__self__", None) for r in listeners].count(m.addons) == 1
        assert not any(
            isinstance(getattr(r, "__self__", None), addonmanager.AddonManager) and r.__self__ is not m.addons for r in listeners
        )
        return m, len(m.addons.handlers("update")), len(m.addons.handlers("request"))

    m, updates, requests = asyncio.run(go())
    assert updates == 0  # no add-on of a run handles `update`: the per-flow UpdateHook is never built
    assert requests >= 5  # tlsgate's request checks and mitmproxy's own are all in the table


def test_log_records_reach_an_add_log_hook_only_when_an_addon_has_one() -> None:
    """The deprecated add_log bridge costs a format and a loop wake-up per record: only paid while someone listens."""

    class Legacy:
        def __init__(self) -> None:
            self.entries: list[str] = []

        def add_log(self, entry: Any) -> None:
            self.entries.append(entry.msg)

    async def go() -> tuple[bool, list[str]]:
        m = build_master(options.Options())
        try:
            bridge = m._legacy_log_events
            record = logging.LogRecord("tlsgate.test", logging.WARNING, __file__, 1, "nobody listens", (), None)
            unheard = bridge.handle(record)
            legacy = Legacy()
            m.addons.add(legacy)
            logging.getLogger("tlsgate.test").warning("a script's add_log hears this")
            for _ in range(5):  # the bridge delivers through call_soon_threadsafe
                await asyncio.sleep(0)
            return unheard, legacy.entries
        finally:
            m._legacy_log_events.uninstall()
            if m._termlog_addon:
                m._termlog_addon.uninstall()

    unheard, entries = asyncio.run(go())
    assert unheard is False
    assert any("a script's add_log hears this" in e for e in entries)
