"""A small HTTP/1.1 load generator, run as its own process by the benchmarks.

Usage: ``python -m tests.bench.loadgen REQUESTS.jsonl RESULTS.jsonl --url URL --concurrency N``

Each line of REQUESTS is ``{"path": ..., "headers": {...}, "body": {...}}``; the
requests are sent over ``N`` keep-alive connections (plain asyncio streams, so
the client costs far less CPU than the server it measures). Each line of
RESULTS is ``{"i": ..., "status": ..., "sent": <epoch s>, "done": <epoch s>,
"body": <response JSON>}``, in completion order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
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
