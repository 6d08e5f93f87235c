"""DDL of the audit tables; the database itself refuses UPDATE, DELETE (and TRUNCATE) on them.

Timestamps are fixed-width UTC text (``tables.audit_chain.format_ts``), so what is hashed is
exactly what is stored, in both databases. ``(tenant_id, seq)`` is the chain position,
``(tenant_id, event_id)`` makes appends idempotent.
"""

from __future__ import annotations

from typing import Final

REFUSED_MESSAGE: Final = "wo-stream audit trail is append-only"

_ENTRY_COLUMNS = """
    tenant_id     TEXT   NOT NULL,
    seq           BIGINT NOT NULL CHECK (seq >= 1),
    event_id      TEXT   NOT NULL,
    event_type    TEXT   NOT NULL,
    event_version TEXT   NOT NULL,
    actor_id      TEXT   NOT NULL,
    actor_type    TEXT   NOT NULL,
    actor_role    TEXT   NOT NULL,
    event_ts      TEXT   NOT NULL,
    recorded_at   TEXT   NOT NULL,
    event_json    TEXT   NOT NULL,
    prev_hash     TEXT   NOT NULL,
    hash          TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, seq),
    UNIQUE (tenant_id, event_id)
"""

_CHECKPOINT_COLUMNS = """
    tenant_id  TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    head_hash  TEXT   NOT NULL,
    event_id   TEXT   NOT NULL,
    signed_at  TEXT   NOT NULL,
    key_id     TEXT   NOT NULL,
    signature  TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, seq, key_id)
"""

TABLES: Final = ("audit_entry", "audit_checkpoint")


def _sqlite_guards(table: str, unique: str) -> str:
    # INSERT OR REPLACE deletes the conflicting row without firing DELETE triggers (unless
    # recursive_triggers is on), so an insert that would collide is refused up front too.
    return f"""
CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, '{REFUSED_MESSAGE}: UPDATE on {table} refused'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, '{REFUSED_MESSAGE}: DELETE on {table} refused'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table}
WHEN EXISTS (SELECT 1 FROM {table} WHERE {unique})
BEGIN SELECT RAISE(ABORT, '{REFUSED_MESSAGE}: overwriting a row of {table} refused'); END;
"""


SQLITE_DDL: Final = (
    f"CREATE TABLE IF NOT EXISTS audit_entry ({_ENTRY_COLUMNS});\n"
    f"CREATE TABLE IF NOT EXISTS audit_checkpoint ({_CHECKPOINT_COLUMNS});\n"
    + _sqlite_guards(
        "audit_entry",
        "tenant_id = NEW.tenant_id AND (seq = NEW.seq OR event_id = NEW.event_id)",
    )
    + _sqlite_guards(
        "audit_checkpoint",
        "tenant_id = NEW.tenant_id AND seq = NEW.seq AND key_id = NEW.key_id",
    )
)


def _pg_guard(table: str) -> str:
    return f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{table}_append_only'
                 AND tgrelid = '{table}'::regclass) THEN
    CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
      FOR EACH ROW EXECUTE FUNCTION wo_audit_refuse();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{table}_no_truncate'
                 AND tgrelid = '{table}'::regclass) THEN
    CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
      FOR EACH STATEMENT EXECUTE FUNCTION wo_audit_refuse();
  END IF;
END $$;
"""


POSTGRES_DDL: Final = (
    f"CREATE TABLE IF NOT EXISTS audit_entry ({_ENTRY_COLUMNS});\n"
    f"CREATE TABLE IF NOT EXISTS audit_checkpoint ({_CHECKPOINT_COLUMNS});\n"
    f"""
CREATE OR REPLACE FUNCTION wo_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '{REFUSED_MESSAGE}: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END $$;
""" + _pg_guard("audit_entry") + _pg_guard("audit_checkpoint")
)

# Serialises concurrent schema setup by several writers (pg_advisory_xact_lock key).
PG_SCHEMA_LOCK: Final = 0x57_4F_41_55_44_49_54  # "WOAUDIT"
