-- Schema per tenant: what the application role may do to tenants' schemas without the
-- owner's rights. These functions run as their owner (SECURITY DEFINER, with a fixed
-- search_path) and check their arguments against the registry, so that `serve` creates
-- and destroys tenants holding only the application role's password. Runs with
-- search_path=tenancy.

-- The tenant migrations as the last `migrate` wrote them: it keeps them in step with its
-- build. Only the owner and the functions below read them.
CREATE TABLE tenancy.tenant_migrations (
    version  text PRIMARY KEY,
    up_sql   text NOT NULL
);

-- The schema of tenant p_identifier, when the identifier is a safe one and the registry
-- holds that tenant, isolated by schema, in `expected_status`; an error otherwise.
CREATE FUNCTION tenancy.tenant_schema(p_identifier text, expected_status text) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_identifier IS NULL OR p_identifier !~ '^[a-z][a-z0-9_]*$'
       OR octet_length(p_identifier) > 56 THEN
        RAISE EXCEPTION 'invalid tenant identifier' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM 1 FROM tenancy.tenants
        WHERE identifier = p_identifier AND isolation = 'schema' AND status = expected_status;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no tenant % with schema isolation is %', p_identifier, expected_status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN 'tenant_' || p_identifier;
END
$$;

-- Creates the schema of tenant p_identifier, which must be registered, 'provisioning' and
-- isolated by schema, and applies the tenant migrations it lacks, recorded as diesel
-- records them (so `migrate` goes on from there); the calling role gets data access.
-- Returns every version the schema has, oldest first.
-- On Citus 12 or later (distributed PostgreSQL), `citus.enable_schema_based_sharding`
-- makes the new schema a distributed schema: placed whole on one node, its tables with
-- it. On plain PostgreSQL the setting is an unused placeholder and changes nothing.
CREATE FUNCTION tenancy.provision_schema(p_identifier text) RETURNS text[]
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET citus.enable_schema_based_sharding = on AS $$
DECLARE
    target text;
    migration record;
    done boolean;
    versions text[];
BEGIN
    target := tenancy.tenant_schema(p_identifier, 'provisioning');
    PERFORM pg_advisory_xact_lock(hashtext('migrate:' || target));
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', target);
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I.__diesel_schema_migrations ('
        'version varchar(50) PRIMARY KEY NOT NULL, '
        'run_on timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP)', target);
    -- Each migration sees the tenant's schema alone, as `migrate` runs it.
    PERFORM set_config('search_path', format('%I', target), true);
    FOR migration IN SELECT version, up_sql FROM tenancy.tenant_migrations ORDER BY version LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.__diesel_schema_migrations '
            'WHERE version = $1)', target) INTO done USING migration.version;
        IF NOT done THEN
            EXECUTE migration.up_sql;
            EXECUTE format('INSERT INTO %I.__diesel_schema_migrations (version) VALUES ($1)',
                target) USING migration.version;
        END IF;
    END LOOP;
    PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
    IF session_user <> current_user THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', target, session_user);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I',
            target, session_user);
        EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I',
            target, session_user);
        EXECUTE format('REVOKE ALL ON TABLE %I.__diesel_schema_migrations FROM %I',
            target, session_user);
    END IF;
    EXECUTE format('SELECT array_agg(version::text ORDER BY version) '
        'FROM %I.__diesel_schema_migrations', target) INTO versions;
    RETURN coalesce(versions, '{}');
END
$$;

-- Drops the schema of tenant p_identifier, which must be registered, 'deleted' and
-- isolated by schema.
CREATE FUNCTION tenancy.drop_tenant_schema(p_identifier text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE',
        tenancy.tenant_schema(p_identifier, 'deleted'));
END
$$;

-- Functions are executable by PUBLIC by default: only the application role may run these
-- (`migrate` grants it).
REVOKE ALL ON FUNCTION tenancy.provision_schema(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.drop_tenant_schema(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION tenancy.tenant_schema(text, text) FROM PUBLIC;
