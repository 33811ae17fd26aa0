"""The coalescing transport under uvicorn's protocol (``serving.http_protocol``): the
writes of one loop turn reach the socket as one; large writes and closes are not held."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import uvicorn

from serving.http_protocol import FLUSH_BYTES, CoalescingHttpToolsProtocol, CoalescingTransport


class _Recorder(asyncio.Transport):
    """A transport that records each write it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_writes_of_one_turn_are_sent_as_one() -> None:
    async def main() -> list[list[bytes]]:
        real = _Recorder()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        seen = []
        transport.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
        body = bytearray(b"{}")
        transport.write(body)
        body[:] = b"xx"  # reused by the caller before the flush: the copy is sent
        seen.append(list(real.writes))  # nothing yet: the turn is not over
        await asyncio.sleep(0)
        seen.append(list(real.writes))
        transport.write(b"data: 1\n\n")  # a later turn (a streamed chunk): its own write
        await asyncio.sleep(0)
        seen.append(list(real.writes))
        return seen

    during, after, streamed = asyncio.run(main())
    assert during == []
    assert after == [b"HTTP/1.1 202 Accepted\r\n\r\n{}"]
    assert streamed == [b"HTTP/1.1 202 Accepted\r\n\r\n{}", b"data: 1\n\n"]


def test_large_writes_and_close_are_not_held() -> None:
    async def main() -> tuple[list[bytes], list[bytes], bool]:
        real = _Recorder()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"head")
        transport.write(b"x" * FLUSH_BYTES)  # past the limit: written at once
        large = list(real.writes)
        transport.write(b"last")
        transport.close()  # flushed before the close
        return large, list(real.writes), real.closed

    large, at_close, closed = asyncio.run(main())
    assert large == [b"head" + b"x" * FLUSH_BYTES]
    assert at_close[-1] == b"last" and closed


def test_nothing_is_written_to_a_closed_connection() -> None:
    async def main() -> list[bytes]:
        real = _Recorder()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"late")
        real.closed = True  # the client went away within the turn
        await asyncio.sleep(0)
        return real.writes

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("chunks", [1, 3])
def test_uvicorn_answers_through_it(chunks: int) -> None:
    """A plain and a streamed response, through uvicorn with the protocol."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(chunks):
            await send(
                {"type": "http.response.body", "body": b"%d;" % i, "more_body": i < chunks - 1}
            )

    async def main() -> list[str]:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", http=CoalescingHttpToolsProtocol
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient() as client:
                return [
                    (await client.post(f"http://127.0.0.1:{port}/", content=b"x")).text
                    for _ in range(3)  # keep-alive: the same connection answers again
                ]
        finally:
            server.should_exit = True
            await serving

    expected = "".join(f"{i};" for i in range(chunks))
    assert asyncio.run(main()) == [expected] * 3
