"""Holds the policy in force and swaps it when its files change.

Polling file stats once a second (as mitmproxy's own script loader does) needs
no extra dependency and works on bind mounts and network filesystems where
inotify does not. A change is applied once it has been stable for one poll, so
an editor's half-written save is not reported as a broken policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from mitmproxy import ctx, exceptions

from tlsgate.policy import Policy, PolicyError, load_policy
from tlsgate.policy.loader import embedded_policy, policy_files
from tlsgate.policy.model import Location, PolicyMessage

logger = logging.getLogger("tlsgate.policy")

ReloadListener = Callable[[str, "Policy | None"], None]


def policy_paths(option: Sequence[str]) -> list[str]:
    return list(option) if option else [str(embedded_policy())]


Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """What changes when any policy file is edited, added or removed.

    `stat` follows symlinks, so a Kubernetes ConfigMap update (the kubelet writes new files and swaps the
    volume's `..data` symlink; `app.yaml -> ..data/app.yaml` itself never changes) is seen through the
    link. The inode is part of it because a swapped-in file can have the old one's size and mtime:
    `cleartext: block` -> `allow` is the same length, and archives and `rsync -a` carry mtimes over.
    """
    files, _ = policy_files(paths)
    out = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        out.append((str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev))
    return tuple(out)


class PolicyStore:
    def __init__(self) -> None:
        self.policy: Policy | None = None
        self.paths: list[str] = []
        self.loaded_at: float | None = None
        self._loaded_print: Fingerprint = ()
        self._last_seen: Fingerprint = ()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[ReloadListener] = []

    def load(self, loader) -> None:
        loader.add_option(
            "tlsgate_policy",
            Sequence[str],
            [],
            "tlsgate policy files or directories of *.yaml files (merged). Empty: the embedded default policy.",
        )
        loader.add_option(
            "tlsgate_policy_reload",
            float,
            1.0,
            "Seconds between checks of the policy files for changes; 0 turns hot reload off.",
        )

    def subscribe(self, listener: ReloadListener) -> None:
        """Called with ("ok", policy) or ("failed", None) on every load attempt."""
        self._listeners.append(listener)

    def configure(self, updated: set[str]) -> None:
        if "tlsgate_policy" in updated:
            paths = policy_paths(ctx.options.tlsgate_policy)
            try:
                policy = load_policy(paths)
            except PolicyError as exc:
                raise exceptions.OptionsError(f"invalid tlsgate policy:\n{exc}") from None
            self.paths = paths
            self._install(policy, fingerprint(paths))
        if "tlsgate_policy_reload" in updated and ctx.options.tlsgate_policy_reload < 0:
            raise exceptions.OptionsError("tlsgate_policy_reload must be 0 (off) or a number of seconds")

    def running(self) -> None:
        if ctx.options.tlsgate_policy_reload > 0 and self._task is None:
            self._task = asyncio.create_task(self._watch(), name="tlsgate policy reload")

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.tlsgate_policy_reload)
            try:
                current = self._due()
                if current is not None:
                    # Off the event loop: a 100,000-rule policy takes seconds to load, and traffic must not stall.
                    self._apply(current, await asyncio.to_thread(self._try_load))
            except Exception:  # a watcher that dies silently would freeze the policy forever
                logger.exception("tlsgate: policy reload check failed")

    def check_reload(self) -> bool:
        """Reload if the files changed and have stayed unchanged for one poll. True when a load was tried."""
        current = self._due()
        if current is None:
            return False
        self._apply(current, self._try_load())
        return True

    def _due(self) -> Fingerprint | None:
        """The files' new fingerprint when they changed and then held still for one poll."""
        current = fingerprint(self.paths)
        stable = current == self._last_seen
        self._last_seen = current
        if current == self._loaded_print or not stable:
            return None
        return current

    def _try_load(self) -> Policy | PolicyError:
        try:
            return load_policy(self.paths)
        except PolicyError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - the loader has its own boundary; this is the last one
            logger.debug("tlsgate: policy reload raised", exc_info=exc)
            return PolicyError([PolicyMessage(Location(self.paths[0], 1, 1), f"could not load ({type(exc).__name__})")])

    def _apply(self, current: Fingerprint, result: Policy | PolicyError) -> None:
        if isinstance(result, PolicyError):
            self._loaded_print = current  # report each broken state once, not every second
            for message in result.messages:
                logger.error(f"tlsgate: policy reload failed: {message}")
            since = time.strftime("%H:%M:%S", time.localtime(self.loaded_at)) if self.loaded_at else "start"
            logger.error(f"tlsgate: keeping the last good policy (in force since {since}); fix the file and save again")
            self._notify("failed", None)
            return
        self._install(result, current)
        logger.warning(f"tlsgate: policy reloaded: {result.rule_count} rules from {', '.join(result.files)}")

    def _install(self, policy: Policy, print_: Fingerprint) -> None:
        self.policy = policy
        self.loaded_at = time.time()
        self._loaded_print = print_
        self._last_seen = print_
        for warning in policy.warnings:
            logger.warning(f"tlsgate: policy {warning}")
        self._notify("ok", policy)

    def _notify(self, result: str, policy: Policy | None) -> None:
        for listener in self._listeners:
            listener(result, policy)
