-- A tenant's own database says where the tenant is: `tenancy.tenants.server` follows
-- `tenancy.tenant_databases.server` (placed, moved, or no database any more), whoever
-- changes it, so the registry answers "where is this tenant" the same way for every
-- isolation.
UPDATE tenancy.tenants t SET server = d.server
    FROM tenancy.tenant_databases d
    WHERE d.tenant_id = t.id AND t.server IS DISTINCT FROM d.server;

CREATE FUNCTION tenancy.follow_tenant_database() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE tenancy.tenants SET server = NULL
            WHERE id = OLD.tenant_id AND server IS NOT NULL;
    ELSE
        UPDATE tenancy.tenants SET server = NEW.server
            WHERE id = NEW.tenant_id AND server IS DISTINCT FROM NEW.server;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION tenancy.follow_tenant_database() FROM PUBLIC;

CREATE TRIGGER tenant_databases_follow AFTER INSERT OR UPDATE OF server OR DELETE
    ON tenancy.tenant_databases
    FOR EACH ROW EXECUTE FUNCTION tenancy.follow_tenant_database();
