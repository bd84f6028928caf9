"""The state directory: every accepted change, durable before the API answers
(``journal``: an fsync'd journal folded into an atomic snapshot)."""
