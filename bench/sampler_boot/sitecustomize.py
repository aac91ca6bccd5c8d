"""Starts :mod:`bench.cpu_sampler` in a process whose ``EDGE_SAMPLER`` names a path prefix
(put this folder on its ``PYTHONPATH``; :mod:`bench.edge_profile` does)."""

import os

if os.environ.get("EDGE_SAMPLER"):
    from bench.cpu_sampler import start

    start(os.environ["EDGE_SAMPLER"])
