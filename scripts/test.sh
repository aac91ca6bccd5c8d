#!/usr/bin/env bash
# The one test command (README "Test it"; .ci/run calls it). It builds its own virtual
# environment from pyproject.toml (`.venv`, or $VENV_DIR) and runs every check CI runs
# with that environment's executables, never the machine's site-packages: an import that
# pyproject.toml does not declare fails here. Fails on the first failing check.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -x -q tests/unit # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
venv="${VENV_DIR:-.venv}"
# The machine's PYTHONPATH would put packages into the run that pyproject does not declare.
unset PYTHONPATH PYTHONHOME

step() { printf '== %s (%ss)\n' "$1" "$SECONDS"; }

step "virtual environment $venv"
# Made anew when missing, broken, or one that sees the system's site-packages.
if ! grep -qsx 'include-system-site-packages = false' "$venv/pyvenv.cfg" \
    || ! "$venv/bin/python" -c '' 2>/dev/null; then
    "$python" -m venv --clear "$venv" # no --system-site-packages: only what pyproject declares
fi
# Re-run on every call, so a changed pyproject.toml is honoured by a re-used environment.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
bin="$(cd "$venv/bin" && pwd)"
export PATH="$bin:$PATH" # subprocesses of the tests (consentry, python) are this environment's

# The real upstream FHIR server for integration tests (npm, idempotent, under $PEERS_DIR or
# /tmp/peers): the repository's own installer, the one the README's demo uses.
bash scripts/upstream.sh --install

# Debian's packages the tests drive: Chromium for the browser tests (tests/browser drive
# /usr/bin/chromium through Playwright; Playwright's own browser download is not reachable, so
# `playwright install` is never run) and HAProxy, the load balancer in front of the replicas of
# tests/integration/test_replicas.py. Installed only when missing, as root (CI runs as root).
# When they cannot be installed the run fails here, loudly: skipping would let CI go green
# without a single page, CSRF, accessibility or replica check having run.
step "system packages for the browser and replica tests"
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "scripts/test.sh: ${missing[*]} missing and this is not root; install with:" \
            "sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
    [ -x /usr/bin/chromium ] || { echo "scripts/test.sh: apt did not install chromium" >&2; exit 1; }
    [ -x /usr/sbin/haproxy ] || { echo "scripts/test.sh: apt did not install haproxy" >&2; exit 1; }
fi

step "ruff check";          "$bin/ruff" check .
step "ruff format --check"; "$bin/ruff" format --check .
step "mypy --strict";       "$bin/mypy" --strict
step "import contracts";    "$bin/lint-imports"
# What you import, you declare. First the runtime package against `dependencies` ([tool.deptry]
# in pyproject.toml), then everything (tests/, bench/, scripts/ too) against `dependencies`
# and the `test` extra; DEP004 (a test dependency imported) is expected there.
step "dependencies: middleware"
"$bin/deptry" --no-ansi .
step "dependencies: tests, bench, scripts"
"$bin/deptry" --no-ansi . --exclude '\.venv' --exclude 'build' --exclude 'dist' \
    --exclude 'mappings' --ignore DEP004
step "mappings check";      "$bin/consentry" mappings check
# tests/integration/test_install.py is the install check: the wheel in an empty environment,
# pip check, every module imported, and `consentry serve` against the real upstream.
step "pytest";              "$bin/python" -m pytest "$@"
step "done"
