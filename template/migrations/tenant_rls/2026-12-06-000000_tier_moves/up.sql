-- Hybrid's changes of tier (`tenant move --isolation`). Runs once, as the owner role, in
-- the shared database. A tenant that left a place is refused there from the switch on:
-- what a replica that has not heard of the move yet asks of the old place gets "tenant
-- moved to another tier" (answered 503: retry), never an answer from the old place or
-- from nowhere, nor a write kept where no one reads it.

-- The shared tables serve a tenant only while its tier is rls. tenancy.rls_tenant() is
-- the connection's tenant (app.tenant_id) while its tier is rls, NULL (no row) for none
-- or an unknown one; it raises for a tenant of another tier. As the right side of
-- `tenant_id = ...` it is evaluated once per scan, before any row is read. A shared
-- table of your own needs the same policy.
CREATE FUNCTION tenancy.rls_tenant() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    tenant uuid := NULLIF(current_setting('app.tenant_id', true), '')::uuid;
    tier text;
BEGIN
    SELECT isolation INTO tier FROM tenancy.tenants WHERE id = tenant;
    IF tier <> 'rls' THEN
        RAISE EXCEPTION 'tenant moved to another tier: retry'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN CASE WHEN tier = 'rls' THEN tenant END;
END
$$;

ALTER POLICY tenant_isolation ON notes
    USING (tenant_id = tenancy.rls_tenant())
    WITH CHECK (tenant_id = tenancy.rls_tenant());

-- A schema left for a database of its own: each of its tables gets the policy
-- `ctid = tenancy.moved_away()` at the switch (until the schema is dropped, once every
-- replica has heard). Compared with ctid, the function runs when a scan starts, so even
-- a read of an empty table is refused.
CREATE FUNCTION tenancy.moved_away() RETURNS tid
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RAISE EXCEPTION 'tenant moved to another tier: retry'
        USING ERRCODE = 'object_not_in_prerequisite_state';
END
$$;
