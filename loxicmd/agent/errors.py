"""The agent's refusals: the REST layer turns them into LoxiLB's error bodies
(``{"code", "message", "result"}``).

- :class:`InvalidInput` (400): bad input, naming the field, the value and what is allowed.
  It is the API package's own type, raised alike by the wire schema's checks and by what
  this agent accepts on top of them.
- :class:`ApiError`: any other refusal, with its status (403 capacity, 404, 409, 500 ...).
"""

from __future__ import annotations

from loxicmd.api.wire import InvalidInput

__all__ = ["ApiError", "InvalidInput"]


class ApiError(Exception):
    """A refusal with its HTTP status and the sentence saying what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
