"""The verifiable ledger: PHI-free leaves, RFC 9162 Merkle proofs, C2SP signed checkpoints.

``leaf``, ``merkle``, ``note`` and ``checkpoint`` are pure: bytes and text in, bytes and text
out, no I/O and no crypto library beyond :mod:`hashlib`. ``signing`` is the only module that
imports pynacl. Errors live in ``errors``.

Offline verification: ``tree`` (every complete subtree, for roots and proofs at any size),
``trust`` (the trust policy), ``keyevent`` (key rotations recorded in the log), ``leafcheck``
and ``verify`` (the verifier, pure), ``findings``, ``snapshot``, ``export`` (the export
directory), ``receipt`` (C2SP tlog-proof). Served by ``http`` (the ``/ledger`` API: proofs
for anyone, leaf contents to the readers ``access`` allows, pure) and ``cli``
(``consentry ledger`` and ``consentry keys``); ``rotation`` records a key rotation.
"""
