"""UIDs for the objects the box creates (KOS documents and their series).

Two schemes, both from PS3.5 §9 and §B.2:
- no organisation root: ``2.25.<UUID as integer>`` (122 random bits, no registration needed);
- an organisation root (``1.2.250.…`` registered by the site): ``<root>.<random digits>`` filling
  the UID up to 64 characters. The root is limited to 40 characters so that at least 23 random
  digits (~76 bits) remain, which keeps collisions negligible across every box of a site.

pydicom's ``generate_uid`` draws the random part from ``secrets``; this module only validates the
root and fixes the policy.
"""

from __future__ import annotations

import re
import uuid

from pydicom.uid import UID, generate_uid

MAX_ROOT_LENGTH = 40
# PS3.5 §9.1: dot-separated components of digits, no leading zero unless the component is "0".
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class UidRootError(ValueError):
    """An organisation root that cannot prefix DICOM UIDs."""


def is_valid_uid(value: str) -> bool:
    """True for a syntactically valid DICOM UID (at most 64 characters, PS3.5 §9.1)."""
    return 0 < len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def check_root(root: str) -> str:
    """Return ``root`` if it can prefix the box's UIDs, else raise :class:`UidRootError`."""
    if not _UID_RE.fullmatch(root):
        raise UidRootError(f"UID root {root!r} is not dot-separated numbers without leading zeros")
    if len(root) > MAX_ROOT_LENGTH:
        raise UidRootError(
            f"UID root is {len(root)} characters; at most {MAX_ROOT_LENGTH} leave enough random digits"
        )
    return root


def new_uid(root: str | None = None) -> str:
    """A fresh UID: under ``2.25`` when ``root`` is None, else under the organisation root."""
    if root is None:
        return str(generate_uid(prefix=None))
    return str(generate_uid(prefix=check_root(root) + "."))


def stable_uid(name: str) -> str:
    """The same ``2.25`` UID for the same name, e.g. a device UID derived from the box's public URL.

    UUID version 5 (RFC 4122 name-based, SHA-1) in the URL namespace, written as PS3.5 §B.2 says.
    """
    return str(UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"))
