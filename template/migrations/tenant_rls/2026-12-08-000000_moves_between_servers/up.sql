-- Moves between servers (`tenant move`). Runs once, as the owner role, with
-- search_path=tenancy_data, on every server. A tenant whose rows moved to another server
-- is refused here from the move's switch on: what a replica that has not heard of the
-- move yet asks of this server gets "tenant moved to another server" (answered 503:
-- retry), never an answer from the old rows, nor a write kept where no one reads it.

-- The tenants that left this server, in schema tenancy (the control plane's on the default
-- server; on another, this table alone), not among the tenant tables. Only the owner
-- reads or writes it.
CREATE SCHEMA IF NOT EXISTS tenancy;
CREATE TABLE tenancy.moved_away (
    moved_tenant uuid PRIMARY KEY,
    moved_at     timestamptz NOT NULL DEFAULT now()
);

-- The connection's tenant (app.tenant_id), NULL for none (no row); it raises for a tenant
-- that moved to another server. As the right side of `tenant_id = ...` it is evaluated
-- when a scan of an index that leads with tenant_id starts (every tenant table's primary
-- key does), before any row is read; in a scan of the whole table, at its first row.
-- A tenant table of your own needs the same policy (`tenant move` refuses to move while
-- one lacks it).
CREATE FUNCTION tenancy.rls_tenant() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tenant uuid := NULLIF(current_setting('app.tenant_id', true), '')::uuid;
BEGIN
    IF EXISTS (SELECT 1 FROM tenancy.moved_away WHERE moved_tenant = tenant) THEN
        RAISE EXCEPTION 'tenant moved to another server'
            USING HINT = 'the registry names its new server: retry';
    END IF;
    RETURN tenant;
END
$$;

-- Distributed PostgreSQL (Citus) moves shards itself: there the policies stay as they
-- were, and `tenant move` refuses (the policies do not call tenancy.rls_tenant()).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        ALTER POLICY tenant_isolation ON notes
            USING (tenant_id = tenancy.rls_tenant())
            WITH CHECK (tenant_id = tenancy.rls_tenant());
    END IF;
END
$$;
