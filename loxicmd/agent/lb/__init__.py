"""Load-balancer rules: the domain model and its validation (``model``), the bookkeeping
of rule ids, endpoint slots and capacity (``book``), the rule table that programs the
datapath and persists every change (``table``), Maglev tables (``maglev``)."""
