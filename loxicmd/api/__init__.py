"""The REST API's contract, shared by the agent, the CLI and other clients: the wire
schema of each kind of object and the routes that carry them. Nothing here imports click,
FastAPI or pydantic: the CLI imports it on every run."""
