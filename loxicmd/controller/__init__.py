"""``loxilb-controller``: the Kubernetes side. A program of its own beside the agents, which
it reaches only through their REST API (``loxicmd.api``).

It watches Services of type LoadBalancer (of its ``loadBalancerClass``) and their
EndpointSlices (``kube``), turns each into load-balancer rules (``service``: annotations,
endpoints), gives it an external IP from its CIDRs (``ipam``), programs every LB node's
agent and keeps them so (``agents``), and writes the IP into the Service's status.
``main`` ties them together; ``manifests/`` deploys it.
"""
