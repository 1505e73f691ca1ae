"""One dispatch per event: mitmproxy's add-on manager with a table of who handles what.

mitmproxy's `AddonManager.trigger_event` walks the whole add-on chain for every
event: for each of ~60 add-ons it recurses into children, looks the hook name
up with `getattr`, rebuilds the event's argument list from its dataclass fields
and checks whether the result is awaitable. A profile of `tlsgate run` under
new-connection load put that walk at ~30% of the proxy's CPU, more than the TLS
handshakes; most add-ons implement two or three of the ~30 hooks, so almost
all of the walk finds nothing. Each connection also sends an `update` event
per flow event that no add-on of a run handles.

`DispatchTable` computes, per hook name, the handlers in chain order once and
reuses them until the chain changes. The semantics stay mitmproxy's: hooks run
in chain order, children after their parent, errors handled per top-level
add-on as `safecall` does (an error in one is logged as "Addon error" and the
next add-on still runs; `OptionsError` propagates), `AddonHalt`
stops the event, async handlers are awaited. The table is dropped whenever the
chain can change: `add`, `register`, `remove`, `clear`, and every options
change (the script loader reorders its scripts inside `configure`).
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks

logger = logging.getLogger("mitmproxy.addonmanager")  # the logger safecall() writes to, so filters still apply

Handlers = tuple[Callable[..., Any], ...]


class _NotCallable:
    """Stands in for a hook attribute that is not callable, so the error surfaces where mitmproxy's would."""

    def __init__(self, name: str, addon: object) -> None:
        self.message = f"Addon handler {name} ({addon}) not callable"

    def __call__(self, *args: object) -> None:
        raise exceptions.AddonManagerError(self.message)


def handlers_of(top: object, name: str) -> Handlers:
    """The callables `top` and its children (depth first, as mitmproxy's `traverse`) have for hook `name`."""
    found: list[Callable[..., Any]] = []
    for addon in addonmanager.traverse([top]):
        func = getattr(addon, name, None)
        if not func or isinstance(func, types.ModuleType):  # `from mitmproxy import log` is not a log hook
            continue
        found.append(func if callable(func) else _NotCallable(name, addon))
    return tuple(found)


class DispatchTable(addonmanager.AddonManager):
    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._table: dict[str, tuple[Handlers, ...]] = {}

    # -- keeping the table true -------------------------------------------------------------------

    def forget(self) -> None:
        """Drop the table: the next event of each kind looks at the chain afresh."""
        self._table.clear()

    def _configure_all(self, updated: Any) -> None:
        self.forget()
        try:
            super()._configure_all(updated)
        finally:
            self.forget()

    def register(self, addon: Any) -> Any:
        self.forget()
        try:
            return super().register(addon)
        finally:
            self.forget()

    def add(self, *addons: Any) -> None:
        try:
            super().add(*addons)
        finally:
            self.forget()

    def remove(self, addon: Any) -> None:
        self.forget()
        try:
            super().remove(addon)
        finally:
            self.forget()

    def clear(self) -> None:
        try:
            super().clear()
        finally:
            self.forget()

    def handlers(self, name: str) -> tuple[Handlers, ...]:
        """Per top-level add-on that handles `name` (in chain order), its handlers."""
        table = self._table.get(name)
        if table is None:
            table = tuple(found for top in self.chain if (found := handlers_of(top, name)))
            self._table[name] = table
        return table

    # -- dispatch -----------------------------------------------------------------------------------

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        if self.handlers("update") and isinstance(message := event.args()[0], flow.Flow):
            await self.trigger_event(hooks.UpdateHook([message]))

    async def trigger_event(self, event: hooks.Hook) -> None:
        table = self.handlers(event.name)
        if not table:
            return
        args = event.args()
        for funcs in table:
            try:
                for func in funcs:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as error:
                addon_error(error)

    def trigger(self, event: hooks.Hook) -> None:
        table = self.handlers(event.name)
        if not table:
            return
        args = event.args()
        for funcs in table:
            try:
                for func in funcs:
                    if inspect.iscoroutinefunction(func):
                        raise exceptions.AddonManagerError(
                            f"Async handler {event.name} ({func}) cannot be called from sync context"
                        )
                    func(*args)
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as error:
                addon_error(error)


def addon_error(error: Exception) -> None:
    """What mitmproxy's `safecall()` does with an add-on's exception, without a context manager per add-on and
    event (contextlib's generator machinery was the table's largest remaining cost)."""
    tb = addonmanager.cut_traceback(error.__traceback__, "trigger_event")
    tb = addonmanager.cut_traceback(tb, "trigger")
    logger.error(f"Addon error: {error}", exc_info=(type(error), error, tb))
