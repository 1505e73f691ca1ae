"""A gRPC call's request body judged message by message as it streams (bidirectional calls work behind tlsgate).

mitmproxy buffers a request body until the app half-closes it; a bidirectional
call (Firestore's Listen) keeps its side open while it waits for answers, so
buffered it hangs until its deadline. A gRPC call's body is therefore streamed
from its headers on (the server gets the call at once, its answers flow back
while the app still sends), and `GrpcCall` is its stream callable: each
length-prefixed message is cut out as its last byte arrives
(`tlsgate.payload.grpc.Splitter`), judged, and only then forwarded; a message
never reaches the server before its verdict. A message that must be blocked,
and everything after it, goes nowhere: the add-on cuts the call
(`tlsgate.addons.payload.GrpcCall`, `mitm_internals.hold_request_body`).

Work: judging runs for at most `SLICE` per turn of the event loop. grpcio sends
each message in a DATA frame of its own, and one socket read carries thousands
of them; the messages a turn has no time for wait (`pending`), unjudged and
unforwarded, while the app's connection is not read (`pause`),
and are judged a slice per later turn (`wake`: the add-on has mitmproxy's
stream call `resume`, which sends each slice's passed messages on), so every
other connection is served in between. Each message costs at most `payload.max_bytes` (a longer one: its
first `max_bytes`; the rest passes) within the walker's limits.

Memory per call: one incomplete message held between chunks (at most
`max_bytes` plus its 5-byte header), plus the messages waiting for a slice: at
most what mitmproxy had read from the app when reading paused (its read of
64 KiB and asyncio's buffer of up to 128 KiB); a client whose reading cannot
pause (HTTP/3, WireGuard: UDP-borne) has its waiting messages judged at once
past `PENDING_LIMIT`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from tlsgate.payload.bounds import Steps
from tlsgate.payload.grpc import Boundaries, Piece, Splitter

SLICE = 0.005  # seconds of judging per turn of the event loop
PENDING_LIMIT = 1 << 20  # bytes waiting for a slice past which they are judged at once (a client read on regardless)


class MessageGate:
    """A gRPC call's request body in (chunks as mitmproxy's `request.stream` callable gets them), its judged and
    passed messages out, in order. `judge(piece)` is True for a refused message; `fail(exc)` hears of a judge
    that raised (refused too); `pause(True/False)` stops and restarts reading from the app; `wake()` asks for a
    later `resume` inside the stream's own event (False: there is no stream any more)."""

    def __init__(
        self,
        limit: int,
        judge: Callable[[Piece], bool],
        fail: Callable[[Exception], None],
        pause: Callable[[bool], object],
        wake: Callable[[], bool],
    ) -> None:
        self.pause = pause
        self.wake = wake
        self.splitter = Splitter(limit)
        self.judge = judge  # True: refused
        self.fail = fail
        self.blocked = False
        self.ended = False
        self.pending: deque[Piece] = deque()  # cut out, not judged yet: waiting for a slice
        self.pending_bytes = 0
        self.out: list[bytes] = []  # at the body's end: what passed and is not handed on yet
        self.messages = 0  # messages judged (tests, benchmarks)
        self.held_peak = 0  # most bytes held at once, incomplete message and pending ones (tests, benchmarks)
        self.deferred = 0  # times judging went on in a later turn of the event loop
        self.answers = Boundaries()  # how far the server's answer went to the app
        self._slice_end: float | None = None
        self._waking = False
        self.paused = False  # reading from the app is paused (back-pressure)

    # -- the app's messages ---------------------------------------------------------------------------

    def __call__(self, chunk: bytes) -> list[bytes] | bytes:
        if self.blocked or not chunk:
            return []  # the end is judged by `finish` (the add-on's request hook, or mitm_internals' `_ending`)
        pieces = self.splitter.feed(chunk)
        if self.pending:  # earlier messages wait for their slice: these wait behind them, in order
            self._wait(pieces)
            if self.pending_bytes <= PENDING_LIMIT:
                return []
            pieces = list(self.pending)  # a client whose reading cannot pause (UDP-borne): judged now, bounded
            self.pending.clear()
            self.pending_bytes = 0
            return self._within_slice(pieces, at_once=True)
        return self._within_slice(pieces)

    def resume(self) -> list[bytes]:
        """Inside the stream's event (`resume_held_body`): the next slice of waiting messages, those that passed."""
        if self.blocked or self.ended:
            return []
        pieces = list(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return self._within_slice(pieces)

    def _within_slice(self, pieces: list[Piece], at_once: bool = False) -> list[bytes]:
        deadline = float("inf") if at_once else self._deadline()
        out: list[bytes] = []
        for position, piece in enumerate(pieces):
            if time.perf_counter() >= deadline:
                self._wait(pieces[position:])
                self._defer()
                break
            if not self._passes(piece):
                break
            out.append(piece.wire)
        if not self.pending:
            self._pause(False)
        self._note_held()
        return out

    def _wait(self, pieces: list[Piece]) -> None:
        self.pending.extend(pieces)
        self.pending_bytes += sum(len(piece.wire) for piece in pieces)
        self._note_held()

    def _note_held(self) -> None:
        self.held_peak = max(self.held_peak, self.splitter.held_bytes + self.pending_bytes)

    def _deadline(self) -> float:
        """The end of this turn's slice: one per turn of the event loop, however many events the turn has."""
        if self._slice_end is None:
            try:
                asyncio.get_running_loop().call_soon(self._new_turn)
            except RuntimeError:  # no event loop (unit tests): judged at once
                return float("inf")
            self._slice_end = time.perf_counter() + SLICE
        return self._slice_end

    def _pause(self, paused: bool) -> None:
        if paused != self.paused:  # most chunks change nothing: the app's connection is not looked up for them
            self.paused = paused
            self.pause(paused)

    def _new_turn(self) -> None:
        self._slice_end = None

    def _defer(self) -> None:
        """The rest waits for a later turn; meanwhile nothing more is read from the app (back-pressure)."""
        if self._waking:
            return
        self._waking = True
        self.deferred += 1
        self._pause(True)
        asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._waking = False
        if self.pending and not (self.blocked or self.ended) and not self.wake():
            self._drop()  # the stream is gone: nothing waits for these any more

    def _passes(self, piece: Piece) -> bool:
        if piece.message is not None:
            try:
                refused = self.judge(piece)
            except Exception as exc:  # noqa: BLE001 - fail closed: a message that could not be judged goes nowhere
                self.fail(exc)
                refused = True
            self.messages += 1
            if refused:
                self.blocked = True
                self._drop()
                return False
        return True

    def _drop(self) -> None:
        self.pending.clear()
        self.pending_bytes = 0
        self.splitter = Splitter(1)  # what is held goes nowhere
        self._pause(False)

    def finish(self) -> None:
        """The body ended: what waits is judged now, and a message it ended inside (the server would refuse it,
        but it must not carry what a whole one may not)."""
        if self.ended or self.blocked:
            return
        self.ended = True
        pieces = [*self.pending, *self.splitter.end()]
        self.pending.clear()
        self.pending_bytes = 0
        for piece in pieces:
            if not self._passes(piece):
                break
            self.out.append(piece.wire)
        self._pause(False)

    def ending(self) -> Steps[None]:
        self.finish()
        yield None

    def flush(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

    # -- the server's answer --------------------------------------------------------------------------

    def response(self, chunk: bytes) -> list[bytes] | bytes:
        """The server's answer's `response.stream` callable: passed on as it comes, its message boundaries noted."""
        self.answers.feed(chunk)
        return chunk
