"""A small HTTP/1.1 load generator, run as its own process by the benchmarks.

Usage: ``python -m tests.bench.loadgen REQUESTS.jsonl RESULTS.jsonl --url URL --concurrency N``

Each line of REQUESTS is ``{"path": ..., "headers": {...}, "body": {...}}``; the
requests are sent over ``N`` keep-alive connections (plain asyncio streams, so
the client costs far less CPU than the server it measures). Each line of
RESULTS is ``{"i": ..., "status": ..., "sent": <epoch s>, "done": <epoch s>,
"body": <response JSON>}``, in completion order.

:func:`stream_chat` is the same kind of client for a streamed chat completion
(server-sent events over chunked HTTP), used by the serving benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit


def _encode(host: str, port: int, request: dict) -> bytes:
    body = json.dumps(request["body"]).encode()
    headers = {
        "Host": f"{host}:{port}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **request.get("headers", {}),
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {request['path']} HTTP/1.1\r\n{head}\r\n".encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _read_chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The body of a ``Transfer-Encoding: chunked`` response, chunk by chunk."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers: the final CRLF
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)


async def stream_chat(url: str, api_key: str, body: dict) -> tuple[float, float, int]:
    """POST a ``stream: true`` chat completion; (TTFT s, latency s, completion tokens).

    Tokens come from the final usage chunk (``include_usage``)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = {
            "path": parts.path.rstrip("/") + "/v1/chat/completions",
            "headers": {"Authorization": f"Bearer {api_key}", "Connection": "close"},
            "body": {**body, "stream": True, "stream_options": {"include_usage": True}},
        }
        writer.write(_encode(host, port, request))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {(await reader.read(2000)).decode()}")
        first: float | None = None
        tokens = 0
        pending = b""
        async for chunk in _read_chunks(reader):
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            for event in events:
                data = event.removeprefix(b"data: ")
                if data == b"[DONE]":
                    continue
                payload = json.loads(data)
                choices = payload.get("choices") or []
                if first is None and choices and choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter()
                if payload.get("usage"):
                    tokens = payload["usage"]["completion_tokens"]
        done = time.perf_counter()
        return (first or done) - started, done - started, tokens
    finally:
        writer.close()


async def run(url: str, requests: list[bytes], concurrency: int) -> list[dict]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    results: list[dict] = []
    next_index = 0

    async def connection() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_index < len(requests):
                i = next_index
                next_index += 1
                sent = time.time()
                writer.write(requests[i])
                status, body = await _read_response(reader)
                results.append(
                    {"i": i, "status": status, "sent": sent, "done": time.time(), "body": body}
                )
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with args.requests.open() as f:
        encoded = [_encode(host, port, json.loads(line)) for line in f]
    print(f"loadgen: {len(encoded)} requests, {args.concurrency} connections", file=sys.stderr)
    results = asyncio.run(run(args.url, encoded, args.concurrency))
    with args.results.open("w") as f:
        for r in results:
            body = r.pop("body")
            try:
                r["body"] = json.loads(body) if body else None
            except ValueError:
                r["body"] = body.decode("utf-8", "replace")
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
