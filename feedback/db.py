"""The store's connections and migrations live in the ground floor (:mod:`ratchet.db`);
these names stay importable from here for existing callers."""

from ratchet.db import (
    connect,
    ensure_database,
    given_or_own,
    migrate,
    migration_files,
    open_pool,
)

__all__ = ["connect", "ensure_database", "given_or_own", "migrate", "migration_files", "open_pool"]
