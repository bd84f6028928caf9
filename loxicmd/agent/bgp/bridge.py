"""The helper ExaBGP runs as its API process (``run`` in its configuration): it joins
ExaBGP's pipes (its stdin: ExaBGP's answers and events; its stdout: our commands) to the
agent's Unix socket, byte for byte, and ends when either side does.

ExaBGP starts its API processes itself, so the agent cannot hand it a pipe: this bridge is
the shortest way to let the agent, ExaBGP's parent, hold the conversation.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time

CONNECT_TIMEOUT_S = 10.0
CHUNK = 65536


def _connect(path: str) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def relay(path: str, stdin: int = 0, stdout: int = 1) -> None:
    sock = _connect(path)
    with sock, selectors.DefaultSelector() as sel:
        sel.register(stdin, selectors.EVENT_READ, "exabgp")
        sel.register(sock, selectors.EVENT_READ, "agent")
        while True:
            for key, _ in sel.select():
                if key.data == "exabgp":
                    data = os.read(stdin, CHUNK)
                    if not data:
                        return
                    sock.sendall(data)
                else:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    _write_all(stdout, data)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m loxicmd.agent.bgp.bridge SOCKET")
    try:
        relay(sys.argv[1])
    except (OSError, KeyboardInterrupt) as exc:
        sys.exit(f"loxilbd bgp bridge: {exc}")


if __name__ == "__main__":
    main()
