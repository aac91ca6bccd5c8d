"""Storage behind Protocols: SQLite (embedded default), PostgreSQL (several replicas) and
memory (tests).

Only this package holds SQL. :class:`Store` is what ``/readyz`` pings; :class:`LogStore` is the
ledger's append-only log (``ledger_base`` documents its contract and tables), opened with
:func:`open_log_store`.
"""

from middleware.storage.base import Store
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_open import open_log_store
from middleware.storage.open import open_store

__all__ = ["LogStore", "Store", "open_log_store", "open_store"]
