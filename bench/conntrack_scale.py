"""Conntrack at scale and the control plane.

Conntrack scale (``ct_scale``): for a conntrack table of N entries (10 k, 100 k, 1 M),
filled to N with established flows (a pair of entries each, written with batch updates):

- memory: the kernel's own accounting of the map (``memlock`` in its fdinfo); the table
  is an LRU hash, preallocated, so this is what N entries cost whether used or not;
- lookup cost: BPF_PROG_TEST_RUN of established-flow packets of flows drawn at random
  from the whole table (so cache misses are those of a table of that size), beside the
  same packets on the smallest table; every probe is checked to have hit its flow;
- first packet on the full table (service lookup, selection and an insert that has to
  evict from the LRU);
- a full dump from user space (batch lookups), which is what ``get ct`` has to read.

Control plane (``control_plane``), against the real agent in a lab namespace:

- create N rules through the API (one keep-alive connection, timed inside the client);
- create the same N rules through ``loxicmd apply -f`` (one YAML file, one process);
- one ``loxicmd create lb`` with N rules present (median of several invocations);
- ``loxicmd get lb`` with N rules, and ``loxicmd get ct`` with F flows in the agent's
  conntrack table (written into its pinned map; ``-o json`` once, to count the rows).
"""

from __future__ import annotations

import ctypes
import json
import random
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from datapath import layouts as L  # noqa: E402
from datapath.libbpf import BpfMap, prog_test_run  # noqa: E402

VIP = "198.18.100.1"
_KEY = struct.Struct("=IIHHB3x")
_ENTRY = struct.Struct("=IIHHB3x" "IIHH" "IIII" "BBBB" "I" "B3x" "QQQQ")
assert _KEY.size == ctypes.sizeof(L.LbCtKey) and _ENTRY.size == ctypes.sizeof(L.LbCtEntry)


def _map_memlock(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return 0


def _client(i: int) -> tuple[int, int]:
    """A distinct (client address as be32, client port) for flow i (up to ~13 M)."""
    host = i // 60000
    addr = socket.inet_aton(f"198.18.{2 + host // 250 % 200}.{1 + host % 250}")
    return struct.unpack("=I", addr)[0], 1024 + i % 60000


def fill_flows(ct: BpfMap, flows: int, *, vip: str, vport: int, ep: str, eport: int,
               rule_id: int, slot: int, first: int = 0, snat: str = "",
               chunk: int = 65536) -> None:
    """Write `flows` established TCP flows (original and reply entries) into `ct`."""
    now = time.monotonic_ns()
    vip_be, ep_be = L.ip_to_be32(vip), L.ip_to_be32(ep)
    vport_be, eport_be = L.port_to_be16(vport), L.port_to_be16(eport)
    snat_be = L.ip_to_be32(snat) if snat else 0
    tcp = socket.IPPROTO_TCP
    for start in range(first, first + flows, chunk // 2):
        n = min(chunk // 2, first + flows - start)
        keys = bytearray(2 * n * _KEY.size)
        vals = bytearray(2 * n * _ENTRY.size)
        for j in range(n):
            caddr, cport = _client(start + j)
            cport_be = L.port_to_be16(cport)
            okey = (caddr, vip_be, cport_be, vport_be, tcp)
            rkey = (ep_be, snat_be or caddr, eport_be, cport_be, tcp)
            oxl = L.Xlate.DADDR | L.Xlate.DPORT | (L.Xlate.SADDR | L.Xlate.SPORT if snat else 0)
            rxl = L.Xlate.SADDR | L.Xlate.SPORT | (L.Xlate.DADDR | L.Xlate.DPORT if snat else 0)
            _KEY.pack_into(keys, 2 * j * _KEY.size, *okey)
            _KEY.pack_into(keys, (2 * j + 1) * _KEY.size, *rkey)
            _ENTRY.pack_into(vals, 2 * j * _ENTRY.size, *rkey,
                             snat_be, ep_be, cport_be if snat else 0, eport_be,
                             rule_id, slot, 3600, 0, L.CtDir.ORIGINAL, L.CtState.EST, 0, oxl,
                             L.CtFlags.COUNTED, 2 if snat else 0, now, now, 10, 1000)
            _ENTRY.pack_into(vals, (2 * j + 1) * _ENTRY.size, *okey,
                             vip_be, caddr if snat else 0, vport_be, cport_be if snat else 0,
                             rule_id, slot, 3600, 0, L.CtDir.REPLY, L.CtState.EST, 0, rxl,
                             0, 2 if snat else 0, now, now, 10, 1000)
        karr = (L.LbCtKey * (2 * n)).from_buffer(keys)
        varr = (L.LbCtEntry * (2 * n)).from_buffer(vals)
        ct.update_batch(karr, varr)


def _frame(template: bytes, i: int, flags: int = 0x10) -> bytes:
    raw = bytearray(template)
    caddr, cport = _client(i)
    raw[26:30] = struct.pack("=I", caddr)
    raw[34:36] = cport.to_bytes(2, "big")
    raw[47] = flags
    return bytes(raw)


def ct_scale(sizes: tuple[int, ...], probes: int, dump: bool = True) -> dict[str, Any]:
    from dp_harness import EPS, DpHarness, lb_body, tcp
    out: dict[str, Any] = {"probes": probes, "sizes": {}}
    template = bytes(tcp(flags="A", seq=5000))
    rng = random.Random(7)
    for n in sizes:
        t_size = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            h = DpHarness(Path(tmp), ct_entries=n)
            try:
                h.apply(lb_body(eps=EPS[:1]))
                rule_id, slot = h.rule_id(), h.slot_of(EPS[0])
                ct = h.dp.maps["lb_conntrack"]
                flows = n // 2
                t = time.monotonic()
                fill_flows(ct, flows, vip=VIP, vport=2020, ep=EPS[0], eport=8080,
                           rule_id=rule_id, slot=slot)
                fill_s = time.monotonic() - t
                picks = [rng.randrange(flows) for _ in range(probes)]
                frames = [_frame(template, i) for i in picks]
                durations, hits = [], 0
                for f in frames:
                    res = prog_test_run(h.dp.prog_fd, f)
                    durations.append(res.duration_ns)
                    hits += res.data[30:34] == socket.inet_aton(EPS[0])
                # First packets of new flows on the full table (LRU eviction included).
                syns = [_frame(template, flows + 10 + i, flags=0x02) for i in range(probes)]
                first = [prog_test_run(h.dp.prog_fd, f).duration_ns for f in syns]
                h.events()
                entry: dict[str, Any] = {
                    "entries": n, "flows": flows,
                    "memlock_bytes": _map_memlock(ct.fd),
                    "fill_s": round(fill_s, 2),
                    "established_ns_mean": statistics.fmean(durations),
                    "established_ns_median": statistics.median(durations),
                    "probe_hits": hits,
                    "first_packet_ns_mean": statistics.fmean(first),
                    "first_packet_ns_median": statistics.median(first),
                }
                entry["memlock_bytes_per_entry"] = entry["memlock_bytes"] / n
                if dump:
                    t = time.monotonic()
                    count = sum(len(page) for page in _pages(ct))
                    entry["dump_s"] = round(time.monotonic() - t, 3)
                    entry["dump_entries"] = count
            finally:
                h.close()
        entry["seconds"] = round(time.monotonic() - t_size, 1)
        out["sizes"][str(n)] = entry
    base = out["sizes"][str(sizes[0])]["established_ns_mean"]
    for e in out["sizes"].values():
        e["established_x_smallest"] = e["established_ns_mean"] / base
    return out


def _pages(ct: BpfMap, batch: int = 8192):  # type: ignore[no-untyped-def]
    token = None
    while True:
        page, token = ct.page(token, batch)
        yield page
        if token is None:
            return


# --------------------------------------------------------------------------- control plane

_libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libbpf.bpf_obj_get.argtypes = [ctypes.c_char_p]
_libbpf.bpf_obj_get.restype = ctypes.c_int


def _pinned(pin_dir: str, name: str) -> BpfMap:
    fd = _libbpf.bpf_obj_get(f"{pin_dir}/{name}".encode())
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"bpf_obj_get {pin_dir}/{name}")
    key_t, val_t = L.MAPS[name]
    return BpfMap(fd, name, key_t, val_t, owned=True)


_API_CREATE = """
import http.client, json, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
bodies = [json.loads(line) for line in sys.stdin]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
t = time.perf_counter()
bad = []
for body in bodies:
    conn.request("POST", "/netlox/v1/config/loadbalancer", json.dumps(body),
                 {"Content-Type": "application/json"})
    r = conn.getresponse(); text = r.read()
    if r.status != 200:
        bad.append(f"{r.status} {text[:200]!r}")
print(json.dumps({"seconds": time.perf_counter() - t, "refused": len(bad), "first": bad[:1]}))
"""


def _rule(i: int) -> dict[str, Any]:
    return {"serviceArguments": {"externalIP": f"198.18.{120 + i // 250}.{1 + i % 250}",
                                 "port": 80, "protocol": "tcp", "name": f"cp{i}"},
            "endpoints": [{"endpointIP": "198.18.11.2", "targetPort": 8080, "weight": 1}]}


def _timed(ns: Any, argv: list[str], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        cp = ns.run(*argv, timeout=600, check=False)
        times.append(time.perf_counter() - t)
        if cp.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])}: exit {cp.returncode}: {cp.stderr[-400:]}")
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": runs}


def control_plane(rules: int, flows: int, runs: int) -> dict[str, Any]:
    from lab import Lab
    from netbench import BenchNode
    out: dict[str, Any] = {"rules": rules, "flows": flows, "runs": runs}
    with Lab() as lab:
        lb, peer = lab.add_ns("lb"), lab.add_ns("peer")
        lab.link(lb, peer, "eth0", "eth0", "198.18.11.1/24", "198.18.11.2/24")
        bodies = [_rule(i) for i in range(rules)]

        # API: a fresh agent, N rules over one keep-alive connection.
        node = BenchNode(lab, lb, ["eth0"], ct_entries=max(4 * flows, 65536),
                         state_dir=lab.workdir / "state-api").start()
        cp = lb.run(sys.executable, "-c", _API_CREATE, str(node.port), str(rules),
                    input="".join(json.dumps(b) + "\n" for b in bodies), timeout=1200)
        api = json.loads(cp.stdout)
        out["create_api"] = {"seconds": api["seconds"], "refused": api["refused"],
                             "per_rule_ms": 1000 * api["seconds"] / rules}
        loxicmd = ["loxicmd", "-p", str(node.port)]
        out["get_lb"] = _timed(lb, [*loxicmd, "get", "lb"], runs)
        out["create_one_loxicmd"] = _timed_creates(lb, loxicmd, rules, runs)

        # get ct with F flows in the agent's own (pinned) table.
        ct = _pinned(node.pin_dir, "lb_conntrack")
        svc = _pinned(node.pin_dir, "lb_services")
        eps = _pinned(node.pin_dir, "lb_endpoints")
        try:
            key = L.LbSvcKey(vip=L.ip_to_be32(_rule(0)["serviceArguments"]["externalIP"]),
                             port=L.port_to_be16(80), proto=socket.IPPROTO_TCP, mark=0)
            rule_id = svc.lookup(key).rule_id
            slot = next(s for s in range(L.LB_MAX_EP_SLOTS)
                        if (e := eps.lookup(s)) is not None and e.rule_id == rule_id)
            t = time.monotonic()
            fill_flows(ct, flows, vip=_rule(0)["serviceArguments"]["externalIP"], vport=80,
                       ep="198.18.11.2", eport=8080, rule_id=rule_id, slot=slot)
            out["ct_fill_s"] = round(time.monotonic() - t, 2)
        finally:
            for m in (ct, svc, eps):
                m.close()
        out["get_ct"] = _timed(lb, [*loxicmd, "get", "ct"], runs)
        rows = lb.run(*loxicmd, "get", "ct", "-o", "json", timeout=600).stdout
        out["get_ct_rows"] = len(json.loads(rows).get("ctAttr", [])) if rows.strip() else 0
        node.stop()

        # loxicmd apply -f: a fresh agent, the same N rules from one file.
        node2 = BenchNode(lab, lb, ["eth0"], state_dir=lab.workdir / "state-apply").start()
        docs = "".join("---\n" + json.dumps({"apiVersion": "netlox/v1", "kind": "LoadBalancer",
                                             "metadata": {"name": f"cp{i}"}, "spec": b}) + "\n"
                       for i, b in enumerate(bodies))
        path = lab.workdir / "rules.yaml"
        path.write_text(docs)
        t = time.perf_counter()
        cp = lb.run("loxicmd", "-p", str(node2.port), "apply", "-f", str(path), timeout=1800,
                    check=False)
        apply_s = time.perf_counter() - t
        created = len(node2.rules())
        out["create_apply_f"] = {"seconds": apply_s, "exit": cp.returncode, "created": created,
                                 "per_rule_ms": 1000 * apply_s / rules,
                                 "stderr": cp.stderr[-300:] if cp.returncode else ""}
        node2.stop()
        for n in (node, node2):
            lb.run("loxilbd", "--cleanup", "--bpffs-dir", n.pin_dir, timeout=60, check=False)
    return out


def _timed_creates(lb: Any, loxicmd: list[str], have: int, runs: int) -> dict[str, float]:
    times = []
    for k in range(runs):
        b = _rule(have + k)
        sa = b["serviceArguments"]
        argv = [*loxicmd, "create", "lb", sa["externalIP"], "--tcp=80:8080",
                "--endpoints=198.18.11.2:1", f"--name=cp{have + k}"]
        t = time.perf_counter()
        cp = lb.run(*argv, check=False, timeout=120)
        times.append(time.perf_counter() - t)
        if cp.returncode != 0:
            raise RuntimeError(f"loxicmd create lb: {cp.stderr[-300:]}")
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": runs}


def table(ct: dict[str, Any] | None, cp: dict[str, Any] | None) -> str:
    lines: list[str] = []
    if ct:
        lines += ["| conntrack entries | kernel memory | bytes/entry | established packet ns "
                  "(x 1st size) | first packet ns (full table) | probe hits | dump from "
                  "user space |", "|---|---|---|---|---|---|---|"]
        for e in ct["sizes"].values():
            dump = f"{e['dump_s']:.2f} s" if "dump_s" in e else ""
            lines.append(
                f"| {e['entries']:,} | {e['memlock_bytes'] / 2**20:.1f} MiB | "
                f"{e['memlock_bytes_per_entry']:.0f} | {e['established_ns_mean']:.0f} "
                f"({e['established_x_smallest']:.2f}) | {e['first_packet_ns_mean']:.0f} | "
                f"{e['probe_hits']}/{ct['probes']} | {dump} |")
        lines.append("")
    if cp:
        r, f = cp["rules"], cp["flows"]
        lines += ["| control plane | time |", "|---|---|",
                  f"| create {r:,} rules, API (one keep-alive connection) | "
                  f"{cp['create_api']['seconds']:.2f} s ({cp['create_api']['per_rule_ms']:.1f}"
                  " ms/rule) |",
                  f"| create {r:,} rules, `loxicmd apply -f` (one file) | "
                  f"{cp['create_apply_f']['seconds']:.2f} s "
                  f"({cp['create_apply_f']['per_rule_ms']:.1f} ms/rule"
                  + (f"; exit {cp['create_apply_f']['exit']}, "
                     f"{cp['create_apply_f']['created']} created"
                     if cp["create_apply_f"]["exit"] else "") + ") |",
                  f"| one `loxicmd create lb` with {r:,} rules | "
                  f"{cp['create_one_loxicmd']['median_s'] * 1000:.0f} ms |",
                  f"| `loxicmd get lb`, {r:,} rules | {cp['get_lb']['median_s'] * 1000:.0f} ms |",
                  f"| `loxicmd get ct`, {f:,} flows ({cp['get_ct_rows']:,} listed) | "
                  f"{cp['get_ct']['median_s']:.2f} s |"]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    if args.quick:
        ct_res = ct_scale((10_000, 100_000), probes=1000)
        cp_res = control_plane(200, 10_000, 3)
    else:
        ct_res = ct_scale((10_000, 100_000, 1_000_000), probes=5000)
        cp_res = control_plane(1000, 100_000, 5)
    print(json.dumps({"ct": ct_res, "cp": cp_res}, indent=1), file=sys.stderr)
    print(table(ct_res, cp_res))
    print(f"{time.monotonic() - t0:.1f} s", file=sys.stderr)

