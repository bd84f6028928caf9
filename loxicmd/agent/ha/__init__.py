"""High availability: cluster-instance states set by keepalived's notify hook
(``states``). Conntrack sync between nodes comes here."""
