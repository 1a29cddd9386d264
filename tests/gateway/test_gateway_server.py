"""The gateway's own listening socket: answers leave at once (TCP_NODELAY).

The gateway binds its port itself, to refuse a taken port in one line. A
socket made with proto 0 made asyncio skip TCP_NODELAY on every connection,
and each answer then waited about 40 ms for Nagle's algorithm: a command
took 48 ms instead of 6."""

from __future__ import annotations

import asyncio
import socket

from animus.embedded import free_port
from animus.settings import Settings
from gateway.server import bind_socket


async def test_accepted_connections_send_without_delay() -> None:
    settings = Settings(gateway_host="127.0.0.1", gateway_port=free_port())
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):  # type: ignore[no-untyped-def]
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    with bind_socket(settings) as sock:
        server = await asyncio.start_server(on_connection, sock=sock)
        async with server:
            port = settings.gateway_port
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(accepted, 5) != 0
            writer.close()
