"""Storage behind Protocols: SQLite (embedded default) and memory (tests).

Only this package holds SQL. The ledger issue extends these stores with the log tables and a
PostgreSQL backend for several replicas.
"""

from middleware.storage.base import Store
from middleware.storage.open import open_store

__all__ = ["Store", "open_store"]
