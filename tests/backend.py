#!/usr/bin/env python3
"""Lab backend: answers with its own name over HTTP and UDP, optionally echoes TCP streams.

Usage::

    backend.py --name NAME --http-port P --udp-port Q [--echo-port R] [--bind 0.0.0.0]

* HTTP/1.1 on tcp P: any ``GET`` gets ``200`` with body ``NAME\\n``, ``Content-Length`` and
  ``Connection: close``; the connection is closed afterwards. ``HEAD`` gets the headers only,
  other methods get ``405``. ``GET /peer`` answers ``NAME PEERIP:PEERPORT\\n`` instead: the
  source address the backend saw (what a NAT mode made of the client's).
* UDP on Q: every datagram is answered, to its sender, with ``NAME:`` + the payload; a
  payload starting with ``peer?`` gets `` PEERIP:PEERPORT`` (the sender seen) appended.
* TCP echo on R (optional): every byte received is sent back until the peer closes.

Prints ``ready`` on stdout (flushed) once every socket is listening; exits with status 0 on
SIGTERM or SIGINT. Runs inside a lab network namespace (started through ``nsenter``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import cast

HEADER_LIMIT = 64 * 1024
PEER_PATH = "/peer"
UDP_PEER = b"peer?"
READ_TIMEOUT = 10.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class HttpHandler:
    def __init__(self, name: str) -> None:
        self.name = name
        self.body = f"{name}\n".encode()

    def peer_body(self, writer: asyncio.StreamWriter) -> bytes:
        peer = writer.get_extra_info("peername")
        return f"{self.name} {peer[0]}:{peer[1]}\n".encode()

    def response(self, status: str, body: bytes, send_body: bool = True) -> bytes:
        head = (
            f"HTTP/1.1 {status}\r\n"
            "Content-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Backend: {self.name}\r\n"
            "Connection: close\r\n"
            "\r\n"
        ).encode()
        return head + body if send_body else head

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, _, rest = request_line.partition(" ")
            method = method.upper()
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method == "GET" and path == PEER_PATH:
                writer.write(self.response("200 OK", self.peer_body(writer)))
            elif method == "GET":
                writer.write(self.response("200 OK", self.body))
            elif method == "HEAD":
                writer.write(self.response("200 OK", self.body, send_body=False))
            else:
                writer.write(self.response("405 Method Not Allowed", b"method not allowed\n"))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log(f"http: {exc!r}")
        finally:
            await close_writer(writer)


class UdpResponder(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.prefix = f"{name}:".encode()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport does not subclass DatagramTransport on every version.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            suffix = f" {addr[0]}:{addr[1]}".encode() if data.startswith(UDP_PEER) else b""
            self.transport.sendto(self.prefix + data + suffix, addr)

    def error_received(self, exc: Exception) -> None:
        log(f"udp: {exc!r}")


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError) as exc:
        log(f"echo: {exc!r}")
    finally:
        await close_writer(writer)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    servers: list[asyncio.base_events.Server] = []
    servers.append(
        await asyncio.start_server(
            HttpHandler(args.name), args.bind, args.http_port, limit=HEADER_LIMIT,
            reuse_address=True,
        )
    )
    udp_transport, _ = await loop.create_datagram_endpoint(
        lambda: UdpResponder(args.name), local_addr=(args.bind, args.udp_port)
    )
    if args.echo_port is not None:
        servers.append(
            await asyncio.start_server(echo_handler, args.bind, args.echo_port, reuse_address=True)
        )

    print("ready", flush=True)
    await stop.wait()

    udp_transport.close()
    for server in servers:
        server.close()
    for server in servers:
        await server.wait_closed()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--udp-port", type=int, required=True)
    parser.add_argument("--echo-port", type=int, default=None)
    parser.add_argument("--bind", default="0.0.0.0")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
