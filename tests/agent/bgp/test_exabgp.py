"""ExaBGP's configuration as the agent writes it (checked by ExaBGP's own parser), the
bridge between ExaBGP's pipes and the agent's socket, and LoxiLB's up/down time format."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from loxicmd.agent.bgp.bridge import relay
from loxicmd.agent.bgp.exabgp import (
    expected_neighbors,
    loaded_as_expected,
    loaded_neighbors,
    local_address_towards,
    render_config,
)
from loxicmd.agent.bgp.settings import BgpConfig, GlobalConfig, Neighbor
from loxicmd.agent.bgp.speaker import updown


def test_rendered_configuration_passes_exabgps_parser(tmp_path: Path) -> None:
    config = BgpConfig(GlobalConfig("198.18.1.2", 64601, 1179, True), {
        "198.18.1.10": Neighbor("198.18.1.10", 64512),
        "198.18.1.20": Neighbor("198.18.1.20", 64601, 1790),
        "198.18.9.9": Neighbor("198.18.9.9", 4200000000, multihop=True),
    })
    text = render_config(config, {"198.18.1.10": "198.18.1.2"},
                         [sys.executable, "-m", "loxicmd.agent.bgp.bridge", "/x.sock"], 9)
    assert "local-address 198.18.1.2;" in text and text.count("local-address") == 1
    assert "outgoing-ttl 1;" in text and "outgoing-ttl 255;" in text  # eBGP one hop / multi
    assert "connect 1790;" in text and "hold-time 9;" in text
    path = tmp_path / "exabgp.conf"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "exabgp", "validate", "-n", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_local_address_is_the_routing_tables_choice() -> None:
    assert local_address_towards("127.0.0.1") == "127.0.0.1"


def test_bridge_relays_both_ways_and_ends_with_either_side(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    exa_in_r, exa_in_w = os.pipe()  # ExaBGP -> bridge (its stdin)
    exa_out_r, exa_out_w = os.pipe()  # bridge -> ExaBGP (its stdout)
    thread = threading.Thread(target=relay, args=(path, exa_in_r, exa_out_w))
    thread.start()
    conn, _ = server.accept()
    os.write(exa_in_w, b'{"type": "state"}\ndone\n')
    got = b""
    while got.count(b"\n") < 2:
        got += conn.recv(100)
    assert got == b'{"type": "state"}\ndone\n'
    conn.sendall(b"neighbor 198.18.1.10 announce route 198.18.100.1/32 next-hop self\n")
    assert os.read(exa_out_r, 200).startswith(b"neighbor 198.18.1.10 announce")
    os.close(exa_in_w)  # ExaBGP went away
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert conn.recv(10) == b""  # and the agent sees the end
    for fd in (exa_in_r, exa_out_r, exa_out_w):
        os.close(fd)
    conn.close()
    server.close()


def test_updown_time_as_loxilb_shows_it() -> None:
    assert updown(None, 100.0) == "never"
    assert updown(100.0, 100.0 + 3723) == "01:02:03"
    assert updown(100.0, 100.0 + 2 * 86400 + 61) == "2d 00:01:01"


def test_a_reload_is_taken_when_exabgp_shows_exactly_the_neighbors() -> None:
    """``show neighbor json`` as ExaBGP 5 writes it (trimmed to what is read)."""
    def shown(peer: str, peer_as: int, local: str) -> dict:
        return {"fsm": "ESTABLISHED", "local": {"address": local, "as": 64601,
                                                "id": "198.18.1.2", "hold": 90},
                "peer": {"address": peer, "as": peer_as, "id": peer, "hold": 6}}
    config = BgpConfig(GlobalConfig("198.18.1.2", 64601), {
        "198.18.1.10": Neighbor("198.18.1.10", 64512),
        "198.18.1.20": Neighbor("198.18.1.20", 64601)})
    local = {"198.18.1.10": "198.18.1.2"}
    want = expected_neighbors(config, local)

    def taken(*entries: dict) -> bool:
        return loaded_as_expected(loaded_neighbors(list(entries)), want)
    a, b = shown("198.18.1.10", 64512, "198.18.1.2"), shown("198.18.1.20", 64601, "None")
    assert taken(a, b)
    # a local address left to ExaBGP is whatever it discovered
    assert taken(a, shown("198.18.1.20", 64601, "198.18.1.2"))
    # a neighbor missing or still there, one of an earlier AS or local address: not yet
    assert not taken(a)
    assert not taken(a, b, shown("198.18.1.30", 1, "None"))
    assert not taken(shown("198.18.1.10", 65000, "198.18.1.2"), b)
    assert not taken(shown("198.18.1.10", 64512, "198.18.9.9"), b)
