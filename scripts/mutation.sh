#!/usr/bin/env bash
# Mutation testing of the security core (mutmut 3, the `test` extra): the decision, filter,
# audit and ledger modules, each against the fast tests that are about it. Not part of
# scripts/test.sh or CI: a full run takes tens of minutes on two cores.
#
#   bash scripts/mutation.sh                  # every module, smallest first
#   bash scripts/mutation.sh decision ledger  # some of them
#   MUTATION_JOBS=1 bash scripts/mutation.sh filter
#   MUTANTS='middleware.ledger.merkle.x__subtree*' bash scripts/mutation.sh ledger
#                                             # (re-)run only these mutants (mutmut names, globs)
#   MUTATION_REF=HEAD bash scripts/mutation.sh audit  # a commit's tree, not the working tree
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
# The BALP renderers: pure, pinned by their own tests (known events written from the
# specifications); the recorder's, leak and app tests reach them too but take seconds a mutant.
# The evidence and the recorder are the two modules below.
files[audit]="middleware/audit/balp.py middleware/audit/parts.py middleware/audit/alerts.py"
tests[audit]="tests/unit/audit/test_balp.py tests/unit/audit/test_balp_known_events.py
    tests/unit/audit/test_balp_parts.py"
# The audit evidence: which entries an exchange makes (plan.py), the facts' canonical encoding
# and index row (facts.py), the events rendered from them when read (render.py); pure, pinned by
# golden events (the old recorder's, kept in tests/unit/audit/old_events.py), hypothesis round
# trips and malformed encodings, with the evidence reader's tests (sealed facts opened).
files[audit-facts]="middleware/audit/plan.py middleware/audit/entities.py middleware/audit/facts.py
    middleware/audit/render.py"
tests[audit-facts]="tests/unit/audit/test_facts.py tests/unit/audit/test_render.py
    tests/unit/audit/test_evidence.py tests/unit/audit/test_facts_mutants.py
    tests/unit/audit/test_plan_mutants.py tests/unit/audit/test_entities.py"
# The recorder (entries, outbox, replay) on its own, with the app tests of writes whose outcome
# waits in the outbox (reconcile, replay, readiness) and of break-the-glass: real SQLite
# outboxes and in-memory ledgers, about a second in all.
files[audit-recorder]="middleware/audit/recorder.py middleware/audit/recorder_direct.py
    middleware/audit/recorder_outbox.py middleware/audit/recorder_intents.py
    middleware/audit/ttlcache.py"
tests[audit-recorder]="tests/unit/audit/test_recorder.py tests/unit/audit/test_outbox_owners.py
    tests/unit/audit/test_ttlcache.py
    tests/unit/audit/test_recorder_mutants.py tests/unit/audit/test_recorder_mutants2.py
    tests/unit/audit/test_recorder_slow_hold.py
    tests/app/test_write_audit.py
    tests/app/test_break_glass.py"
files[ledger]="middleware/ledger/merkle.py middleware/ledger/leaf.py middleware/ledger/verify.py"
# the ledger's own vectors, properties and verifier tests; the store, service and CLI tests call
# the same functions through SQLite and take minutes per mutant
tests[ledger]="tests/unit/ledger/test_merkle_vectors.py tests/unit/ledger/test_merkle_properties.py
    tests/unit/ledger/test_merkle_helpers.py tests/unit/ledger/test_tree.py
    tests/unit/ledger/test_leaf.py tests/unit/ledger/test_verify.py"
# Extra [tool.mutmut] settings per module. mutmut gives each mutant (time of the tests that
# cover it + 1 s) x timeout_multiplier x 2 CPU seconds, the time measured while it traces
# which test calls what: merkle.py's innermost helpers are called by 169 tests that take ~5 s
# and measure 89 s traced. With the default multiplier, 15, each mutant of theirs that never
# ends (`while len(level) >= 1` in _subtree, or a level that stops shrinking) had 45 minutes,
# and the first run was stopped before it reached them. With 0.5 the limit is the traced time
# plus a second: still some 18 times what a correct mutant needs (the limit is CPU time, so a
# busy machine does not cut it short).
declare -A settings
settings[ledger]="timeout_multiplier = 0.5"

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(decision ledger filter audit audit-facts audit-recorder)

for module in "${modules[@]}"; do
    [ -n "${files[$module]:-}" ] || { echo "unknown module: $module" >&2; exit 2; }
    work="$root/build/mutation/$module"
    printf '== %s: %s\n' "$module" "${files[$module]}"
    mkdir -p "$work"
    # A fresh copy of the sources each time; mutmut's own cache (mutants/) is kept, so a
    # second run re-tests only the functions whose source or tests changed.
    rm -rf "$work/middleware" "$work/tests" "$work/scripts" "$work/mappings"
    # tests read scripts/ and mappings/ too
    if [ -n "${MUTATION_REF:-}" ]; then
        # a commit, without the unfinished edits of others sharing the working tree
        git archive "$MUTATION_REF" middleware tests scripts mappings | tar -x -C "$work"
        git show "$MUTATION_REF:pyproject.toml" >"$work/pyproject.base.toml"
    else
        cp -r middleware tests scripts mappings "$work/"
        cp pyproject.toml "$work/pyproject.base.toml"
    fi
    find "$work" -name __pycache__ -prune -exec rm -rf {} +
    "$python" - "$work/pyproject.base.toml" "$work/pyproject.toml" "${files[$module]}" \
        "${tests[$module]}" "${settings[$module]:-}" <<'EOF'
import json
import sys
from pathlib import Path

base_path, target, mutated, selected, extra = sys.argv[1:6]
base = Path(base_path).read_text("utf-8")
section = "\n".join(
    [
        "",
        "[tool.mutmut]",
        'source_paths = ["middleware"]',
        'also_copy = ["scripts", "mappings"]',
        f"only_mutate = {json.dumps(mutated.split())}",
        f"pytest_add_cli_args_test_selection = {json.dumps(selected.split())}",
        # quiet, and no .pytest_cache written into the copy
        'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider"]',
        extra,
        "",
    ]
)
Path(target).write_text(base + section, "utf-8")
EOF
    # MUTANTS is a list of names and globs for mutmut, split on blanks and never expanded here.
    # shellcheck disable=SC2086
    (cd "$work" && set -f && "$mutmut" run --max-children "$jobs" ${MUTANTS:-}) || true
    # Score: killed (by a test, a timeout or the type check) of all mutants; the rest listed.
    # With MUTANTS, the mutants not selected (and never run in this copy) are counted, not listed.
    (cd "$work" && "$mutmut" results --all true) | awk -v module="$module" -v some="${MUTANTS:-}" '
        { status = $0; sub(/.*: /, "", status); total++; count[status]++ }
        some != "" && status == "not checked" { next }
        status != "killed" && status != "timeout" && status != "caught by type check" { print }
        END {
            killed = 0
            for (s in count) if (s == "killed" || s == "timeout") killed += count[s]
            printf "== %s: %d of %d mutants killed", module, killed, total
            for (s in count) if (s != "killed") printf "; %s %d", s, count[s]
            printf "\n"
        }'
done
