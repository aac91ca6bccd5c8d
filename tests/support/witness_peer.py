"""``consentry witness serve`` as a real process, for the integration test and the benchmark.

:class:`WitnessServer` makes its own key (``consentry witness keygen``) and state file in a
temporary folder, starts the witness on a free port for the given logs, is ready once its
``/healthz`` answers, and is stopped by pid (terminate, then kill) like the other peers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from middleware.ledger.cosignature import WitnessKey, parse_witness_vkey
from tests.support.peers import HOST, PeerError, _Peer, repo_root

__all__ = ["WitnessServer"]

_CONSENTRY = [sys.executable, "-m", "middleware.cli"]


class WitnessServer(_Peer):
    """A witness named ``name`` following ``logs`` (origin -> log vkeys)."""

    name = "witness"

    def __init__(
        self, logs: Mapping[str, list[str]], *, witness_name: str = "witness.example/w1"
    ) -> None:
        super().__init__(startup_timeout=30.0)
        self.logs = dict(logs)
        self.witness_name = witness_name
        self._dir = tempfile.TemporaryDirectory(prefix="consentry-witness-")
        self.folder = Path(self._dir.name)
        self.key: WitnessKey | None = None

    @property
    def state_path(self) -> Path:
        return self.folder / "witness.db"

    def start(self) -> Self:
        key_path = self.folder / "witness.key"
        if self.key is None:
            made = subprocess.run(
                [*_CONSENTRY, "witness", "keygen", self.witness_name, "--key", str(key_path)],
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if made.returncode != 0:
                raise PeerError(f"witness keygen failed: {made.stderr}")
            self.key = parse_witness_vkey(made.stdout.strip())
        new_state = [] if self.state_path.exists() else ["--new-state"]
        pairs = [f"--log={origin}={vkey}" for origin, keys in self.logs.items() for vkey in keys]

        def argv(port: int) -> list[str]:
            return [
                *_CONSENTRY,
                "witness",
                "serve",
                "--key",
                str(key_path),
                "--state",
                str(self.state_path),
                *new_state,
                *pairs,
                "--host",
                HOST,
                "--port",
                str(port),
            ]

        self._launch(argv, self._env(), cwd=self.folder)
        return self

    @staticmethod
    def _env() -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(repo_root())}

    def close(self) -> None:
        """Stop the process and remove its folder (key and state)."""
        self.stop()
        self._dir.cleanup()
