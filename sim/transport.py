"""Abort a client's TCP connection from inside an ASGI app (the `reset_after_chunks` fault).

ASGI has no message for "reset the connection", so this reaches the server's transport through the `send`
callable: uvicorn's `send` is a bound method of its request cycle, which holds the asyncio transport.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from maitred.sim.asgi import Send

_DRAIN_TIMEOUT_S = 2.0


async def reset_connection(send: Send) -> bool:
    """Reset the connection behind `send` with a TCP RST, after the bytes already sent have left.

    Returns False, doing nothing, when `send` does not come from uvicorn (no transport to reach).
    SO_LINGER 0 makes close() send RST instead of FIN; the write buffer is drained first because an RST
    also discards unsent data, and the fault promises the client every chunk sent before the reset.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    # Duck-typed: uvloop's transports do not subclass asyncio.BaseTransport.
    if transport is None or not hasattr(transport, "abort"):
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DRAIN_TIMEOUT_S
    while transport.get_write_buffer_size() and loop.time() < deadline:
        await asyncio.sleep(0.001)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # Let the server see connection_lost before the app returns, so it does not log an incomplete response.
    await asyncio.sleep(0)
    return True
