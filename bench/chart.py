"""PNG chart of the network contenders relative to direct forwarding (matplotlib, no display).

One group of bars per measure, one bar per contender: the median over rounds of the
per-round ratio to direct forwarding, with the min-max of those ratios as the error bar.
Latencies are inverted (direct / contender) so that on every bar 1.0 is "as fast as
direct forwarding" and lower is worse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHORT = {
    "tput_1": "iperf3\n1 stream",
    "tput_4": "iperf3\n4 streams",
    "conn_rate": "short conns/s\n(Connection: close)",
    "rps_keepalive": "keep-alive\nrequests/s",
    "rtt_avg": "TCP RTT\nmean",
    "rtt_p99": "TCP RTT\np99",
}
COLORS = {
    "iptables": "#8c8c8c",
    "nftables": "#b5b5b5",
    "haproxy": "#d9a441",
    "ours": "#2b6cb0",
    "ours-fullnat": "#6ba3dc",
}


def render(net: dict[str, Any], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from netbench import CONTENDER_LABELS, MEASURES

    summary = net["summary"]
    contenders = [c for c in COLORS if c in summary]
    measures = [m for m in MEASURES if all(m in summary[c] for c in contenders)]
    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=110)
    width = 0.8 / max(len(contenders), 1)
    top = 1.2
    for k, c in enumerate(contenders):
        xs, ys, lo, hi = [], [], [], []
        for i, m in enumerate(measures):
            e = summary[c][m]
            higher_better = MEASURES[m][2]
            r, rmin, rmax = e["ratio"], e.get("ratio_min", e["ratio"]), e.get("ratio_max",
                                                                              e["ratio"])
            if not higher_better:
                r, rmin, rmax = 1 / r, 1 / rmax, 1 / rmin
            xs.append(i - 0.4 + width * (k + 0.5))
            ys.append(r)
            lo.append(max(r - rmin, 0))
            hi.append(max(rmax - r, 0))
            top = max(top, rmax * 1.08)
        label = CONTENDER_LABELS[c]
        if c == "ours-fullnat" and net.get("fullnat_accept_local"):
            label += " (accept_local=1)"
        ax.bar(xs, ys, width * 0.92, yerr=[lo, hi], capsize=2, color=COLORS[c],
               label=label, error_kw={"elinewidth": 0.8, "ecolor": "#333"})
    ax.axhline(1.0, color="black", linewidth=1)
    ax.axhline(0.95, color="black", linewidth=0.6, linestyle=":")
    ax.set_xticks(range(len(measures)))
    ax.set_xticklabels([SHORT[m] for m in measures], fontsize=9)
    ax.set_ylabel("relative to direct forwarding\n(1.0 = direct; higher is better)")
    ax.set_ylim(0, min(top, 2.0))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22),
              frameon=False)
    ax.grid(axis="y", linewidth=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import json
    import sys
    src = Path(sys.argv[1])
    doc = json.loads(src.read_text())
    print(render(doc["network"], src.with_suffix(".png"),
                 f"{doc.get('host', '')} {doc.get('date', '')}"))
