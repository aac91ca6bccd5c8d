#!/usr/bin/env bash
# The one test command (README "Test it"; .ci/run calls it): installs what the tests need,
# then runs every check CI runs. Fails on the first failing check.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# The real upstream FHIR server for integration tests (npm, idempotent, under /tmp/peers).
shared="${CONSENTRY_SHARED:-$(cd .. && pwd)/shared}"
bash "$shared/peers/install-upstream.sh"

echo "== ruff check";          ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy --strict";       mypy --strict
echo "== import contracts";    lint-imports
echo "== mappings check";      consentry mappings check
echo "== pytest";              python3 -m pytest "$@"
