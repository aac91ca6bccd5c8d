#!/usr/bin/env bash
# Mutation testing of the security core (mutmut 3, the `test` extra): the decision, filter,
# audit and ledger modules, each against the fast tests that are about it. Not part of
# scripts/test.sh or CI: a full run takes tens of minutes on two cores.
#
#   bash scripts/mutation.sh                  # every module, smallest first
#   bash scripts/mutation.sh decision ledger  # some of them
#   MUTATION_JOBS=1 bash scripts/mutation.sh filter
#
# Each module runs in its own copy of the tree under build/mutation/<module>/ (mutmut writes
# its mutants/ directory and cache beside the pyproject.toml it reads; a copy keeps both out of
# the working tree and lets modules run side by side). The copy's pyproject.toml gets the
# module's [tool.mutmut] section below. Survivors are listed at the end of each module's run;
# `cd build/mutation/<module> && mutmut show <name>` prints one as a diff. A survivor is either
# killed by a new assertion or explained by a comment at its line in the source.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
unset PYTHONPATH PYTHONHOME

python="${PYTHON:-python3}"
mutmut="${MUTMUT:-$(dirname "$(command -v "$python")")/mutmut}"
jobs="${MUTATION_JOBS:-2}"
# Derandomized hypothesis without deadlines (tests/conftest.py): the same examples for every
# mutant, and a slow machine is not a kill.
export HYPOTHESIS_PROFILE=ci

# module -> files mutated ; tests run (mutmut maps each mutated function to the tests that call it)
declare -A files tests
files[decision]="middleware/consent/decide.py middleware/consent/match.py"
tests[decision]="tests/unit/consent"
files[filter]="middleware/pipeline/judge.py middleware/pipeline/filter.py"
tests[filter]="tests/unit/pipeline tests/leak"
files[audit]="middleware/audit/recorder.py middleware/audit/balp.py middleware/audit/parts.py"
tests[audit]="tests/unit/audit tests/leak/test_audit.py tests/app/test_write_audit.py"
files[ledger]="middleware/ledger/merkle.py middleware/ledger/leaf.py middleware/ledger/verify.py"
# the ledger's own vectors, properties and verifier tests; the store, service and CLI tests call
# the same functions through SQLite and take minutes per mutant
tests[ledger]="tests/unit/ledger/test_merkle_vectors.py tests/unit/ledger/test_merkle_properties.py
    tests/unit/ledger/test_tree.py tests/unit/ledger/test_leaf.py tests/unit/ledger/test_verify.py"

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(decision ledger filter audit)

for module in "${modules[@]}"; do
    [ -n "${files[$module]:-}" ] || { echo "unknown module: $module" >&2; exit 2; }
    work="$root/build/mutation/$module"
    printf '== %s: %s\n' "$module" "${files[$module]}"
    mkdir -p "$work"
    # A fresh copy of the sources each time; mutmut's own cache (mutants/) is kept, so a
    # second run re-tests only the functions whose source or tests changed.
    rm -rf "$work/middleware" "$work/tests" "$work/scripts" "$work/mappings"
    cp -r middleware tests scripts mappings "$work/" # tests read scripts/ and mappings/ too
    find "$work" -name __pycache__ -prune -exec rm -rf {} +
    "$python" - "$work/pyproject.toml" "${files[$module]}" "${tests[$module]}" <<'EOF'
import json
import sys
from pathlib import Path

target, mutated, selected = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
base = Path("pyproject.toml").read_text("utf-8")
section = "\n".join(
    [
        "",
        "[tool.mutmut]",
        'source_paths = ["middleware"]',
        'also_copy = ["scripts", "mappings"]',
        f"only_mutate = {json.dumps(mutated)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(selected)}",
        # quiet, and no .pytest_cache written into the copy
        'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider"]',
        "",
    ]
)
Path(target).write_text(base + section, "utf-8")
EOF
    (cd "$work" && "$mutmut" run --max-children "$jobs") || true
    # Score: killed (by a test, a timeout or the type check) of all mutants; the rest listed.
    (cd "$work" && "$mutmut" results --all true) | awk -v module="$module" '
        { status = $0; sub(/.*: /, "", status); total++; count[status]++ }
        status != "killed" && status != "timeout" && status != "caught by type check" { print }
        END {
            killed = 0
            for (s in count) if (s == "killed" || s == "timeout") killed += count[s]
            printf "== %s: %d of %d mutants killed", module, killed, total
            for (s in count) if (s != "killed") printf "; %s %d", s, count[s]
            printf "\n"
        }'
done
