"""Our load balancer side by side with the alternatives, on one namespace topology, with
real traffic from Debian's tools; every contender as a ratio to direct forwarding measured
in the same round.

    client (198.18.1.2) --- lb (routes; the contender runs here) --- srv1 198.18.11.2
                                                                 \\-- srv2 198.18.12.2

Contenders, one at a time on the same LB namespace (everything the previous one set up is
removed first, and checked to be gone):

- direct     the LB namespace only routes; the client aims at srv1 itself (the limit);
- iptables   DNAT in PREROUTING, two endpoints chosen with ``-m statistic --mode random``
             (kube-proxy's iptables mode); Debian's ``iptables`` (the nf_tables backend);
- nftables   DNAT with ``numgen random mod 2`` (kube-proxy's nftables mode);
- haproxy    HAProxy in TCP mode (the userspace proxy); the VIP is a local address;
- ours       the real ``loxilbd`` in the LB namespace, rules made with ``loxicmd create lb``;
- ours-fullnat  the same with ``--mode=fullnat``. FullNAT'd packets carry the LB's own
             address as source; those the datapath hands to the kernel's forwarding (today:
             GSO super-packets, which fail bpf_fib_lookup's MTU check) are dropped there as
             IP_LOCAL_SOURCE. A 1-s iperf3 probe runs first as the agent leaves the
             namespace; if it moves under 1 Gbit/s, ``net.ipv4.conf.*.accept_local=1`` is
             set for the measures (``fullnat_accept_local`` in the results, and the label).

IPVS is not built into this kernel (CONFIG_IP_VS is not set), so it is not a contender.

Services on VIP 198.18.100.1: port 80 balanced over nginx-light on srv1 and srv2; ports 5201
(iperf3) and 11111 (sockperf) to srv1 only (one backend behind the VIP). Direct
forwarding aims iperf3 and sockperf at srv1, and the HTTP load at both servers: two wrk
processes run side by side in every case (one per server for direct forwarding, both at
the VIP for the others), so that every contender has the same client and server
processes and only the LB differs.

Measures (each contender, each round):
- tput_1 / tput_4: iperf3 TCP, 1 and 4 streams (Gbit/s received, after an omitted warm-up);
- conn_rate: wrk with ``Connection: close``: one TCP connection per request (conn/s);
- rps_keepalive: wrk with keep-alive (requests/s);
- rtt_avg / rtt_p99: sockperf TCP ping-pong round trip (µs).

nginx closes first, so each short connection leaves a TIME_WAIT on a server; the servers
keep none (``tcp_max_tw_buckets=0``), otherwise one contender's leftovers stall the next
one's connections (the same client ports arrive with other sequence and timestamp spaces).

A round runs every contender once (the order rotates from round to round so that drift
spreads evenly); each contender's ratio to direct forwarding is computed within its round,
and the table gives medians over rounds with their spread (min-max).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from lab import Lab, Netns, http_get, tcplb_topology, wait_for, wait_tcp  # noqa: E402
from lbnode import LbNode  # noqa: E402

VIP = "198.18.100.1"
HTTP_PORT, IPERF_PORT, SOCKPERF_PORT = 80, 5201, 11111
FOREIGN_CPU_RETRY_PCT = 20.0  # % of one core used outside the lab during a run
QUIET_PCT = 10.0
FULLNAT_PROBE_MIN_GBPS = 1.0
CONTENDERS = ("direct", "iptables", "nftables", "haproxy", "ours", "ours-fullnat")

# name -> (label, unit, higher is better)
MEASURES: dict[str, tuple[str, str, bool]] = {
    "tput_1": ("iperf3 TCP, 1 stream", "Gbit/s", True),
    "tput_4": ("iperf3 TCP, 4 streams", "Gbit/s", True),
    "conn_rate": ("short connections (wrk, Connection: close)", "conn/s", True),
    "rps_keepalive": ("keep-alive requests (wrk)", "req/s", True),
    "rtt_avg": ("TCP round trip, mean (sockperf ping-pong)", "µs", False),
    "rtt_p99": ("TCP round trip, p99 (sockperf ping-pong)", "µs", False),
}


@dataclasses.dataclass
class Durations:
    rounds: int
    iperf_s: int
    iperf_omit_s: int
    wrk_s: int
    sockperf_s: int
    wrk_conns: int = 16
    quiet_wait_s: float = 20.0
    retry_budget_s: float = 60.0  # total time spent on waiting and re-running, at most

    @classmethod
    def for_mode(cls, quick: bool) -> Durations:
        # Full: 5 rounds x 6 contenders x ~16 s of traffic = ~8 min, which leaves the rest
        # of the 15-minute budget to the other benchmarks. Quick: one round, 1-2 s each.
        return (cls(1, 1, 0, 1, 1, quiet_wait_s=3, retry_budget_s=15) if quick
                else cls(5, 3, 1, 2, 2))


# --------------------------------------------------------------------------- helpers


def _tool_version(*argv: str) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    text = (cp.stdout or cp.stderr).strip().splitlines()
    return text[0] if text else ""


def _cpu_times() -> tuple[float, float, float]:
    """(total, idle, softirq) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return sum(fields[:8]), idle + iowait, softirq


def _proc_cpu_s(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _foreign_cpu_s(lab_netns: set[tuple[int, int]]) -> dict[int, float]:
    """CPU seconds used so far by each user-space process that is neither in the lab's
    namespaces nor this benchmark: other people's work on a shared machine."""
    tick = os.sysconf("SC_CLK_TCK")
    me, total = os.getpid(), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
            if (st.st_dev, st.st_ino) in lab_netns:
                continue
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[6]) & 0x00200000:  # PF_KTHREAD: kernel threads do our softirq work
                continue
            total[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used in between (a process that ended meanwhile is not counted; one
    that started meanwhile counts whole)."""
    return sum(max(0.0, v - before.get(pid, 0.0)) for pid, v in after.items())


class CpuMeter:
    """Machine busy share, softirq share, CPU of the LB's own processes, and CPU taken by
    processes outside the lab (in % of one core)."""

    def __init__(self, pids: list[int], lab_netns: set[tuple[int, int]] | None = None) -> None:
        self.pids = pids
        self.lab_netns = lab_netns or set()

    def __enter__(self) -> CpuMeter:
        self.t0, self.m0, self.p0 = time.monotonic(), _cpu_times(), _proc_cpu_s(self.pids)
        self.f0 = _foreign_cpu_s(self.lab_netns)
        return self

    def __exit__(self, *exc: object) -> None:
        total0, idle0, soft0 = self.m0
        total1, idle1, soft1 = _cpu_times()
        span = max(total1 - total0, 1.0)
        wall = max(time.monotonic() - self.t0, 1e-6)
        self.result = {
            "busy_pct": round(100 * (1 - (idle1 - idle0) / span), 1),
            "softirq_pct": round(100 * (soft1 - soft0) / span, 1),
            "lb_process_cpu_pct": round(100 * (_proc_cpu_s(self.pids) - self.p0) / wall, 1),
            "foreign_cpu_pct": round(
                100 * _cpu_delta(self.f0, _foreign_cpu_s(self.lab_netns)) / wall, 1),
        }


def _ns_pids(ns: Netns, names: tuple[str, ...]) -> list[int]:
    from lab import pids_in_netns
    out = []
    for pid in pids_in_netns(ns.path):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() in names:
                    out.append(pid)
        except OSError:
            pass
    return out


# --------------------------------------------------------------------------- traffic tools


def run_iperf(client: Netns, host: str, streams: int, d: Durations) -> dict[str, Any]:
    cp = client.run("iperf3", "-c", host, "-p", str(IPERF_PORT), "-t", str(d.iperf_s),
                    "-O", str(d.iperf_omit_s), "-P", str(streams), "-J",
                    timeout=d.iperf_s + d.iperf_omit_s + 30, check=False)
    try:
        doc = json.loads(cp.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 to {host}: {cp.stderr.strip() or cp.stdout[-500:]}") from None
    if "error" in doc:
        raise RuntimeError(f"iperf3 to {host}: {doc['error']}")
    end = doc["end"]
    return {"value": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits", 0)}


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _usec(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def _parse_wrk(host: str, out: str) -> dict[str, Any]:
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk to {host}: no rate in {out!r}")
    res: dict[str, Any] = {"value": float(m.group(1))}
    for pct in ("50", "99"):
        pm = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if pm:
            res[f"p{pct}_us"] = _usec(pm.group(1))
    done = re.search(r"(\d+) requests in", out)
    res["requests"] = int(done.group(1)) if done else 0
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in errs.groups()) if errs else 0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["bad_responses"] = int(bad.group(1)) if bad else 0
    return res


def run_wrk(client: Netns, hosts: list[str], close: bool, d: Durations) -> dict[str, Any]:
    """One single-threaded wrk per target, all at once, the connections split evenly;
    rates and counts summed. Direct forwarding aims one at each backend, a load balancer
    gets both at its VIP: the same client processes and the same server processes either
    way (with one wrk at one backend, direct would have half the servers)."""
    conns = max(1, d.wrk_conns // len(hosts))
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{d.wrk_s}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    procs = [client.popen(*argv, f"http://{h}:{HTTP_PORT}/", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) for h in hosts]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=d.wrk_s + 30)[0])
        except subprocess.TimeoutExpired:
            p.kill()
            raise RuntimeError(f"wrk did not finish: {' '.join(argv)}") from None
    parts = [_parse_wrk(h, o) for h, o in zip(hosts, outs, strict=True)]
    res: dict[str, Any] = {k: sum(x[k] for x in parts)
                           for k in ("value", "requests", "socket_errors", "bad_responses")}
    for k in ("p50_us", "p99_us"):
        if all(k in x for x in parts):
            res[k] = max(x[k] for x in parts)
    res["per_wrk"] = [x["value"] for x in parts]
    return res


def run_sockperf(client: Netns, host: str, d: Durations) -> dict[str, Any]:
    cp = client.run("sockperf", "ping-pong", "--tcp", "-i", host, "-p", str(SOCKPERF_PORT),
                    "-t", str(d.sockperf_s), "-m", "64", "--mps=max", "--full-rtt",
                    timeout=d.sockperf_s + 30, check=False)
    out = cp.stdout + cp.stderr
    avg = re.search(r"avg-rtt=([\d.]+)", out) or re.search(r"avg-lat=\s*([\d.]+)", out)
    p99 = re.search(r"percentile 99\.000 =\s*([\d.]+)", out)
    p50 = re.search(r"percentile 50\.000 =\s*([\d.]+)", out)
    if not (avg and p99):
        raise RuntimeError(f"sockperf to {host} (exit {cp.returncode}): {out[-800:]}")
    return {"value": float(avg.group(1)), "p99": float(p99.group(1)),
            "p50": float(p50.group(1)) if p50 else None}


# --------------------------------------------------------------------------- the bench lab


@dataclasses.dataclass
class BenchNode(LbNode):
    """The agent as an operator would run it: default log level, a conntrack table large
    enough for the connection-rate runs (LbNode's test defaults are debug and 16 k)."""

    ct_entries: int = 262144

    def start(self) -> BenchNode:
        self.starts += 1
        with open(self.log_path, "w") as log:
            self.proc = self.ns.popen(
                "loxilbd", "--port", str(self.port), "--state-dir", str(self.state_dir),
                "--bpffs-dir", self.pin_dir, "--interfaces", ",".join(self.interfaces),
                "--ct-entries", str(self.ct_entries), "--log-level", "info",
                stdout=subprocess.DEVNULL, stderr=log,
            )
        wait_for(self._ready, timeout=30, what=f"loxilbd ready on port {self.port}")
        return self


_NGINX_CONF = """
worker_processes 2;
daemon off;
pid {work}/nginx-{name}.pid;
error_log {work}/nginx-{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    client_body_temp_path {work}/nginx-{name}-body;
    server {{
        listen {port} reuseport backlog=8192;
        location / {{ return 200 "{name}\\n"; }}
    }}
}}
"""

_HAPROXY_CONF = """
global
    maxconn 8000
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend http
    bind {vip}:{http}
    default_backend http
backend http
    balance roundrobin
    server s1 {s1}:{http}
    server s2 {s2}:{http}
frontend iperf
    bind {vip}:{iperf}
    default_backend iperf
backend iperf
    server s1 {s1}:{iperf}
frontend sockperf
    bind {vip}:{sockperf}
    default_backend sockperf
backend sockperf
    server s1 {s1}:{sockperf}
"""


class NetBench:
    def __init__(self, lab: Lab, d: Durations, log: Callable[[str], None]) -> None:
        self.lab, self.d, self.log = lab, d, log
        self.topo = tcplb_topology(lab, n_backends=2)
        self.client, self.lb = self.topo.client, self.topo.lb
        self.s1, self.s2 = self.topo.backend_ips
        self.node: BenchNode | None = None
        self.lb_pids: list[int] = []
        self.nodes_started = 0
        self.fullnat_probe: list[float] = []
        self.fullnat_accept_local = False
        self.retry_spent_s = 0.0
        for ns in (self.client, self.lb):
            ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")
            ns.sysctl("net.ipv4.tcp_tw_reuse", 1)
        work = lab.workdir
        for srv, name in zip(self.topo.backends, ("srv1", "srv2"), strict=True):
            srv.sysctl("net.core.somaxconn", 8192)
            # No TIME_WAIT on the servers: contenders give the servers the same 4-tuples
            # with unrelated sequence/timestamp spaces (client->VIP, client->server, HAProxy's
            # own connections), so a TIME_WAIT left by one contender turns the next one's
            # SYNs into "old duplicates" and its short connections into 1-s SYN retransmits.
            srv.sysctl("net.ipv4.tcp_max_tw_buckets", 0)
            conf = work / f"nginx-{name}.conf"
            conf.write_text(_NGINX_CONF.format(work=work, name=name, port=HTTP_PORT))
            srv.popen("nginx", "-e", str(work / f"nginx-{name}-early.log"), "-p", str(work),
                      "-c", str(conf), stdout=subprocess.DEVNULL,
                      stderr=open(work / f"nginx-{name}.out", "w"))  # noqa: SIM115
        srv1 = self.topo.backends[0]
        srv1.popen("iperf3", "-s", "-p", str(IPERF_PORT), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
        srv1.popen("sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", str(SOCKPERF_PORT),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for ip in (self.s1, self.s2):
            wait_tcp(self.lb, ip, HTTP_PORT)
        wait_tcp(self.lb, self.s1, IPERF_PORT)
        wait_tcp(self.lb, self.s1, SOCKPERF_PORT)

    # -- checks -------------------------------------------------------------
    def lb_state(self) -> dict[str, Any]:
        """What contenders can leave behind in the LB namespace."""
        nft = self.lb.run("nft", "list", "ruleset").stdout.strip()
        filters = {}
        for ifname in self.topo.lb_ifaces:
            qd = self.lb.run("tc", "qdisc", "show", "dev", ifname).stdout
            filters[ifname] = "clsact" in qd
        addrs = self.lb.run("ip", "-4", "-o", "addr", "show", "dev", "lo").stdout
        accept_local = {ifname: self.lb.run("sysctl", "-n", f"net.ipv4.conf.{ifname}.accept_local")
                        .stdout.strip() != "0" for ifname in ["all", *self.topo.lb_ifaces]}
        return {"nft": nft, "clsact": filters, "vip_local": VIP in addrs,
                "accept_local": accept_local,
                "haproxy": bool(_ns_pids(self.lb, ("haproxy",))),
                "loxilbd": bool(_ns_pids(self.lb, ("loxilbd",)))}

    def assert_clean(self) -> None:
        st = self.lb_state()
        dirty = [k for k, v in st.items() if (any(v.values()) if isinstance(v, dict) else v)]
        if dirty:
            raise RuntimeError(f"LB namespace not clean before a contender: {dirty}: {st}")

    def lb_packets(self) -> tuple[int, int]:
        """(packets received on the LB's interfaces, packets the LB's kernel forwarded
        (Ip ForwDatagrams)): what our datapath redirects itself never reaches the
        kernel's forwarding."""
        links = json.loads(self.lb.run("ip", "-s", "-j", "link", "show").stdout)
        rx = sum(x["stats64"]["rx"]["packets"] for x in links
                 if x["ifname"] in self.topo.lb_ifaces)
        snmp = self.lb.run("cat", "/proc/net/snmp").stdout.splitlines()
        head, vals = [line.split() for line in snmp if line.startswith("Ip:")][:2]
        return rx, int(dict(zip(head, vals, strict=True))["ForwDatagrams"])

    def conntrack_count(self) -> int:
        try:
            return int(self.lb.run("cat", "/proc/sys/net/netfilter/nf_conntrack_count")
                       .stdout.strip() or 0)
        except Exception:
            return -1

    def check_service(self, host: str, balanced: bool) -> list[str]:
        """Requests through the contender reach the backends (both, when balanced)."""
        seen = set()
        for _ in range(12):
            seen.add(http_get(self.client, f"http://{host}:{HTTP_PORT}/", timeout=3).strip())
        want = {"srv1", "srv2"} if balanced else {"srv1"}
        if seen != want:
            raise RuntimeError(f"{host}:{HTTP_PORT} answered from {sorted(seen)}, "
                               f"expected {sorted(want)}")
        wait_tcp(self.client, host, IPERF_PORT, timeout=5)
        wait_tcp(self.client, host, SOCKPERF_PORT, timeout=5)
        return sorted(seen)

    # -- contenders: set up, return the target -------------------------------
    def up_direct(self) -> str:
        self.lb_pids = []
        self.check_service(self.s1, balanced=False)
        wait_tcp(self.client, self.s2, HTTP_PORT, timeout=5)
        return self.s1

    def up_iptables(self) -> str:
        rules = "\n".join([
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":LB-SVC-HTTP - [0:0]",
            f"-A PREROUTING -d {VIP}/32 -p tcp --dport {HTTP_PORT} -j LB-SVC-HTTP",
            f"-A LB-SVC-HTTP -p tcp -m statistic --mode random --probability 0.5 "
            f"-j DNAT --to-destination {self.s1}:{HTTP_PORT}",
            f"-A LB-SVC-HTTP -p tcp -j DNAT --to-destination {self.s2}:{HTTP_PORT}",
            f"-A PREROUTING -d {VIP}/32 -p tcp --dport {IPERF_PORT} "
            f"-j DNAT --to-destination {self.s1}:{IPERF_PORT}",
            f"-A PREROUTING -d {VIP}/32 -p tcp --dport {SOCKPERF_PORT} "
            f"-j DNAT --to-destination {self.s1}:{SOCKPERF_PORT}",
            "COMMIT", ""])
        self.lb.run("iptables-restore", input=rules)
        self.lb_pids = []
        self.check_service(VIP, balanced=True)
        return VIP

    def up_nftables(self) -> str:
        rules = f"""
table ip lbbench {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP} tcp dport {HTTP_PORT} dnat to numgen random mod 2 map {{ 0 : {self.s1}, 1 : {self.s2} }}
        ip daddr {VIP} tcp dport {IPERF_PORT} dnat to {self.s1}
        ip daddr {VIP} tcp dport {SOCKPERF_PORT} dnat to {self.s1}
    }}
}}
"""  # noqa: E501
        self.lb.run("nft", "-f", "-", input=rules)
        self.lb_pids = []
        self.check_service(VIP, balanced=True)
        return VIP

    def up_haproxy(self) -> str:
        self.lb.ip("addr", "add", f"{VIP}/32", "dev", "lo")
        conf = self.lab.workdir / "haproxy.cfg"
        conf.write_text(_HAPROXY_CONF.format(vip=VIP, s1=self.s1, s2=self.s2, http=HTTP_PORT,
                                             iperf=IPERF_PORT, sockperf=SOCKPERF_PORT))
        self.haproxy = self.lb.popen("haproxy", "-db", "-f", str(conf),
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.lab.workdir / "haproxy.log", "a"))  # noqa: SIM115
        wait_tcp(self.client, VIP, HTTP_PORT, timeout=10)
        self.lb_pids = [self.haproxy.pid]
        self.check_service(VIP, balanced=True)
        return VIP

    def _ours_rules(self, mode: str) -> None:
        assert self.node is not None
        extra = ["--mode=fullnat"] if mode == "fullnat" else []
        for port, eps in ((HTTP_PORT, f"{self.s1}:1,{self.s2}:1"),
                          (IPERF_PORT, f"{self.s1}:1"), (SOCKPERF_PORT, f"{self.s1}:1")):
            cp = self.node.loxicmd("create", "lb", VIP, f"--tcp={port}:{port}",
                                   f"--endpoints={eps}", *extra, f"--name=bench{port}")
            if cp.returncode != 0:
                raise RuntimeError(f"loxicmd create lb (port {port}, {mode}): "
                                   f"{cp.stderr.strip()} {cp.stdout.strip()}")

    def up_ours(self) -> str:
        self.nodes_started += 1
        self.node = BenchNode(self.lab, self.lb, list(self.topo.lb_ifaces),
                              state_dir=self.lab.workdir / f"state-{self.nodes_started}")
        self.node.start()
        self._ours_rules("default")
        assert self.node.proc is not None
        self.lb_pids = [self.node.proc.pid]
        self.check_service(VIP, balanced=True)
        return VIP

    def up_ours_fullnat(self) -> str:
        assert self.node is not None, "ours-fullnat follows ours in a round"
        for port in (HTTP_PORT, IPERF_PORT, SOCKPERF_PORT):
            cp = self.node.loxicmd("delete", "lb", VIP, f"--tcp={port}")
            if cp.returncode != 0:
                raise RuntimeError(f"loxicmd delete lb: {cp.stderr.strip()}")
        self._ours_rules("fullnat")
        self.check_service(VIP, balanced=True)
        probe = dataclasses.replace(self.d, iperf_s=1, iperf_omit_s=0)
        self.fullnat_probe.append(run_iperf(self.client, VIP, 1, probe)["value"])
        if self.fullnat_probe[-1] < FULLNAT_PROBE_MIN_GBPS:
            self.set_accept_local(1)
            self.fullnat_accept_local = True
        return VIP

    def set_accept_local(self, value: int) -> None:
        for ifname in ["all", *self.topo.lb_ifaces]:
            self.lb.sysctl(f"net.ipv4.conf.{ifname}.accept_local", value)

    # -- teardown of whatever is up ------------------------------------------
    def down(self, contender: str) -> None:
        if contender in ("iptables", "nftables"):
            self.lb.run("nft", "flush", "ruleset")
        elif contender == "haproxy":
            proc = getattr(self, "haproxy", None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            self.lb.ip("addr", "del", f"{VIP}/32", "dev", "lo", check=False)
        elif contender == "ours-fullnat" and self.node is not None:
            node, self.node = self.node, None
            if node.proc is not None:
                node.stop()
            self.lb.run("loxilbd", "--cleanup", "--bpffs-dir", node.pin_dir, timeout=60)
            self.set_accept_local(0)
            for ifname in self.topo.lb_ifaces:
                self.lb.run("tc", "qdisc", "del", "dev", ifname, "clsact", check=False)
        self.lb_pids = []

    # -- one contender's measures ---------------------------------------------
    @property
    def lab_netns(self) -> set[tuple[int, int]]:
        ids = set()
        for ns in self.lab.namespaces.values():
            st = os.stat(ns.path)
            ids.add((st.st_dev, st.st_ino))
        return ids

    def wait_quiet(self, max_wait: float | None = None) -> float:
        """Wait (bounded) until processes outside the lab use under QUIET_PCT of a core
        over half a second; returns the last reading."""
        start = time.monotonic()
        left = self.d.retry_budget_s - self.retry_spent_s
        deadline = start + max(0.0, min(self.d.quiet_wait_s if max_wait is None else max_wait,
                                        left))
        ids = self.lab_netns
        try:
            while True:
                f0, t0 = _foreign_cpu_s(ids), time.monotonic()
                time.sleep(0.5)
                pct = 100 * _cpu_delta(f0, _foreign_cpu_s(ids)) / (time.monotonic() - t0)
                if pct < QUIET_PCT or time.monotonic() >= deadline:
                    return pct
        finally:
            self.retry_spent_s += max(0.0, time.monotonic() - start - 0.5)

    def measure(self, contender: str, target: str) -> dict[str, Any]:
        d, res = self.d, {}
        http = [self.s1, self.s2] if contender == "direct" else [target, target]
        ct_before = self.conntrack_count()
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("tput_1", lambda: run_iperf(self.client, target, 1, d)),
            ("tput_4", lambda: run_iperf(self.client, target, 4, d)),
            ("conn_rate", lambda: run_wrk(self.client, http, True, d)),
            ("rps_keepalive", lambda: run_wrk(self.client, http, False, d)),
            ("rtt", lambda: run_sockperf(self.client, target, d)),
        ]
        for name, fn in steps:
            retried = None
            for attempt in range(2):
                if attempt:
                    self.wait_quiet()
                t0 = time.monotonic()
                rx0, fwd0 = self.lb_packets()
                with CpuMeter(self.lb_pids, self.lab_netns) as cpu:
                    r = fn()
                rx1, fwd1 = self.lb_packets()
                r["lb_rx_packets"] = rx1 - rx0
                r["kernel_forwarded_pct"] = round(100 * (fwd1 - fwd0) / max(rx1 - rx0, 1), 1)
                # Someone else's load took CPU from this run: measure it once more (within
                # the retry budget, so that the suite keeps to its time).
                if (cpu.result["foreign_cpu_pct"] <= FOREIGN_CPU_RETRY_PCT or attempt
                        or self.retry_spent_s >= self.d.retry_budget_s):
                    break
                self.retry_spent_s += time.monotonic() - t0
                retried = cpu.result["foreign_cpu_pct"]
            r["cpu"] = cpu.result
            if retried is not None:
                r["retried_after_foreign_cpu_pct"] = retried
            if name == "rtt":
                res["rtt_avg"] = r
                res["rtt_p99"] = {"value": r["p99"], "cpu": cpu.result,
                                  "kernel_forwarded_pct": r["kernel_forwarded_pct"]}
            else:
                res[name] = r
        res["nf_conntrack_new"] = self.conntrack_count() - ct_before
        return res


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds, spread, and ratios to direct forwarding computed within each
    round (ratio = contender / direct; for latencies > 1 means slower)."""
    out: dict[str, Any] = {}
    for c in CONTENDERS:
        out[c] = {}
        for m in MEASURES:
            vals = [r["results"][c][m]["value"] for r in rounds if c in r["results"]]
            pairs = [r["results"][c][m]["value"] / r["results"]["direct"][m]["value"]
                     for r in rounds if c in r["results"] and "direct" in r["results"]]
            vs_ipt = [r["results"][c][m]["value"] / r["results"]["iptables"][m]["value"]
                      for r in rounds if c in r["results"] and "iptables" in r["results"]]
            if not vals:
                continue
            entry: dict[str, Any] = {"median": statistics.median(vals), "min": min(vals),
                                     "max": max(vals), "n": len(vals)}
            if pairs:
                entry.update(ratio=statistics.median(pairs), ratio_min=min(pairs),
                             ratio_max=max(pairs))
            if vs_ipt:
                entry["ratio_vs_iptables"] = statistics.median(vs_ipt)
            cpu = [r["results"][c][m]["cpu"] for r in rounds if c in r["results"]]
            entry["cpu_busy_pct"] = statistics.median(x["busy_pct"] for x in cpu)
            entry["softirq_pct"] = statistics.median(x["softirq_pct"] for x in cpu)
            entry["lb_process_cpu_pct"] = statistics.median(x["lb_process_cpu_pct"] for x in cpu)
            entry["foreign_cpu_pct_max"] = max(x.get("foreign_cpu_pct", 0) for x in cpu)
            fwd = [r["results"][c][m].get("kernel_forwarded_pct") for r in rounds
                   if c in r["results"]]
            if all(x is not None for x in fwd):
                entry["kernel_forwarded_pct"] = statistics.median(fwd)
            out[c][m] = entry
    return out


def bpf_profile(nb: NetBench, d: Durations) -> dict[str, Any]:
    """Our program's own run time per packet under real traffic (kernel.bpf_stats_enabled,
    switched on only for this extra run and restored after), beside the same run's
    per-packet wall budget."""
    nb.assert_clean()
    target = nb.up_ours()
    out: dict[str, Any] = {}
    old = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    try:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1\n")
        prog_ids = _our_prog_ids(nb)

        def snapshot() -> tuple[int, int]:
            t = c = 0
            for pid in prog_ids:
                info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id",
                                                  str(pid)], capture_output=True, text=True,
                                                 check=True).stdout)
                t += info.get("run_time_ns", 0)
                c += info.get("run_cnt", 0)
            return t, c

        for name, fn in (("tput_1", lambda: run_iperf(nb.client, target, 1, d)),
                         ("conn_rate", lambda: run_wrk(nb.client, [target] * 2, True, d))):
            t0, c0 = snapshot()
            r = fn()
            t1, c1 = snapshot()
            runs = max(c1 - c0, 1)
            out[name] = {"value": r["value"], "prog_runs": c1 - c0,
                         "prog_ns_per_run": (t1 - t0) / runs,
                         "prog_cpu_s": (t1 - t0) / 1e9}
        out["prog_ids"] = prog_ids
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(old + "\n")
        nb.down("ours-fullnat")
    return out


def _our_prog_ids(nb: NetBench) -> list[int]:
    ids = set()
    for ifname in nb.topo.lb_ifaces:
        out = nb.lb.run("tc", "-j", "filter", "show", "dev", ifname, "ingress").stdout
        for f in json.loads(out or "[]"):
            opts = f.get("options", {})
            if "prog" in opts:
                ids.add(int(opts["prog"]["id"]))
    return sorted(ids)


def main(quick: bool = False, rounds: int | None = None,
         log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
         profile: bool = True) -> dict[str, Any]:
    d = Durations.for_mode(quick)
    if rounds:
        d.rounds = rounds
    started = time.monotonic()
    result: dict[str, Any] = {
        "durations": dataclasses.asdict(d),
        "tools": {
            "iperf3": _tool_version("iperf3", "--version"),
            "wrk": _tool_version("wrk", "--version"),
            "sockperf": _tool_version("sockperf", "--version"),
            "haproxy": _tool_version("haproxy", "-v"),
            "nginx": _tool_version("nginx", "-v"),
            "iptables": _tool_version("iptables", "-V"),
            "nft": _tool_version("nft", "--version"),
        },
        "ipvs": "not measured: CONFIG_IP_VS is not set in this kernel",
        "rounds": [],
        "loadavg_start": os.getloadavg(),
    }
    blocks = [("direct",), ("iptables",), ("nftables",), ("haproxy",), ("ours", "ours-fullnat")]
    with Lab() as lab:
        nb = NetBench(lab, d, log)
        for r in range(d.rounds):
            order = blocks[r % len(blocks):] + blocks[:r % len(blocks)]
            rnd: dict[str, Any] = {"order": [c for b in order for c in b], "results": {},
                                   "foreign_cpu_pct_before": {}}
            for block in order:
                nb.assert_clean()
                try:
                    for c in block:
                        target = getattr(nb, "up_" + c.replace("-", "_"))()
                        rnd["foreign_cpu_pct_before"][c] = round(nb.wait_quiet(), 1)
                        t = time.monotonic()
                        rnd["results"][c] = nb.measure(c, target)
                        m = rnd["results"][c]
                        others = max(x["cpu"]["foreign_cpu_pct"] for x in m.values()
                                     if isinstance(x, dict) and "cpu" in x)
                        log(f"  round {r + 1}/{d.rounds} {c:13s} "
                            f"1s {m['tput_1']['value']:6.2f} 4s {m['tput_4']['value']:6.2f} "
                            f"Gbit/s  conn {m['conn_rate']['value']:8.0f}/s  "
                            f"ka {m['rps_keepalive']['value']:8.0f}/s  "
                            f"rtt {m['rtt_avg']['value']:6.1f} µs p99 "
                            f"{m['rtt_p99']['value']:6.1f}  ({time.monotonic() - t:.0f} s; "
                            f"others {others:.0f} % of a core)")
                finally:
                    nb.down(block[-1] if block[-1] == "ours-fullnat" else block[0])
            result["rounds"].append(rnd)
        if profile:
            result["bpf_profile"] = bpf_profile(nb, d)
        nb.assert_clean()
        result["fullnat_probe_gbps_without_accept_local"] = nb.fullnat_probe
        result["fullnat_accept_local"] = nb.fullnat_accept_local
    result["loadavg_end"] = os.getloadavg()
    result["summary"] = _summary(result["rounds"])
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


CONTENDER_LABELS = {
    "direct": "direct forwarding",
    "iptables": "iptables DNAT (statistic)",
    "nftables": "nftables DNAT (numgen)",
    "haproxy": "HAProxy TCP mode",
    "ours": "ours, default (DNAT)",
    "ours-fullnat": "ours, fullNAT",
}


def _fmt(v: float, unit: str) -> str:
    if unit == "Gbit/s":
        return f"{v:.2f}"
    if unit == "µs":
        return f"{v:.1f}"
    return f"{v:,.0f}"


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per measure, one column per contender; each cell is the median
    over rounds (min-max) and, under it, the median of the per-round ratios to direct
    forwarding (min-max)."""
    s = result["summary"]
    n = len(result["rounds"])
    cols = [c for c in CONTENDERS if c in s]
    labels = dict(CONTENDER_LABELS)
    if result.get("fullnat_accept_local"):
        labels["ours-fullnat"] += " (accept_local=1)"
    lines = ["| measure | " + " | ".join(labels[c] for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for m, (label, unit, higher) in MEASURES.items():
        cells = []
        for c in cols:
            e = s[c].get(m)
            if not e:
                cells.append("")
                continue
            cell = _fmt(e["median"], unit)
            if n > 1:
                cell += f" ({_fmt(e['min'], unit)}-{_fmt(e['max'], unit)})"
            if c != "direct" and "ratio" in e:
                cell += f"<br>**×{e['ratio']:.2f}**"
                if n > 1:
                    cell += f" ({e['ratio_min']:.2f}-{e['ratio_max']:.2f})"
            cells.append(cell)
        lines.append(f"| {label}, {unit}{'' if higher else ' (lower is better)'} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Medians of {n} round(s) (min-max); **×ratio** = contender / direct "
                 "forwarding within the same round, median (min-max) over rounds (for "
                 "latencies above 1 is slower). IPVS: not measured, not built into this "
                 "kernel (CONFIG_IP_VS is not set).")
    probe = result.get("fullnat_probe_gbps_without_accept_local")
    if probe and result.get("fullnat_accept_local"):
        lines.append("")
        lines.append("fullNAT without `accept_local=1` (as the agent leaves the namespace): "
                     f"iperf3 1 stream {statistics.median(probe) * 1000:.1f} Mbit/s: the "
                     "kernel drops GSO packets whose rewritten source is the LB's own address "
                     "(IP_LOCAL_SOURCE).")
    prof = result.get("bpf_profile")
    if prof:
        lines.append("")
        lines.append("Our TC program under real traffic (bpf_stats, separate run): " + "; ".join(
            f"{k}: {v['prog_ns_per_run']:.0f} ns/packet over {v['prog_runs']:,} packets"
            for k, v in prof.items() if isinstance(v, dict)) + ".")
    fwd_lines = []
    for c in ("ours", "ours-fullnat"):
        if c in s:
            fwd_lines.append(f"{c}: " + ", ".join(
                f"{m} {s[c][m]['kernel_forwarded_pct']:.0f} %" for m in MEASURES
                if m != "rtt_p99" and "kernel_forwarded_pct" in s[c].get(m, {})))
    if fwd_lines:
        lines.append("")
        lines.append("Packets left to the kernel's forwarding (Ip ForwDatagrams / packets "
                     "received on the LB's interfaces; the rest our datapath redirected "
                     "itself): " + "; ".join(fwd_lines) + ".")
    cpu_lines = []
    for c in CONTENDERS:
        if c in s and "conn_rate" in s[c]:
            e = s[c]["conn_rate"]
            cpu_lines.append(f"{c} {e['cpu_busy_pct']:.0f} % busy, {e['softirq_pct']:.0f} % "
                             f"softirq, LB process {e['lb_process_cpu_pct']:.0f} % of a core")
    if cpu_lines:
        lines.append("")
        lines.append("CPU during the short-connection runs (2 cores = 100 %): "
                     + "; ".join(cpu_lines) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    res = main(args.quick, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"\n{res['seconds']} s", file=sys.stderr)
