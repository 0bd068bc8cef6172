-- The audit trail: one row per lifecycle operation (create, suspend, activate, delete,
-- destroy, limits, maintenance, migrate of one tenant, release of a quarantined
-- identifier), whoever ran it and however it ended. Append-only: the application role is
-- granted SELECT and INSERT alone, and the trigger below refuses UPDATE, DELETE and
-- TRUNCATE to every role (an owner who must prune it disables the trigger, on purpose).
-- tenant_id has no foreign key: a destroyed tenant's history stays.
CREATE TABLE tenancy.audit (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor        text NOT NULL CHECK (char_length(actor) BETWEEN 1 AND 200),
    tenant_id    uuid,
    identifier   text NOT NULL CHECK (char_length(identifier) BETWEEN 1 AND 200),
    operation    text NOT NULL CHECK (operation IN ('create', 'suspend', 'activate', 'delete',
                     'destroy', 'limits', 'maintenance', 'migrate', 'release')),
    params       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(params) = 'object'),
    result       text NOT NULL CHECK (result IN ('ok', 'refused', 'failed')),
    error        text,
    duration_ms  bigint NOT NULL CHECK (duration_ms >= 0)
);

CREATE INDEX audit_identifier_idx ON tenancy.audit (identifier, id);

CREATE FUNCTION tenancy.audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tenancy.audit is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON tenancy.audit
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.audit_is_append_only();

-- Identifiers of destroyed tenants, refused to a new tenant until `until`
-- (TENANCY_IDENTIFIER_QUARANTINE_DAYS after the destroy), so that a new tenant never meets
-- caches, tokens or backups of the old one. `tenant release` ends it early.
CREATE TABLE tenancy.quarantine (
    identifier    text PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    destroyed_at  timestamptz NOT NULL DEFAULT now(),
    until         timestamptz NOT NULL
);
