-- A tenant with a database of its own says where it is: `tenancy.tenants.server` is the
-- server `tenancy.tenant_databases` records for it while it is in tier `database`, and
-- null otherwise (hybrid's other tiers are on the default server; a database a tenant
-- left is still recorded until it is dropped). Kept so by the triggers below, whoever
-- places, moves or drops a database or changes a tier.
UPDATE tenancy.tenants t SET server = d.server
    FROM tenancy.tenant_databases d
    WHERE d.tenant_id = t.id AND t.isolation = 'database'
      AND t.server IS DISTINCT FROM d.server;

CREATE FUNCTION tenancy.follow_tenant_database() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tenant uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
    placed text := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.server END;
BEGIN
    UPDATE tenancy.tenants t
        SET server = CASE WHEN t.isolation = 'database' THEN placed END
        WHERE t.id = tenant
          AND t.server IS DISTINCT FROM (CASE WHEN t.isolation = 'database' THEN placed END);
    RETURN NULL;
END
$$;

CREATE FUNCTION tenancy.server_of_tier() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.isolation = 'database' THEN
        NEW.server := (SELECT d.server FROM tenancy.tenant_databases d WHERE d.tenant_id = NEW.id);
    ELSE
        NEW.server := NULL;
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION tenancy.follow_tenant_database() FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.server_of_tier() FROM PUBLIC;

CREATE TRIGGER tenant_databases_follow AFTER INSERT OR UPDATE OF server OR DELETE
    ON tenancy.tenant_databases
    FOR EACH ROW EXECUTE FUNCTION tenancy.follow_tenant_database();
CREATE TRIGGER tenants_server_of_tier BEFORE UPDATE OF isolation ON tenancy.tenants
    FOR EACH ROW WHEN (OLD.isolation IS DISTINCT FROM NEW.isolation)
    EXECUTE FUNCTION tenancy.server_of_tier();
