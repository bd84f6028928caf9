"""High availability: cluster-instance states and what they do to the datapath
(``states``), conntrack sync between nodes (``sync``, its wire format ``sync_format``),
gratuitous ARP on takeover (``garp``), and keepalived's notify and track scripts
(``notify``: ``loxilbd-notify``, ``loxilbd-ready``)."""
