"""Test helpers of the repository (not shipped: the distribution holds ``middleware`` only).

:mod:`tests.support.peers` runs real peers as subprocesses for integration tests and
benchmarks: the shared upstream FHIR server (Medplum's router under node) and the gateway
itself, with tokens from the gateway's development issuer. Nothing here imports pytest, so
benchmarks and scripts can use it too.
"""

from tests.support.peers import (
    SYSTEM_SCOPES,
    GatewayServer,
    PeerError,
    UpstreamServer,
    carebundle_dir,
    free_port,
    install_upstream,
    load_carebundle,
    shared_dir,
)

__all__ = [
    "SYSTEM_SCOPES",
    "GatewayServer",
    "PeerError",
    "UpstreamServer",
    "carebundle_dir",
    "free_port",
    "install_upstream",
    "load_carebundle",
    "shared_dir",
]
