"""The ``CONSENTRY_*`` environment namespace belongs to the gateway's settings.

``load_settings`` reads every ``CONSENTRY_*`` variable as a setting and refuses unknown ones
(a typo must stop the gateway, not be ignored). So a variable the repository tells anyone to
set under that prefix, for tests or scripts, would stop ``consentry serve`` in the same shell:
the test tree's shared-folder variable once did ("unknown setting").
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Final

import pytest

from middleware.errors import SettingsError
from middleware.settings import ENV_PREFIX, load_settings
from tests.support.peers import SHARED_ENV, repo_root

_NAME: Final = re.compile(rf"\b{ENV_PREFIX}[A-Z0-9_]*[A-Z0-9]\b")
_UPSTREAM: Final = {"upstream": "http://127.0.0.1:8103/fhir"}


#: Tests that name unknown variables on purpose, to show they are refused.
_REFUSAL_TESTS: Final = frozenset(
    {
        "tests/unit/test_settings.py",
        "tests/unit/test_env_names.py",
        # a misspelt variable in a compose file, and Kubernetes' service-link variables, each
        # shown to stop the gateway
        "tests/unit/deploy/test_compose.py",
        "tests/unit/deploy/test_k8s.py",
    }
)


def _tracked_text_files() -> list[Path]:
    """Files git knows of (or would add), but the tests of refusal."""
    root = repo_root()
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [
        root / name for name in listed if name not in _REFUSAL_TESTS and (root / name).is_file()
    ]


def test_every_consentry_variable_the_repository_names_is_a_setting() -> None:
    """README, docs, scripts, tests and code name only variables ``serve`` accepts."""
    found: dict[str, set[str]] = {}
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for name in _NAME.findall(text):
            found.setdefault(name, set()).add(str(path.relative_to(repo_root())))
    refused = {}
    for name, where in sorted(found.items()):
        try:
            load_settings(env={name: _SAMPLE.get(name, "1")}, overrides=_UPSTREAM)
        except SettingsError as exc:
            if "unknown setting" in str(exc):
                refused[name] = sorted(where)
    assert refused == {}


# Values of the right kind for settings the scan may meet (an unknown name is what fails).
_SAMPLE: Final = {
    "CONSENTRY_UPSTREAM": "http://127.0.0.1:8103/fhir",
    "CONSENTRY_AUTH": "{}",
    "CONSENTRY_UPSTREAM_HEADERS": "{}",
    "CONSENTRY_LOG_LEVEL": "info",
    "CONSENTRY_STORE": "memory:",
}


def test_the_shared_folder_variable_does_not_stop_the_gateway(tmp_path: Path) -> None:
    """The test tree's variable, set as the README says, leaves ``serve``'s settings alone."""
    assert not SHARED_ENV.startswith(ENV_PREFIX)
    settings = load_settings(env={SHARED_ENV: str(tmp_path)}, overrides=_UPSTREAM)
    assert settings.upstream == _UPSTREAM["upstream"]


def test_an_unknown_consentry_variable_still_stops_the_gateway() -> None:
    """The namespace stays strict: a misspelt setting is refused, not ignored."""
    with pytest.raises(SettingsError, match="unknown setting CONSENTRY_UPSTREM"):
        load_settings(env={"CONSENTRY_UPSTREM": "http://x/fhir"}, overrides=_UPSTREAM)
