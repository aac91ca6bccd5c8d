"""Real witnesses as subprocesses: ``python -m middleware.cli witness serve`` on a free port.

Each :class:`WitnessServer` gets a fresh key (``cosignature/v1``) and a new state file in its
own temporary directory, witnesses the logs given as ``{origin: log vkey}``, is ready once its
``/healthz`` answers, and is stopped by pid (:class:`~tests.support.peers._Peer`)::

    with WitnessServer("w1.test", {ORIGIN: KEY.vkey()}) as w1:
        endpoint = w1.endpoint  # a WitnessEndpoint for the log side
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from middleware.ledger.signing import Cosigner
from middleware.ledger.trust import TrustedWitness
from middleware.ledger.witnesses import WitnessEndpoint
from tests.support.peers import _Peer, repo_root

__all__ = ["WitnessServer"]


class WitnessServer(_Peer):
    """``consentry witness serve`` for the logs ``logs`` (origin -> the log's vkey)."""

    name = "witness"

    def __init__(
        self, witness_name: str, logs: Mapping[str, str], *, startup_timeout: float = 30.0
    ) -> None:
        super().__init__(startup_timeout)
        self.cosigner = Cosigner.generate(witness_name)
        self.logs = dict(logs)
        self.workdir: Path | None = None

    @property
    def endpoint(self) -> WitnessEndpoint:
        """This witness as the gateway's ``witnesses`` setting names it."""
        return WitnessEndpoint(self.cosigner.name, self.root_url, self.cosigner.vkey())

    @property
    def trusted(self) -> TrustedWitness:
        """This witness as a verifier's trust policy names it."""
        return TrustedWitness(self.cosigner.vkey())

    def setting(self) -> dict[str, str]:
        """One ``[[witnesses]]`` table of the gateway's settings."""
        return {"name": self.cosigner.name, "url": self.root_url, "vkey": self.cosigner.vkey()}

    def start(self) -> Self:
        workdir = self.workdir = Path(tempfile.mkdtemp(prefix="consentry-witness-"))
        key = workdir / "witness.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(self.cosigner.skey() + "\n")
        state = workdir / "witness.state"
        logs = [arg for origin, vkey in self.logs.items() for arg in ("--log", f"{origin}={vkey}")]

        def argv(port: int) -> list[str]:
            state.unlink(missing_ok=True)  # a port retry starts the witness anew
            return [
                sys.executable,
                "-m",
                "middleware.cli",
                "witness",
                "serve",
                *("--key", str(key), "--state", str(state), "--new-state"),
                *logs,
                *("--port", str(port)),
            ]

        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTRY_")}
        self._launch(argv, env, cwd=repo_root())
        return self

    def stop(self, *, keep_log: bool = False) -> None:
        super().stop(keep_log=keep_log)
        if self.workdir is not None and not keep_log:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
