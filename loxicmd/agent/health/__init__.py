"""Endpoint health: the probe scheduler and its state machine (``monitor``), the probe
kinds chosen through a registry (``probes``), probe specs and their validation (``spec``),
and the endpoint table linking probes and host states to rules (``endpoints``)."""
