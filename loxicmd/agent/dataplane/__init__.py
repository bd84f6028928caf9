"""The datapath as the agent drives it: load the eBPF object, pin and program its maps,
attach it to interfaces (``dataplane``), one agent per node's pins (``pins``)."""
