ALTER POLICY tenant_isolation ON notes
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
DROP FUNCTION tenancy.rls_tenant();
DROP TABLE tenancy.moved_away;
