"""How a DMP exchange can fail, sorted by what the caller should do next.

Every failure the connector raises is a :class:`DmpError`:

- :class:`DmpRetryableError`: try again later (connection refused or reset, timeout, HTTP 5xx,
  SOAP ``Receiver`` fault, registry "busy" errors). The outbox retries these.
- :class:`DmpPermanentError`: retrying the same request cannot help (a RegistryError such as
  ``XDSDuplicateUniqueIdInRegistry``, a SOAP ``Sender`` fault such as a refused VIHF, HTTP 4xx, a
  response that is not a valid DMP answer). ``code`` and ``text`` are the DMP's own words, shown to
  the admin as they are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegistryError:
    """One ``rs:RegistryError`` of a DMP answer."""

    code: str
    text: str
    severity: str = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
    location: str = ""


class DmpError(Exception):
    """Base of every failure of a DMP exchange."""


class DmpRetryableError(DmpError):
    """A failure that may pass if the same request is sent again later."""

    def __init__(self, reason: str, *, code: str = "", text: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.text = text


class DmpPermanentError(DmpError):
    """The DMP (or the transport) refused the request for good; ``code``/``text`` say why."""

    def __init__(self, code: str, text: str, errors: tuple[RegistryError, ...] = ()) -> None:
        super().__init__(f"{code}: {text}" if text else code)
        self.code = code
        self.text = text
        self.errors = errors


class DmpResponseError(DmpPermanentError):
    """The answer is not a well-formed DMP response (bad XML, hostile XML, broken MTOM, too big)."""

    def __init__(self, text: str) -> None:
        super().__init__("InvalidResponse", text)


class SubmissionError(ValueError):
    """The metadata given to the connector cannot make a valid DMP submission (caller's bug)."""


# RegistryError codes that describe a temporary state of the service (IHE ITI TF-3 4.2.4.1).
RETRYABLE_REGISTRY_CODES = frozenset({
    "XDSRegistryBusy",
    "XDSRepositoryBusy",
    "XDSRegistryOutOfResources",
    "XDSRepositoryOutOfResources",
})
