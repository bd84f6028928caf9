"""End to end: a conntrack flood fills the LRU conntrack table without wedging new flows.

Why: the datapath keeps every flow in one fixed-size table (``lb_conntrack``, sized by
``--ct-entries``). A flood of half-open connections (SYNs from ever new source ports) is
the cheapest way to fill it. Were the table a plain hash, a full table would refuse every
new flow (``ct-full`` drops) until the idle sweep freed entries, so one flood would black-hole
the services for real clients. The table is an LRU hash: an insert into a full table evicts
the least recently used entries (the flood's, which see no traffic after their handshake),
so real new connections keep being accepted while the flood goes on and after it.

The test runs the real agent with the smallest table it accepts (1024 entries, 512 flows of
two entries each), floods the service port with hping3 from an extra address of the client
host (tens of thousands of distinct flows, far more than fit), checks through the agent's API
that the table really is full, and meanwhile opens real HTTP connections (and UDP exchanges)
to the same service: every one must succeed, none of the client's TCP segments may need a
retransmission (a dropped SYN would), and the datapath must count no ``ct-full`` drop.

Topology (tests/lab.py): client 198.18.1.2 (+ 198.18.1.3, the flood's source) -- lb
(loxilbd + eBPF) -- srv1..3 answering with their names. The client's kernel answers the
backends' SYN-ACKs to the flood with resets, so the flood's flows end up closed, not
expired: none of them can leave the table through the idle sweep within the test (a closed
flow is kept 10 s), only through LRU eviction.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from lab import CommandError, Lab, Netns, Topology, http_get, udp_request, wait_for
from lbnode import LbNode

from datapath.libbpf import pinned_map_info

pytestmark = pytest.mark.e2e

VIP, VPORT = "198.18.100.1", 2020
CT_ENTRIES = 1024  # the smallest --ct-entries the agent takes
FLOW_CAPACITY = CT_ENTRIES // 2  # a flow holds two entries (original and reply direction)
FULL = 0.9  # "full": at least this share of the entries in use
FLOOD_SRC = "198.18.1.3"  # a second address of the client host: the flood's own source
FLOOD_BASE_SPORT = 1024  # hping3 adds one to the source port per packet from here
FLOOD_MAX_PACKETS = 64000  # ports 1024..65023: every SYN is a distinct flow, no wrap
FLOOD_INTERVAL = "u40"  # about 10k SYNs a second here; bounded so the host stays usable
REQUESTS = 50  # real requests during the flood, and again after it
SAMPLE_EVERY = 5  # requests between two looks at the table (and two UDP exchanges)
TRAFFIC_DROPS = ("ct-full", "no-endpoint", "rewrite-failed", "snat-ports-exhausted")


def listed_flows(node: LbNode) -> list[dict[str, Any]]:
    """Every flow the agent lists (one per original-direction entry of the table)."""
    status, body = node.api("GET", f"/config/conntrack/all?limit={4 * CT_ENTRIES}")
    assert status == 200, body
    assert body["next"] == "", "the whole table fits in one page"
    return list(body["ctAttr"])


def table_entries(node: LbNode) -> int:
    """Entries in use, as the flows listed show them (two entries per flow)."""
    return 2 * len(listed_flows(node))


def dp_counters(node: LbNode) -> dict[str, int]:
    status, body = node.api("GET", "/config/dpstats")
    assert status == 200, body
    return {row["reason"]: int(row["packets"]) for row in body["dpStats"]}


def tcp_counters(ns: Netns) -> dict[str, int]:
    """The namespace's ``Tcp:`` line of /proc/net/snmp (read from inside it)."""
    rows = [ln.split() for ln in ns.run("cat", "/proc/net/snmp").stdout.splitlines()
            if ln.startswith("Tcp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))


def start_flood(lab: Lab, topo: Topology) -> tuple[subprocess.Popen[bytes], Path]:
    """hping3 SYNs to the service from FLOOD_SRC, one new source port per packet.

    Started through the lab (Netns.popen), so the lab stops it whatever the test's outcome.
    """
    out = lab.workdir / "hping3.out"
    with open(out, "wb") as f:
        proc: subprocess.Popen[bytes] = topo.client.popen(
            "hping3", "-q", "-S", "-p", str(VPORT), "-a", FLOOD_SRC,
            "-s", str(FLOOD_BASE_SPORT), "-i", FLOOD_INTERVAL, "-c", str(FLOOD_MAX_PACKETS),
            VIP, stdout=f, stderr=subprocess.STDOUT,
        )
    return proc, out


def stop_flood(proc: subprocess.Popen[bytes], out: Path) -> int:
    """SIGINT (hping3 then prints its statistics); returns the SYNs it sent."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    text = out.read_text(errors="replace")
    m = re.search(r"(\d+) packets transmitted", text)
    assert m, f"no statistics from hping3: {text!r}"
    return int(m.group(1))


class Prober:
    """Real new connections to the existing services, each one checked."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.ok = 0
        self.udp_ok = 0
        self.failures: list[str] = []
        self.slowest = 0.0

    def http(self) -> None:
        start = time.monotonic()
        try:
            name = http_get(self.topo.client, f"http://{VIP}:{VPORT}/", timeout=3).strip()
        except CommandError as exc:
            self.failures.append(f"http: {exc}")
            return
        finally:
            self.slowest = max(self.slowest, time.monotonic() - start)
        if name in self.topo.backend_names:
            self.ok += 1
        else:
            self.failures.append(f"http: unexpected answer {name!r}")

    def udp(self) -> None:
        try:
            reply = udp_request(self.topo.client, VIP, VPORT, b"q", timeout=2)
        except CommandError as exc:
            self.failures.append(f"udp: {exc}")
            return
        if reply in {f"{n}:q".encode() for n in self.topo.backend_names}:
            self.udp_ok += 1
        else:
            self.failures.append(f"udp: unexpected answer {reply!r}")


def test_a_conntrack_flood_fills_the_table_without_wedging_new_flows(
        lab: Lab, topo: Topology) -> None:
    started = time.monotonic()
    node = LbNode(lab, topo.lb, topo.lb_ifaces, ct_entries=CT_ENTRIES).start()
    info = pinned_map_info(f"{node.pin_dir}/lb_conntrack")
    assert info is not None and info.max_entries == CT_ENTRIES
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    for proto in ("tcp", "udp"):
        cp = node.loxicmd("create", "lb", VIP, f"--{proto}={VPORT}:8080", f"--endpoints={eps}")
        assert cp.returncode == 0, cp.stderr
    topo.client.ip("addr", "add", f"{FLOOD_SRC}/24", "dev", "eth0")
    probe = Prober(topo)
    probe.http()
    probe.udp()
    assert probe.failures == [] and table_entries(node) <= 4
    tcp_before = tcp_counters(topo.client)

    flood, flood_out = start_flood(lab, topo)
    # Full: at least 90% of the entries in use (the kernel's LRU evicts in batches, so the
    # fill swings between about 75% and 100% while the flood lasts; catch it near the top).
    full_at = wait_for(lambda: (n := table_entries(node)) >= FULL * CT_ENTRIES and n,
                    timeout=10, interval=0.02, what="the flood to fill the conntrack table")

    # During the flood: real connections, and a look at the table every few of them.
    fill_during: list[int] = []
    for i in range(REQUESTS):
        probe.http()
        if i % SAMPLE_EVERY == 0:
            probe.udp()
            fill_during.append(table_entries(node))
        if len(probe.failures) >= 3:
            break  # wedged: no need to wait for 50 timeouts
    flood_went_on = flood.poll() is None
    sent = stop_flood(flood, flood_out)
    during = (probe.ok, probe.udp_ok, probe.slowest)
    assert probe.failures == [], f"new flows failed during the flood: {probe.failures}"
    assert probe.ok == REQUESTS + 1 and probe.udp_ok == len(fill_during) + 1
    assert flood_went_on, "the flood lasted as long as the requests made during it"

    # Far more flows were offered than fit, and the table stayed full all along (the
    # floor: the kernel keeps at most half of a small LRU map on its per-CPU free lists).
    assert sent >= 10 * FLOW_CAPACITY, f"only {sent} flood flows sent"
    assert min(fill_during) >= CT_ENTRIES // 2, fill_during

    # After the flood the table is still full of its closed flows (kept 10 s): the
    # oldest were evicted, only the latest are there; new flows still need an eviction.
    flood_ports = sorted(f["sourcePort"] - FLOOD_BASE_SPORT for f in listed_flows(node)
                         if f["sourceIP"] == FLOOD_SRC)
    fill_after = table_entries(node)
    assert fill_after >= CT_ENTRIES // 2, fill_after
    assert len(flood_ports) <= FLOW_CAPACITY
    assert flood_ports and flood_ports[0] >= sent // 2, (
        f"flood flows sent first (of {sent}) still in the table: {flood_ports[:5]}")
    for i in range(REQUESTS):
        probe.http()
        if i % SAMPLE_EVERY == 0:
            probe.udp()
    assert probe.failures == [], probe.failures
    assert probe.ok == 2 * REQUESTS + 1

    # Nothing of the real traffic was lost: no drop, no retransmission of the client's.
    drops = dp_counters(node)
    tcp_after = tcp_counters(topo.client)
    retrans = tcp_after["RetransSegs"] - tcp_before["RetransSegs"]
    print(f"\nct flood: {sent} flows sent to a table of {CT_ENTRIES} entries "
          f"({FLOW_CAPACITY} flows); fill: {full_at} when first full, during {fill_during}, after "
          f"{fill_after} ({len(flood_ports)} flood flows, oldest #{flood_ports[0]}); "
          f"during: {during[0]}/{REQUESTS + 1} http, {during[1]} udp ok, slowest "
          f"{during[2]:.3f}s; after: {probe.ok - during[0]} http ok; client retransmits "
          f"{retrans}, resets sent {tcp_after['OutRsts'] - tcp_before['OutRsts']}; "
          f"dpstats {drops}; {time.monotonic() - started:.1f}s")
    assert {k: drops[k] for k in TRAFFIC_DROPS} == dict.fromkeys(TRAFFIC_DROPS, 0), drops
    assert retrans == 0, f"{retrans} TCP segments of real connections were retransmitted"
    assert "Traceback" not in node.log(), node.log()[-3000:]
