"""Benchmarks; each is a module run with ``python -m bench.<name>`` from the repository root."""
