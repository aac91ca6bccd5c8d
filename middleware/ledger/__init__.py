"""The verifiable ledger: PHI-free leaves, RFC 9162 Merkle proofs, C2SP signed checkpoints.

``leaf``, ``merkle``, ``note`` and ``checkpoint`` are pure: bytes and text in, bytes and text
out, no I/O and no crypto library beyond :mod:`hashlib`. ``signing`` is the only module that
imports pynacl. Errors live in ``errors``.
"""
