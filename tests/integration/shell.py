"""A user's shell for tests that run the project as a user would (its README, its wheel)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["clean_env"]

_DROPPED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what could put the checkout or the test run's own
    packages on another interpreter's path (``PYTHONPATH``, the test environment's ``bin`` on
    ``PATH``, ...), and without gateway settings (``CONSENTRY_*``) that are not the test's
    own; then ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _DROPPED and not key.startswith("CONSENTRY_")
    }
    env["PATH"] = os.pathsep.join(
        part
        for part in env.get("PATH", "").split(os.pathsep)
        if Path(sys.prefix) not in Path(part).parents
    )
    return {**env, **(extra or {})}
