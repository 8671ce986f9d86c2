"""Parsing XML that comes from the network: no DTD, no entities, no network, bounded size.

lxml is the parser; this module only fixes its options once so no caller can forget one.
"""

from __future__ import annotations

import re

from lxml import etree

DEFAULT_LIMIT = 32 * 1024 * 1024
# A DOCTYPE can only sit in the prolog: spot it before libxml2 spends any effort on it.
_PROLOG_DOCTYPE = re.compile(rb"\s*(<\?xml[^>]{0,200}\?>)?\s*(<!--.*?-->\s*)*<!DOCTYPE", re.DOTALL)


class UnsafeXmlError(ValueError):
    """The bytes are not acceptable XML (malformed, too large, or carry a DTD)."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
        collect_ids=False,
    )


def parse(data: bytes, limit: int = DEFAULT_LIMIT) -> etree._Element:
    """The root element of ``data``; raises :class:`UnsafeXmlError` for anything suspicious."""
    if len(data) > limit:
        raise UnsafeXmlError(f"XML document of {len(data)} bytes exceeds the limit of {limit}")
    if _PROLOG_DOCTYPE.match(data[:65536]):
        raise UnsafeXmlError("XML with a DOCTYPE is refused (entity expansion / XXE risk)")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as e:
        raise UnsafeXmlError(f"malformed XML: {e}") from None
    except ValueError as e:  # e.g. a str with an encoding declaration
        raise UnsafeXmlError(f"malformed XML: {e}") from None
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        # A DMP message never has a DTD; one is the mark of an entity bomb or an XXE attempt.
        raise UnsafeXmlError("XML with a DOCTYPE is refused")
    return root
