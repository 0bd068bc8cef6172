ALTER TABLE tenancy.tenants
    DROP COLUMN max_connections,
    DROP COLUMN statement_timeout,
    DROP COLUMN rate_limit,
    DROP COLUMN rate_limit_burst,
    DROP COLUMN maintenance;
