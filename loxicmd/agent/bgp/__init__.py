"""BGP: the agent announces service VIPs through ExaBGP, which it runs and supervises.

``settings`` holds the global and neighbour configuration (persisted, LoxiLB's API shapes);
``adverts`` turns rules created with ``bgp`` and the HA states into the routes each
neighbour should have; ``exabgp`` runs one ExaBGP process and talks to it through its
process API (``bridge`` joins ExaBGP's pipes to the agent); ``received`` keeps what peers
announce and, when asked, installs it in the node's routing table; ``speaker`` ties them
together in one worker thread that the REST API queries.
"""
