"""The per-request stages that enforce a decision (pure: no I/O)."""
