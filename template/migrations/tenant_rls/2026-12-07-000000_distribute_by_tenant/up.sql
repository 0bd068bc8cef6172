-- Distributed PostgreSQL (Citus). Runs once, as the owner role, with
-- search_path=tenancy_data. Where the citus extension is installed in this database, every
-- shared tenant table is distributed by tenant_id and co-located with notes: all of a
-- tenant's rows, of every table, live on one node. On plain PostgreSQL nothing changes,
-- so the same migrations run on both.
--
-- A tenant table of your own, to stay ready: tenant_id leads its primary key, and every
-- unique index and foreign key includes it; then, in the same migration,
--     SELECT distribute_by_tenant('your_table');
-- Returns whether the table was distributed (false: no Citus here).
CREATE FUNCTION distribute_by_tenant(tenant_table regclass) RETURNS boolean
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN false;
    END IF;
    -- Dynamic, so that plain PostgreSQL never has to resolve Citus's function.
    IF tenant_table = 'tenancy_data.notes'::regclass THEN
        EXECUTE 'SELECT create_distributed_table($1, ''tenant_id'')' USING tenant_table;
    ELSE
        EXECUTE 'SELECT create_distributed_table($1, ''tenant_id'', '
            'colocate_with => ''tenancy_data.notes'')' USING tenant_table;
    END IF;
    RETURN true;
END
$$;

-- Functions are executable by PUBLIC by default: this one is for migrations alone.
REVOKE ALL ON FUNCTION distribute_by_tenant(regclass) FROM PUBLIC;

SELECT distribute_by_tenant('notes');
