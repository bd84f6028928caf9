"""Random frames through the real BPF program (BPF_PROG_TEST_RUN): 100,000 of them.

The table of test packets (test_dp_fixtures) shows what the datapath does with the frames
we thought of; this shows what it does with the ones nobody thought of: random bytes,
IPv4 headers with every field drawn at random, and frames aimed at the services (every
NAT mode, an allow-list, a marked rule, a rule without active endpoints) with bytes
flipped or cut off, and replies to the flows they opened. Whatever comes in:

- the verdict is pass (TC_ACT_OK) or drop (TC_ACT_SHOT), nothing else;
- a frame passed is the same length, and a frame the program did not translate is
  byte for byte the frame that came in (it is not ours);
- a translated frame keeps valid checksums when it came in with valid ones;
- the counters add up: every drop is counted under one drop reason, and every frame of
  a flow (translated, or dropped while rewriting) is counted for its rule.

The generator is seeded, and a failure names the seed and the frame.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dp_harness import (
    CLIENT,
    CLIENT2,
    EPS,
    LB_TOWARDS,
    PRIVATE_IP,
    TC_ACT_OK,
    TC_ACT_SHOT,
    VIP,
    DpHarness,
    lb_body,
    tcp,
    udp,
)
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from loxicmd.names import DP_STAT_WORDS

FRAMES = 100_000
BATCH = 5_000  # counters are compared after each batch
SEED = 20261203

# Reasons under which the program counts a frame it passes (not drops).
PASSED_STATS = {DP_STAT_WORDS[k] for k in ("DROP_MALFORMED", "STAT_PASS_FRAGMENT",
                                           "STAT_EVENTS_LOST")}
MARK = 7
PORTS = {"default": 2020, "onearm": 2021, "fullnat": 2022, "allowlist": 2023,
         "marked": 2024, "udp": 2025, "no-endpoint": 2026}
ADDRESSES = [VIP, CLIENT, CLIENT2, PRIVATE_IP, *EPS, *LB_TOWARDS.values(), "198.18.100.2"]
ETH = bytes.fromhex("020000000002" "020000000001")


def _rules() -> list[dict]:
    return [
        lb_body(port=PORTS["default"]),
        lb_body(port=PORTS["onearm"], mode=1),
        lb_body(port=PORTS["fullnat"], mode=2, privateIP=PRIVATE_IP),
        lb_body(port=PORTS["allowlist"], allowedSources=[{"prefix": f"{CLIENT2}/32"}]),
        lb_body(port=PORTS["marked"], eps=[EPS[1]], block=MARK),
        lb_body(port=PORTS["udp"], proto="udp", mode=2),
        lb_body(port=PORTS["no-endpoint"], eps=[EPS[2]], target=9090),
        lb_body(proto="icmp", port=0, target=0),
    ]


# -- checksums (to check the program's incremental updates) -------------------------------


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return _fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def _ip_header(frame: bytes) -> tuple[int, int] | None:
    """(offset, length) of a plain IPv4 header that the frame holds whole, or None."""
    off = 18 if frame[12:14] == b"\x81\x00" else 14
    if len(frame) < off + 20 or frame[off - 2:off] != b"\x08\x00" or frame[off] >> 4 != 4:
        return None
    ihl = (frame[off] & 0xF) * 4
    return (off, ihl) if ihl >= 20 and len(frame) >= off + ihl else None


def ip_checksum_ok(frame: bytes) -> bool | None:
    hdr = _ip_header(frame)
    return None if hdr is None else _sum16(frame[hdr[0]:hdr[0] + hdr[1]]) == 0xFFFF


def l4_checksum_ok(frame: bytes) -> bool | None:
    """Whether the TCP/UDP checksum is right (None: not checkable, or a UDP datagram
    without a checksum)."""
    hdr = _ip_header(frame)
    if hdr is None:
        return None
    off, ihl = hdr
    total, proto = struct.unpack_from("!H", frame, off + 2)[0], frame[off + 9]
    frag = struct.unpack_from("!H", frame, off + 6)[0] & 0x3FFF
    if proto not in (6, 17) or frag or total < ihl or off + total > len(frame):
        return None
    seg = frame[off + ihl:off + total]
    if proto == 17 and (len(seg) < 8 or seg[6:8] == b"\0\0"):
        return None
    pseudo = frame[off + 12:off + 20] + struct.pack("!BBH", 0, proto, len(seg))
    return _fold(_sum16(pseudo) + _sum16(seg)) == 0xFFFF


def _with_ip_checksum(header: bytearray) -> bytearray:
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", 0xFFFF - _sum16(bytes(header)))
    return header


# -- frames ------------------------------------------------------------------------------


class FrameSource:
    """Frames of several kinds, drawn from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.templates = [bytes(t) for t in self._templates()]
        self.replies: list[bytes] = []  # frames the program translated, turned around

    @staticmethod
    def _templates() -> Iterator[object]:
        for client in (CLIENT, CLIENT2):
            for port in PORTS.values():
                for flags in ("S", "A", "PA", "FA", "R", "SA"):
                    yield tcp(src=client, dport=port, flags=flags, payload=b"x" * 20)
                yield udp(src=client, dport=port)
            yield (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                   / IP(src=client, dst=VIP) / ICMP(type=8, id=5) / b"ping")

    def kinds(self) -> list[tuple[str, Callable[[], bytes], int]]:
        return [("random bytes", self.random_bytes, 2),
                ("random ipv4", self.random_ipv4, 4),
                ("service frame", self.service_frame, 2),
                ("mutated service frame", self.mutated, 3),
                ("reply", self.reply, 2)]

    def random_bytes(self) -> bytes:
        r = self.rng
        body = r.randbytes(r.randrange(0, 120))
        ethertype = r.choice([b"\x08\x00", b"\x81\x00", b"\x86\xdd", b"\x08\x06",
                              r.randbytes(2)])
        return ETH + ethertype + body

    def random_ipv4(self) -> bytes:
        r = self.rng
        proto = r.choice([6, 6, 17, 17, 1, 132, r.randrange(256)])
        ihl = r.choice([5, 5, 5, r.randrange(16)])
        options = r.randbytes(max(0, ihl * 4 - 20))
        l4 = self._random_l4(proto)
        total = 20 + len(options) + len(l4)
        total = r.choice([total, total, r.randrange(65536)])
        frag = r.choice([0, 0, 0, 0x4000, 0x2000, r.randrange(65536)])
        header = bytearray(struct.pack(
            "!BBHHHBBH4s4s", (r.choice([4, 4, 4, r.randrange(16)]) << 4) | ihl, 0, total,
            r.randrange(65536), frag, r.choice([64, 1, 0, r.randrange(256)]), proto, 0,
            socket.inet_aton(r.choice(ADDRESSES)), socket.inet_aton(r.choice(ADDRESSES))))
        if r.random() < 0.9:
            header = _with_ip_checksum(header)
        vlan = b"\x81\x00" + r.randbytes(2) if r.random() < 0.1 else b""
        frame = ETH + vlan + b"\x08\x00" + bytes(header) + options + l4
        return frame[: r.randrange(14, len(frame) + 1)] if r.random() < 0.2 else frame

    def _random_l4(self, proto: int) -> bytes:
        r = self.rng
        payload = r.randbytes(r.choice([0, 0, 8, r.randrange(64)]))
        sport = r.choice([40000, 8080, r.randrange(65536)])
        dport = r.choice([*PORTS.values(), 8080, r.randrange(65536)])
        if proto == 6:
            offset = r.choice([5, 5, r.randrange(16)])
            return struct.pack("!HHIIBBHHH", sport, dport, r.randrange(1 << 32),
                               r.randrange(1 << 32), offset << 4, r.randrange(256),
                               8192, r.randrange(65536), 0) + payload
        if proto == 17:
            length = r.choice([8 + len(payload), r.randrange(65536)])
            return struct.pack("!HHHH", sport, dport, length, r.randrange(65536)) + payload
        if proto == 1:
            return struct.pack("!BBHHH", r.choice([8, 0, 3, r.randrange(256)]), 0, 0,
                               r.randrange(65536), 1) + payload
        return payload

    def service_frame(self) -> bytes:
        frame = bytearray(self.rng.choice(self.templates))
        sport = self.rng.randrange(1024, 65536)
        frame[34:36] = sport.to_bytes(2, "big")  # a new flow; the checksum goes stale
        return bytes(frame)

    def mutated(self) -> bytes:
        r = self.rng
        frame = bytearray(r.choice(self.templates + self.replies[-200:]))
        for _ in range(r.randrange(1, 5)):
            frame[r.randrange(12, len(frame))] = r.randrange(256)
        return bytes(frame[: r.randrange(14, len(frame) + 1)] if r.random() < 0.3 else frame)

    def reply(self) -> bytes:
        return self.rng.choice(self.replies) if self.replies else self.service_frame()

    def note_translated(self, out: bytes) -> None:
        """Turn a translated frame around: the reply its endpoint (or client) would send.
        Swapping addresses and ports keeps both checksums."""
        hdr = _ip_header(out)
        if hdr is None or out[hdr[0] + 9] not in (6, 17, 1):
            return
        off, ihl = hdr
        frame = bytearray(out)
        frame[off + 12:off + 16], frame[off + 16:off + 20] = out[off + 16:off + 20], \
            out[off + 12:off + 16]
        if out[off + 9] != 1 and len(out) >= off + ihl + 4:
            l4 = off + ihl
            frame[l4:l4 + 2], frame[l4 + 2:l4 + 4] = out[l4 + 2:l4 + 4], out[l4:l4 + 2]
        self.replies.append(bytes(frame))
        del self.replies[:-2000]

    def frames(self, count: int) -> Iterator[tuple[str, bytes, int]]:
        kinds = self.kinds()
        names = [k[0] for k in kinds]
        makers = {k[0]: k[1] for k in kinds}
        weights = [k[2] for k in kinds]
        for _ in range(count):
            kind = self.rng.choices(names, weights)[0]
            mark = MARK if self.rng.random() < 0.1 else self.rng.choice([0] * 9 + [1 << 31])
            yield kind, self._runnable(makers[kind]()), mark

    def _runnable(self, frame: bytes) -> bytes:
        """The kernel's test run refuses a frame whose IPv4 or IPv6 header is cut short,
        so such a frame is padded with random bytes (on a link, the parser's bounds
        checks, which the verifier enforces, are what keep it harmless)."""
        need = {b"\x08\x00": 14 + 20, b"\x86\xdd": 14 + 40}.get(frame[12:14], 0)
        return frame + self.rng.randbytes(max(0, need - len(frame)))


# -- the run -----------------------------------------------------------------------------


@pytest.fixture
def fuzzed(tmp_path: Path) -> Iterator[DpHarness]:
    h = DpHarness(tmp_path, ct_entries=131072)
    try:
        for body in _rules():
            h.apply(body)
        h.set_active(EPS[2], False, port=9090)  # the no-endpoint rule's only endpoint
        yield h
    finally:
        h.close()


def _drops(h: DpHarness) -> int:
    return sum(p for reason, (p, _) in h.dp.drop_counters().items()
               if reason not in PASSED_STATS)


def _rule_packets(h: DpHarness) -> int:
    return sum(h.rule_counters(rec.rule_id)[0] for rec in h.table.records.values())


def test_random_frames_get_pass_or_drop_and_the_counters_add_up(fuzzed: DpHarness) -> None:
    h = fuzzed
    source = FrameSource(SEED)
    seen: Counter[tuple[str, str]] = Counter()
    shot = translated = 0
    drops0, rules0 = _drops(h), _rule_packets(h)
    rewrite0 = h.drops("rewrite-failed")
    for n, (kind, frame, mark) in enumerate(source.frames(FRAMES), 1):
        verdict, out = h.run_raw(frame, mark=mark)
        where = f"seed {SEED}, frame {n} ({kind}, mark {mark}): {frame.hex()}"
        assert verdict in (TC_ACT_OK, TC_ACT_SHOT), f"verdict {verdict}; {where}"
        if verdict == TC_ACT_SHOT:
            shot += 1
            seen[kind, "drop"] += 1
        elif out == frame:
            seen[kind, "pass"] += 1
        else:
            translated += 1
            seen[kind, "translated"] += 1
            assert len(out) == len(frame), f"length {len(out)}; {where}"
            if ip_checksum_ok(frame):
                assert ip_checksum_ok(out), f"IP checksum broken: {out.hex()}; {where}"
            if l4_checksum_ok(frame):
                assert l4_checksum_ok(out), f"L4 checksum broken: {out.hex()}; {where}"
            source.note_translated(out)
        if n % BATCH == 0:
            h.events()  # the agent's reader would empty the ring; so do we
            assert _drops(h) - drops0 == shot, f"drops counted vs. dropped after {n} frames"
            rewrites = h.drops("rewrite-failed") - rewrite0
            assert _rule_packets(h) - rules0 == translated + rewrites, \
                f"rule counters vs. frames of flows after {n} frames"
    # The run reached every path: each kind passed, and frames were translated and dropped.
    for kind, *_ in source.kinds():
        assert seen[kind, "pass"] > 0, (kind, seen)
    assert seen["service frame", "translated"] > FRAMES // 100, seen
    assert seen["reply", "translated"] > FRAMES // 100, seen
    assert shot > FRAMES // 1000, seen
    print(f"{FRAMES} frames (seed {SEED}): {dict(seen)}")

    # The agent still reads every flow the fuzz left, and the rules are still served.
    flows = h.flows()
    assert len(flows) > FRAMES // 100
    assert {f["servName"] for f in flows} == {"t"}
    assert h.dst_fast(CLIENT, 65000, PORTS["default"]) in EPS
