"""Storage behind Protocols: SQLite (embedded default), PostgreSQL (several replicas) and
memory (tests).

Only this package holds SQL. :class:`LogStore` is the ledger's append-only log
(``ledger_base`` documents its contract and tables), opened with :func:`open_log_store`;
``/readyz`` pings it. :class:`ConsentStore` holds patient pseudonyms and the index of the
Consents on the ledger (``consent_base``), opened with :func:`open_consent_store`.
"""

from middleware.storage.consent_base import ConsentRecord, ConsentStore, PatientMark
from middleware.storage.consent_open import open_consent_store
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_open import open_log_store

__all__ = [
    "ConsentRecord",
    "ConsentStore",
    "LogStore",
    "PatientMark",
    "open_consent_store",
    "open_log_store",
]
