"""The box's Pro Santé Connect client: reached through the TLS gateway's ``psc`` upstream, so
the box authenticates with the organisation's auth key (mTLS, RFC 8705), never a secret.

``client.py`` (discovery, introspection, access check, authorization code), ``cache.py`` (the
introspection cache), ``model.py`` (what PSC's answers mean), ``link.py`` (the daemon component).
"""

from .errors import PscError, PscUnavailable, TokenRefused
from .model import Activity, Exercice, Introspection, Professional

__all__ = ["Activity", "Exercice", "Introspection", "Professional", "PscError",
           "PscUnavailable", "TokenRefused"]
