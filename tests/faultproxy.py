"""A fault-injecting TCP proxy on loopback, for network-cut tests.

It forwards 127.0.0.1:PORT to a target in both directions until cut(): from
then on every connection, open or new, is a black hole (bytes are read and
dropped, nothing is closed), as a partition looks to both ends: no error,
no data, TCP still up. heal() closes what was black-holed (as the peers'
own retries or an RST eventually would) and forwards new connections again.

It runs on its own thread and event loop, so a sync test drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)  # kept in a set, by identity
class _Link:
    """One proxied connection: the client's side and the target's."""

    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    dead: bool = False

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class FaultProxy:
    """Forward 127.0.0.1:port -> ``target`` (HOST:PORT), with cut() and heal()."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host or "127.0.0.1", int(port))
        self._loop = asyncio.new_event_loop()
        self._links: set[_Link] = set()
        self._cut = False
        # Connections made during cuts (each reached nothing).
        self.black_holed = 0
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the fault proxy did not start")
        assert self._server is not None
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def listen() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self._started.set()

        self._loop.run_until_complete(listen())
        self._loop.run_forever()
        self._loop.close()

    # -- faults, from any thread -------------------------------------------------------
    def cut(self) -> None:
        """Black-hole every connection, open and new, until heal()."""
        self._call(self._do_cut)

    def heal(self) -> None:
        """Close the black-holed connections; forward new ones again."""
        self._call(self._do_heal)

    def close(self) -> None:
        self._call(self._do_close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, fn: object) -> None:
        async def run() -> None:
            fn()  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def _do_cut(self) -> None:
        self._cut = True
        for link in self._links:
            link.dead = True

    def _do_heal(self) -> None:
        self._cut = False
        for link in [link for link in self._links if link.dead]:
            link.close()
            self._links.discard(link)

    def _do_close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            link.close()
        self._links.clear()

    # -- forwarding ----------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writers=[writer], dead=self._cut)
        self._links.add(link)
        if link.dead:  # a connection made during a cut reaches nothing
            self.black_holed += 1
            await _pump(reader, None, link)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            self._links.discard(link)
            return
        link.writers.append(up_writer)
        await asyncio.gather(_pump(reader, up_writer, link), _pump(up_reader, writer, link))
        link.close()
        self._links.discard(link)


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter | None, link: _Link
) -> None:
    """Copy source to sink until EOF; once the link is dead, drop what arrives."""
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await source.read(65536):
            if link.dead or sink is None:
                continue
            sink.write(data)
            await sink.drain()
    if sink is not None and not link.dead:
        with contextlib.suppress(OSError):
            sink.write_eof()
