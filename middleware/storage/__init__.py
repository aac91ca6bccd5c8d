"""Storage behind Protocols: SQLite (embedded default), PostgreSQL (several replicas) and
memory (tests).

Only this package holds SQL. :class:`LogStore` is the ledger's append-only log
(``ledger_base`` documents its contract and tables), opened with :func:`open_log_store`;
``/readyz`` pings it.
"""

from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_open import open_log_store

__all__ = ["LogStore", "open_log_store"]
