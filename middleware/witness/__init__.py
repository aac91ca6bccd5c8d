"""An outside witness for Consentry's ledger (and any C2SP log): ``consentry witness serve``.

It implements C2SP tlog-witness's ``add-checkpoint``: for each log it is configured with
(origin and verifier keys) it remembers the latest checkpoint it cosigned, cosigns a new one
only if it is signed by the log and provably extends that one (RFC 9162 consistency proof), and
records it durably before answering. Parts: :mod:`~middleware.witness.protocol` (the rules,
pure), :mod:`~middleware.witness.state` (the SQLite state file),
:mod:`~middleware.witness.app` (the HTTP service), :mod:`~middleware.witness.cli`.
"""
