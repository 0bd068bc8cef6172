-- Every change to the registry, whoever makes it (the admin API, the CLI, another
-- replica, plain SQL), is announced on the channel `tenancy_tenant_changes` when its
-- transaction commits. Each replica listens and drops what its cache holds of the tenant
-- (src/tenancy/changes.rs). The payload is '<identifier> <updated_at in µs>' for a row
-- inserted or updated, '<identifier>' for a row removed.

-- updated_at moves forward on every update, even one that does not set it, so a replica
-- can tell whether what it holds is older than the change announced.
CREATE FUNCTION tenancy.touch_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := greatest(clock_timestamp(), OLD.updated_at + interval '1 microsecond');
    RETURN NEW;
END
$$;

CREATE TRIGGER tenants_touch BEFORE UPDATE ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.touch_tenant();

CREATE FUNCTION tenancy.announce_tenant_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tenancy_tenant_changes', OLD.identifier);
    ELSE
        IF TG_OP = 'UPDATE' AND OLD.identifier <> NEW.identifier THEN
            PERFORM pg_notify('tenancy_tenant_changes', OLD.identifier);
        END IF;
        PERFORM pg_notify(
            'tenancy_tenant_changes',
            NEW.identifier || ' ' || (extract(epoch FROM NEW.updated_at) * 1000000)::bigint
        );
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_announce AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.announce_tenant_change();
