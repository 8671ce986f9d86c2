"""State of the box: SQLite index (WAL, numbered migrations) and the instance files on disk."""

from .db import Database, SchemaError
from .instances import (
    BASE,
    Incoming,
    InvalidInstance,
    Store,
    StoredInstance,
    StoreFull,
    valid_uid,
)

__all__ = ["BASE", "Database", "Incoming", "InvalidInstance", "SchemaError", "Store", "StoreFull",
           "StoredInstance", "valid_uid"]
