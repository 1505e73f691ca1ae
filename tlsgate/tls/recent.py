"""The one bounded memory of "seen before": at most `limit` keys, the least recently seen forgotten first.

tlsgate runs for days beside a device farm, and every "say it once" table is
keyed by what clients send (addresses, host names, fingerprints), so each must
be bounded. They were written one by one with different rules (forget the
oldest inserted, forget the least recently seen, never forget); this is the
one rule, so what a long run still remembers is the same everywhere: what was
seen most recently.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator


class Recent[K: Hashable, V]:
    """A mapping of at most `limit` entries; using a key (`get`, `put`) makes it the most recent.

    When a new key would pass the limit, the least recently used one is dropped,
    and handed to `forget(key, value)` first when the owner must act on it
    (`tlsgate.sinks.findings.Repeats` writes what it was still only counting).
    """

    def __init__(self, limit: int, forget: Callable[[K, V], None] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._forget = forget
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value for `key` (now the most recent), None when it was never seen or has been forgotten."""
        value = self._entries.get(key)
        if value is not None or key in self._entries:
            self._entries.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The value for `key` without making it recent: reading a memory is not using the entry."""
        return self._entries.get(key)

    def pop(self, key: K) -> V | None:
        """Forget `key` now (without `forget`): its owner is done with it."""
        return self._entries.pop(key, None)

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            old_key, old_value = self._entries.popitem(last=False)
            if self._forget is not None:
                self._forget(old_key, old_value)

    def __contains__(self, key: object) -> bool:
        """Whether `key` is remembered; asking does not make it recent."""
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """The keys, least recent first (a copy: the owner may use entries while walking them)."""
        return iter(list(self._entries))

    def values(self) -> Iterator[V]:
        return iter(list(self._entries.values()))


class Once[K: Hashable]:
    """Keys already said: `first(key)` is True once per key, until the key is forgotten (`Recent`'s one rule)."""

    def __init__(self, limit: int) -> None:
        self._seen: Recent[K, bool] = Recent(limit)

    def first(self, key: K) -> bool:
        """True the first time `key` is seen (it is remembered from now on); False while it is remembered."""
        if self._seen.get(key) is not None:
            return False
        self._seen.put(key, True)
        return True

    def __len__(self) -> int:
        return len(self._seen)
