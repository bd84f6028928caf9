"""loxicmd: the CLI (loxicmd.cli) and the agent (loxicmd.agent) of the load balancer."""
