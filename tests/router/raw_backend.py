"""A raw-socket HTTP/1.1 upstream for byte-level misbehaviour no HTTP server library will produce.

Run as a script, one process per replica (``python raw_backend.py --host 127.0.0.x``); it binds
port 0 and prints ``READY <port>``. Connections are kept alive, and every request is answered by
its path (any method, any prefix; the last path segment picks the behaviour):

- ``.../echo`` (and any path not below): 200 JSON ``{"n", "conn", "path", "method", "bytes",
  "sha256", "headers"}``: ``n`` counts the requests this process answered, ``conn`` its
  connections (1, 2, ...), ``bytes`` and ``sha256`` describe the body it read.
- ``.../overlong``: the echo answer's head, then (50 ms later) its body followed in the same send by
  a whole second HTTP response (``"stolen": true``) that nobody asked for: a body longer than its
  Content-Length.
- ``.../overlong-junk``: the echo answer followed in the same send by bytes that are no HTTP.
- ``.../late-second``: the echo answer, then 0.3 s later, unasked, a second response on the same
  connection (``"stolen": true``).
- ``.../late-partial``: the echo answer, then 0.3 s later, unasked, the first line of a response.
- ``.../bad-chunk``: a chunked SSE stream of three events, then a chunk-size line that is not hex;
  the connection then stays open and silent.
- ``.../silent-length`` and ``.../silent-sse``: response headers (a Content-Length of 100, or a
  chunked SSE stream), then nothing, on a connection that stays open.
- ``.../broken-sse``: headers of a chunked SSE stream and one event, then the connection closes.
- ``.../unread``: reads the request head and never the body, nor answers.

``Expect: 100-continue`` is ignored, as some servers do: no ``100 Continue`` is ever sent, and the
body is waited for. ``GET /health`` is 200; ``GET /stats`` (not counted) is ``{"requests",
"connections", "expects"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time


class RawBackend:
    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.expects = 0
        self.arrivals: list[list] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            while True:
                head = await read_head(reader)
                if head is None:
                    return
                method, path, headers = head
                if path.endswith("/unread"):
                    self.requests += 1
                    await asyncio.sleep(3600)
                    return
                body = await read_body(reader, headers)
                if not await self.answer(writer, conn, method, path, headers, body):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def answer(self, writer, conn, method, path, headers, body) -> bool:
        """Answer one request; False to stop reading the connection."""
        if path == "/stats":
            write_json(writer, {"requests": self.requests, "connections": self.connections,
                                "expects": self.expects, "arrivals": self.arrivals})
            await writer.drain()
            return True
        if path == "/health":
            write_json(writer, {"status": "ok"})
            await writer.drain()
            return True
        self.requests += 1
        self.arrivals.append([time.time(), path])
        if headers.get("expect", "").lower() == "100-continue":
            self.expects += 1
        echo = {"n": self.requests, "conn": conn, "path": path, "method": method, "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(), "headers": headers}
        behaviour = path.rsplit("/", 1)[-1].split("?", 1)[0]
        if behaviour == "overlong":
            whole = response_bytes(echo)
            head_end = whole.index(b"\r\n\r\n") + 4
            writer.write(whole[:head_end])  # the head in a read of its own, as a server that streams its body
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(whole[head_end:] + response_bytes({"stolen": True, "n": -1}))
        elif behaviour == "overlong-junk":
            writer.write(response_bytes(echo) + b"and some more bytes")
        elif behaviour == "late-second":
            write_json(writer, echo)
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(response_bytes({"stolen": True, "n": -1}))
        elif behaviour == "late-partial":
            write_json(writer, echo)
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 200 OK\r\n")
        elif behaviour == "bad-chunk":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(3):
                writer.write(chunk(b'data: {"i": %d}\n\n' % i))
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"zz-not-hex\r\nxx\r\n")
            await writer.drain()
            await asyncio.sleep(3600)
            return False
        elif behaviour == "silent-length":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(3600)
            return False
        elif behaviour == "silent-sse":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(3600)
            return False
        elif behaviour == "broken-sse":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(chunk(b'data: {"i": 0}\n\n'))
            await writer.drain()
            await asyncio.sleep(0.05)
            return False
        else:
            write_json(writer, echo)
        await writer.drain()
        return True


async def read_head(reader: asyncio.StreamReader):
    """(method, path, headers) of the next request, or None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return method, path, headers


async def read_body(reader: asyncio.StreamReader, headers: dict) -> bytes:
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, up to the empty line
            pass
    else:
        body = b""
    return body


def response_bytes(data: dict, status: str = "200 OK") -> bytes:
    body = json.dumps(data).encode()
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % (status.encode(), len(body))) + body


def write_json(writer: asyncio.StreamWriter, data: dict) -> None:
    writer.write(response_bytes(data))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve(host: str) -> None:
    backend = RawBackend()
    server = await asyncio.start_server(backend.handle, host, 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    asyncio.run(serve(p.parse_args(sys.argv[1:]).host))
