-- Hybrid: the shared tables serve a tenant only while its tier is rls. A tenant moved to
-- another tier (`tenant move --isolation schema`) is served from there at once; what a
-- replica that has not heard of the move yet asks of the shared tables is refused
-- ("tenant moved to another tier", answered 503: retry), never answered from nowhere nor
-- written where no one reads it.
--
-- tenancy.rls_tenant() is the connection's tenant (app.tenant_id) while its tier is rls,
-- NULL (no row) for none or an unknown one; it raises for a tenant of another tier. As
-- the right side of `tenant_id = ...` it is evaluated once per index scan, before any
-- row is read. A tenant table of your own needs the same policy.
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
