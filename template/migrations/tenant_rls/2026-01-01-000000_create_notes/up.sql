-- Shared tenant tables with Row-Level Security. Runs once, as the owner role, with
-- search_path=tenancy_data. Every tenant table needs the same four things:
--   1. tenant_id uuid NOT NULL, defaulting to the connection's tenant;
--   2. a primary key (and indexes) that lead with tenant_id;
--   3. ROW LEVEL SECURITY enabled and forced (owners are subject to it too);
--   4. the tenant_isolation policy, for reads (USING) and writes (WITH CHECK).
-- An unset tenant (NULL or '') matches no row and can write none: fail closed.
CREATE TABLE notes (
    tenant_id   uuid NOT NULL DEFAULT NULLIF(current_setting('app.tenant_id', true), '')::uuid,
    -- Not a sequence: one shared by all tenants would let a tenant count the others'
    -- writes from the gaps in its own ids. The service writes time-ordered UUIDv7 ids;
    -- the default covers rows written by hand.
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    title       text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    body        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notes
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
