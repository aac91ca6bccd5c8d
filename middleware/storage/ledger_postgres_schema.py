"""The PostgreSQL schema of the log store (tables are described in ``ledger_base``).

Row triggers refuse ``UPDATE`` and ``DELETE`` on leaves, checkpoints and witnessed
checkpoints (and an insert of a witnessed checkpoint not above every size kept:
:mod:`~middleware.storage.ledger_witnessed`), and statement
triggers refuse ``TRUNCATE`` (which fires no row trigger). A statement trigger over the
inserted rows (a transition table) refuses leaves that do not take the next indexes, so a
hand-made row cannot open a gap or land beyond the end. PostgreSQL has no
``INSERT OR REPLACE``; ``INSERT ... ON CONFLICT DO UPDATE`` fires the update trigger. The
evidence table has no triggers on purpose (crypto-shredding), nor have the audit index and key
tables (:data:`~middleware.storage.audit_index_postgres.INDEX_SCHEMA`: derived data that shred
and reindex rewrite, and the keys a shred deletes). Requires PostgreSQL 14 or later
(``CREATE OR REPLACE TRIGGER``).

:data:`SCHEMA` runs in one transaction under :data:`DDL_LOCK`, a transaction-level advisory
lock, because concurrent ``CREATE ... IF NOT EXISTS`` of one table can fail in PostgreSQL
when several replicas start at once.
"""

from __future__ import annotations

from middleware.ledger.merkle import EMPTY_ROOT
from middleware.storage.audit_index_postgres import INDEX_SCHEMA

__all__ = ["CONSENT_LEAF", "DDL_LOCK", "LOCK_AND_READ", "SCHEMA", "SIGNER_LOCK"]

#: The leaves of ``consent`` and ``consent-revoke`` entries: their kind byte (offset 5,
#: ``middleware.ledger.leaf``) is 1 or 2; the partial index is built on this predicate.
CONSENT_LEAF = "get_byte(leaf, 5) IN (1, 2)"

#: First key of the two-key advisory locks this store takes; the second is derived from the
#: schema name (``$1``), so logs in different schemas do not wait for each other.
_LOCK_CLASS = 0x43535259  # "CSRY", the leaf tag

#: Held while creating or upgrading the schema; ``$1`` is the schema name.
DDL_LOCK = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS}, hashtext($1::text) # 1)"
#: Held by whoever signs a checkpoint, the integrator role (see ``ledger_postgres``); ``$1``
#: is the schema name.
SIGNER_LOCK = f"SELECT pg_advisory_xact_lock({_LOCK_CLASS}, hashtext($1::text))"

#: An append's first statement (``ledger_postgres_append``): ``$1`` schema name, ``$2`` the
#: batch's idempotency keys, ``$3`` its pseudonyms, ``$4`` the pseudonyms of its index rows.
LOCK_AND_READ = "SELECT * FROM consentry_ledger_lock_append($1, $2, $3, $4)"

# The row lock, then the signer lock, in that order (as every other path takes them), then
# the reads the plan needs. A VOLATILE function's statements each take a fresh snapshot at
# READ COMMITTED (PostgreSQL manual, "Function Volatility Categories"), so every read after
# the lock sees each append committed before the lock was granted: the log this batch extends.
# The state row is missing only if a DBA removed it: the OUT values are then all NULL.
# A pseudonym's last index is one backward index probe (ORDER BY idx DESC LIMIT 1) rather
# than max() over its whole chain grouped, which grew with the chain (9 of 15 ms a batch of
# 64 after 20,000 entries over 1,000 patients).
_LOCK_APPEND = f"""
CREATE OR REPLACE FUNCTION consentry_ledger_lock_append(
    log text, keys text[], pseudonyms bytea[], named bytea[],
    OUT state_size bigint, OUT state_compact bytea, OUT state_root bytea,
    OUT key_names text[], OUT key_idx bigint[],
    OUT chain_pseudonyms bytea[], OUT chain_idx bigint[],
    OUT shredded bytea[], OUT checkpointed boolean
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT s.size, s.compact, s.root INTO state_size, state_compact, state_root
        FROM consentry_ledger_state s WHERE s.id = 1 FOR UPDATE;
    IF NOT FOUND THEN RETURN; END IF;
    PERFORM pg_advisory_xact_lock({_LOCK_CLASS}, hashtext(log));
    SELECT array_agg(l.idem_key), array_agg(l.idx) INTO key_names, key_idx
        FROM consentry_ledger_leaves l WHERE l.idem_key = ANY(keys);
    SELECT array_agg(p.pseudonym), array_agg(t.idx) INTO chain_pseudonyms, chain_idx
        FROM unnest(pseudonyms) AS p(pseudonym)
        CROSS JOIN LATERAL (SELECT l.idx FROM consentry_ledger_leaves l
            WHERE l.pseudonym = p.pseudonym ORDER BY l.idx DESC LIMIT 1) t;
    SELECT array_agg(d.pseudonym) INTO shredded
        FROM consentry_audit_shredded d WHERE d.pseudonym = ANY(named);
    checkpointed := EXISTS (
        SELECT 1 FROM consentry_ledger_checkpoints c WHERE c.size = state_size);
END
$$;
"""  # noqa: S608  (built from constants only)


def _append_only(table: str) -> str:
    return f"""
CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION consentry_ledger_refuse();
CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION consentry_ledger_refuse();
"""


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS consentry_ledger_leaves (
    idx bigint PRIMARY KEY CHECK (idx >= 0),
    leaf bytea NOT NULL,
    leaf_hash bytea NOT NULL CHECK (octet_length(leaf_hash) = 32),
    pseudonym bytea CHECK (pseudonym IS NULL OR octet_length(pseudonym) = 16),
    idem_key text UNIQUE
);
CREATE INDEX IF NOT EXISTS consentry_ledger_leaves_pseudonym
    ON consentry_ledger_leaves (pseudonym, idx) WHERE pseudonym IS NOT NULL;
CREATE INDEX IF NOT EXISTS consentry_ledger_leaves_consent
    ON consentry_ledger_leaves (idx) WHERE {CONSENT_LEAF};
CREATE TABLE IF NOT EXISTS consentry_ledger_evidence (
    idx bigint PRIMARY KEY REFERENCES consentry_ledger_leaves (idx),
    salt bytea,
    data bytea
);
CREATE TABLE IF NOT EXISTS consentry_ledger_checkpoints (
    size bigint PRIMARY KEY CHECK (size >= 0),
    root bytea NOT NULL CHECK (octet_length(root) = 32),
    note text NOT NULL
);
CREATE TABLE IF NOT EXISTS consentry_ledger_state (
    id integer PRIMARY KEY CHECK (id = 1),
    size bigint NOT NULL CHECK (size >= 0),
    compact bytea NOT NULL,
    root bytea NOT NULL CHECK (octet_length(root) = 32)
);
INSERT INTO consentry_ledger_state (id, size, compact, root)
    VALUES (1, 0, ''::bytea, '\\x{EMPTY_ROOT.hex()}'::bytea) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS consentry_ledger_heartbeat (
    id integer PRIMARY KEY CHECK (id = 1),
    beats bigint NOT NULL
);
INSERT INTO consentry_ledger_heartbeat (id, beats) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION consentry_ledger_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consentry ledger: % is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE OR REPLACE FUNCTION consentry_ledger_contiguous() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE lo bigint; hi bigint; n bigint; below bigint; above boolean;
BEGIN
    SELECT min(idx), max(idx), count(*) INTO lo, hi, n FROM inserted;
    IF n = 0 THEN RETURN NULL; END IF;
    EXECUTE format('SELECT max(idx) FROM %I.%I WHERE idx < $1', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO below USING lo;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE idx > $1)',
                   TG_TABLE_SCHEMA, TG_TABLE_NAME) INTO above USING hi;
    IF hi - lo + 1 <> n OR coalesce(below + 1, 0) <> lo OR above THEN
        RAISE EXCEPTION 'consentry ledger: leaves take the next indexes (append-only)'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END
$$;
{_append_only("consentry_ledger_leaves")}
CREATE OR REPLACE TRIGGER consentry_ledger_leaves_in_order AFTER INSERT ON consentry_ledger_leaves
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION consentry_ledger_contiguous();
{_append_only("consentry_ledger_checkpoints")}
CREATE TABLE IF NOT EXISTS consentry_ledger_witnessed (
    size bigint PRIMARY KEY CHECK (size >= 0),
    note text NOT NULL
);
CREATE OR REPLACE FUNCTION consentry_ledger_witnessed_grows() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE newer boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE size >= $1)',
                   TG_TABLE_SCHEMA, TG_TABLE_NAME) INTO newer USING NEW.size;
    IF newer THEN
        RAISE EXCEPTION 'consentry ledger: witnessed checkpoints only grow'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER consentry_ledger_witnessed_grows
    BEFORE INSERT ON consentry_ledger_witnessed
    FOR EACH ROW EXECUTE FUNCTION consentry_ledger_witnessed_grows();
{_append_only("consentry_ledger_witnessed")}
{INDEX_SCHEMA}
{_LOCK_APPEND}
"""  # noqa: S608  (built from constants only)
