"""The datapath's conntrack events and the agent's periodic work: the ring-buffer reader
and timers (``pump``), and the connection audit log (``audit``)."""
