"""A strict Pro Santé Connect (OIDC) simulator: a real HTTPS server in its own process.

``/_test/...`` endpoints are this simulator's own (register clients, issue tokens directly,
revoke, read the call log, inject faults); they do not exist in the real service.
"""

from .launcher import Psc, start_psc

__all__ = ["Psc", "start_psc"]
