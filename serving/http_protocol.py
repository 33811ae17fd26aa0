"""uvicorn's httptools protocol, with the writes of one event-loop turn sent together.

uvicorn writes a response's head (``http.response.start``) and its body
(``http.response.body``) with two ``transport.write`` calls, and uvloop sends each
at once: two ``send`` syscalls and two TCP segments for every small response (a
202 for one rating is ~150 bytes), and a client that may wake twice to read it.
Profiled under the ingestion benchmark (issue 17), uvicorn's ``send`` was a sixth
of the event loop's samples, most of it those two syscalls.

:class:`CoalescingHttpToolsProtocol` hands uvicorn a transport that gathers the
writes made during one turn of the event loop and sends them as one at its end
(``loop.call_soon``), as aiohttp does for small responses. A streamed response
still goes out chunk by chunk (each ``await`` between chunks ends a turn), and
more than ``FLUSH_BYTES`` pending is written at once, so uvicorn's flow control
(``pause_writing`` from the real transport) sees large writes as before.
``ratchet serve`` and the tests' servers (``tests/servers.py``) use it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FLUSH_BYTES = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """``transport`` with the writes of one loop turn sent as one (see the module)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        # a copy of anything mutable: the caller may reuse it before the flush
        self._pending.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is pending now (a no-op when nothing is)."""
        if not self._pending:
            return
        pending, self._pending, self._size = self._pending, [], 0
        if self._transport.is_closing():  # the connection is gone: as a closed transport would
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending, self._size = [], 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` over a :class:`CoalescingTransport`
    (``uvicorn.run(app, http=CoalescingHttpToolsProtocol)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))
