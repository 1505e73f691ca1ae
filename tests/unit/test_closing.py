"""A connection tlsgate closes is closed, whatever mitmproxy was doing when the close came.

mitmproxy's ConnectionHandler runs a connection's events one at a time behind
an event lock. Under its eager task factory a hook that completes queues on
that lock, and a client with more bytes buffered reads on and queues behind
it; a close asked for by the hook's event then lands while the client waits
for the lock. Before `mitm_internals.close_connections_however_they_end` that
socket was never closed (the flaky hello-flood test; all of 200 refused
clients left ESTABLISHED for good in tests/live/test_hostile_clients.py).

These tests build that interleaving with mitmproxy's own handler, its NextLayer
and tlsgate's layers on real loopback sockets. The peer's bytes are all in the
kernel before the handler starts reading, and there are more of them than one
of mitmproxy's reads takes, so the order is fixed, not a race; each test first
checks that the close did land in the lock wait, then that the socket really
closed: descriptor released, the peer sees the end, the layers were told.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import commands, events, layer, mode_specs, server, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import tcp
from mitmproxy.test import tflow
from mitmproxy.utils import asyncio_utils

from tlsgate.addons.client_bounds import ClientBounds, HelloGate
from tlsgate.addons.containment import ContainFailures
from tlsgate.addons.findings import FindingsSink
from tlsgate.addons.policy import PolicyStore
from tlsgate.addons.state import Connections
from tlsgate.sinks.metrics import Metrics
from tlsgate.tls.hellometer import HelloMeter

READ = 65535  # what ConnectionHandler.handle_connection reads at a time
PENDING = 100_000  # more than one read: the connection's task reads on without pausing


@pytest.fixture(autouse=True)
def _contained() -> None:
    """The fix is installed the way tlsgate installs it: by loading the containment add-on."""
    ContainFailures(FindingsSink(metrics=Metrics())).load(None)


def queued(sock: socket.socket | Any) -> int:
    """Bytes in a socket's kernel receive queue."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


def outgoing(sock: socket.socket) -> int:
    """Bytes a socket has sent that the peer has not yet acknowledged."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])


def loopback_pair(pending: bytes = b"") -> tuple[socket.socket, socket.socket]:
    """(peer, ours): a TCP connection on loopback, `pending` already in `ours`' receive queue."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # inherited: room for `pending` at once
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        peer = socket.create_connection(listener.getsockname(), timeout=10)
        ours, _ = listener.accept()
    peer.sendall(pending)
    deadline = time.monotonic() + 10
    while queued(ours) < len(pending):
        assert time.monotonic() < deadline, f"only {queued(ours)} of {len(pending)} bytes arrived"
        time.sleep(0.01)
    return peer, ours


def waiting_for_the_lock(task: asyncio.Task[Any] | None) -> bool:
    """The task is suspended in `server_event`, acquiring the handler's event lock (its await chain, innermost last)."""
    names = []
    awaited: Any = task.get_coro() if task is not None else None
    while awaited is not None and hasattr(awaited, "cr_code"):
        names.append(awaited.cr_code.co_name)
        awaited = awaited.cr_await
    return "server_event" in names and names[-1] == "acquire"


def peer_sees_the_end(peer: socket.socket) -> bool:
    peer.settimeout(5)
    try:
        while peer.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


class Handler(server.LiveConnectionHandler):
    """mitmproxy's connection handler; hooks are answered at once, as tlsgate's (synchronous) add-ons answer them.

    `choose` is the next_layer decision for the client's first bytes."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, choose: Callable[[Handler, Context], layer.Layer]
    ) -> None:
        super().__init__(reader, writer, options.Options(), mode_specs.ProxyMode.parse("regular"))
        self.choose = choose
        self.hooks: list[str] = []
        self.close_landed_in_lock_wait: bool | None = None

    async def handle_hook(self, hook: commands.StartHook) -> None:
        self.hooks.append(hook.name)
        if isinstance(hook, layer.NextLayerHook) and hook.data.data_client():
            hook.data.layer = self.choose(self, hook.data.context)

    def task_of(self, conn: connection.Connection) -> asyncio.Task[Any] | None:
        io = self.transports.get(conn)
        return io.handler if io is not None else None


class Watch(layer.Layer):
    """Notes each event, and closes its connection (with `close`) on that connection's first bytes."""

    def __init__(self, context: Context, handler: Handler, close: str, side: str = "client") -> None:
        super().__init__(context)
        self.handler = handler
        self.close = close
        self.side = side
        self.seen: list[events.Event] = []

    def conn(self) -> connection.Connection:
        return self.context.client if self.side == "client" else self.context.server

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        self.seen.append(event)
        if isinstance(event, events.Start) and self.side == "server":
            yield commands.OpenConnection(self.context.server)
        if not (isinstance(event, events.DataReceived) and event.connection is self.conn()):
            return
        if sum(isinstance(e, events.DataReceived) and e.connection is self.conn() for e in self.seen) > 1:
            return
        if self.side == "server":
            yield tcp.TcpMessageHook(tflow.ttcpflow())  # blocking: its completion queues on the lock
        self.handler.close_landed_in_lock_wait = waiting_for_the_lock(self.handler.task_of(self.conn()))
        if self.close == "none":
            return
        if self.close == "command":  # what the head bound, a blocked stream, a killed flow come down to
            yield commands.CloseConnection(self.conn())
        else:  # the head timeout: mitm_internals.close_client runs the handler's idle timeout, from outside the layers
            asyncio_utils.create_task(self.handler.on_timeout(), name="close", keep_ref=True)


class Bounds(ClientBounds):
    """tlsgate's ClientHello bounds, noting whether the client was waiting for the lock when its hello was refused."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(Connections(PolicyStore()), FindingsSink())
        self.handler = handler
        self.refused_while_waiting: bool | None = None

    def hello_refused(self, context: Context, meter: HelloMeter) -> None:
        self.refused_while_waiting = waiting_for_the_lock(self.handler.task_of(context.client))
        super().hello_refused(context, meter)


def oversized_hello() -> bytes:
    """A ClientHello declaring 200,000 bytes, in one-byte records (the flood of the hostile-clients test)."""
    body = b"\x01" + (200_000 - 4).to_bytes(3, "big") + bytes(200_000 - 4)
    return b"".join(b"\x16\x03\x01\x00\x01" + body[i : i + 1] for i in range(PENDING // 6 + 1))[:PENDING]


async def serve(ours: socket.socket, choose: Callable[[Handler, Context], layer.Layer]) -> Handler:
    """Run mitmproxy's handler on `ours` until it is done with the client, as mitmproxy's master runs it."""
    with asyncio_utils.set_eager_task_factory():
        reader, writer = await asyncio.open_connection(sock=ours)
        handler = Handler(reader, writer, choose)
        await asyncio.wait_for(handler.handle_client(), 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 5)
        return handler


@pytest.mark.parametrize("close", ["command", "timeout"])
def test_a_client_closed_while_it_waits_for_the_event_lock_is_closed(close: str) -> None:
    """`command`: a layer's CloseConnection (the head bound, a blocked stream, a killed flow); `timeout`: the
    handler's idle timeout, which tlsgate's head timeout runs (`mitm_internals.close_client`)."""
    peer, ours = loopback_pair(b"x" * PENDING)
    watches: list[Watch] = []

    def choose(handler: Handler, context: Context) -> layer.Layer:
        watches.append(Watch(context, handler, close))
        return watches[0]

    with peer:
        handler = asyncio.run(serve(ours, choose))
        (watch,) = watches
        first = [e for e in watch.seen if isinstance(e, events.DataReceived)]
        assert [len(e.data) for e in first] == [READ], "the client's first read should have left bytes behind"
        assert handler.close_landed_in_lock_wait, "the interleaving was not reproduced: the client was not waiting"
        assert ours.fileno() == -1, "the client's socket was never closed (descriptor still held)"
        assert handler.client not in handler.transports
        assert peer_sees_the_end(peer)
    assert any(isinstance(e, events.ConnectionClosed) and e.connection is handler.client for e in watch.seen), (
        "the layers were never told the client is gone"
    )
    assert "client_disconnected" in handler.hooks


def test_a_flooding_hello_refused_while_the_client_waits_for_the_lock_is_closed() -> None:
    """The flaky live test's interleaving: next_layer chooses the HelloGate while the flood is still being read;
    the gate refuses the hello when next_layer completes, and the client's next read is queued on the lock by then."""
    peer, ours = loopback_pair(oversized_hello())
    gates: list[HelloGate] = []

    def choose(handler: Handler, context: Context) -> layer.Layer:
        gates.append(HelloGate(context, Watch(context, handler, "none"), HelloMeter(65536, 256), Bounds(handler)))
        return gates[0]

    with peer:
        asyncio.run(serve(ours, choose))
        (gate,) = gates
        assert gate.refused and (gate.meter.records, gate.meter.declared) == (4, 200_000)
        assert gate.bounds.refused_while_waiting, "the hello was not refused while the client waited for the lock"  # type: ignore[attr-defined]
        assert ours.fileno() == -1, "the flooding client's socket was never closed (descriptor still held)"
        assert peer_sees_the_end(peer)


def test_a_server_connection_closed_while_it_waits_for_the_event_lock_is_closed() -> None:
    """The same on the upstream side: the server's first bytes go to a blocking hook (a TCP message) and the stream
    is closed when it completes, as a blocked stream's upstream is; the server's next read waits for the lock."""
    client_peer, ours = loopback_pair()
    listener = socket.create_server(("127.0.0.1", 0))
    upstream: list[socket.socket] = []
    watches: list[Watch] = []

    def accept_and_send() -> None:
        conn, _ = listener.accept()
        upstream.append(conn)
        conn.sendall(b"y" * PENDING)
        deadline = time.monotonic() + 10
        while outgoing(conn):  # every byte delivered to tlsgate's side
            assert time.monotonic() < deadline, "the upstream's bytes were never taken"
            time.sleep(0.01)

    class ServerSide(Handler):
        async def handle_hook(self, hook: commands.StartHook) -> None:
            if isinstance(hook, server_hooks.ServerConnectedHook):  # before mitmproxy's first read from the server
                await asyncio.get_running_loop().run_in_executor(None, accept_and_send)
                sock = self.transports[hook.data.server].writer.get_extra_info("socket")  # type: ignore[union-attr]
                while queued(sock):  # asyncio's transport has taken them all into mitmproxy's reader
                    await asyncio.sleep(0.01)
            await super().handle_hook(hook)

    def choose(handler: Handler, context: Context) -> layer.Layer:
        context.server.address = listener.getsockname()
        watches.append(Watch(context, handler, "command", side="server"))
        return watches[0]

    async def run() -> tuple[Handler, bool]:
        with asyncio_utils.set_eager_task_factory():
            reader, writer = await asyncio.open_connection(sock=ours)
            handler = ServerSide(reader, writer, choose)
            client = asyncio.ensure_future(handler.handle_client())
            client_peer.sendall(b"go")
            while not upstream:
                await asyncio.sleep(0.01)
            closed = await asyncio.get_running_loop().run_in_executor(None, peer_sees_the_end, upstream[0])
            await handler.on_timeout()  # then the client goes too
            await asyncio.wait_for(client, 10)
            return handler, closed

    try:
        with client_peer, listener:
            handler, closed = asyncio.run(run())
            (watch,) = watches
            server_conn = watch.context.server
            assert handler.close_landed_in_lock_wait, "the interleaving was not reproduced: the server was not waiting"
            assert closed, "the upstream socket was left open while the client's connection went on"
            assert server_conn not in handler.transports
            assert any(isinstance(e, events.ConnectionClosed) and e.connection is server_conn for e in watch.seen), (
                "the layers were never told the server is gone"
            )
    finally:
        for sock in upstream:
            sock.close()
