"""What a PSC call can end with, besides success. No message carries a token, code or name."""

from __future__ import annotations


class PscError(Exception):
    """Base of this package's errors."""


class PscUnavailable(PscError):
    """PSC could not give an answer (unreachable, 5xx, garbage, a discovery document the box
    must not use): callers answer 503, never treat the token as refused."""


class TokenRefused(PscError):
    """The token (or code, or id token) is not acceptable; ``reason`` says why, for the caller's
    401 and the logs (it never contains the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
