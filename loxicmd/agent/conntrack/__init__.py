"""Conntrack in user space: the one decoder of the datapath's entries and events
(``flows``), paging and filters for the API (``listing``), TCP resets for the flows the LB
ends (``resets``), and the installer that places a flow by service and endpoint address
(``installer``: what a peer's conntrack sync needs)."""
