-- A tenant's own limits; NULL: the service's setting applies (TENANCY_TENANT_MAX_CONNECTIONS,
-- TENANCY_STATEMENT_TIMEOUT in seconds, TENANCY_RATE_LIMIT per second and
-- TENANCY_RATE_LIMIT_BURST).
ALTER TABLE tenancy.tenants
    ADD COLUMN max_connections integer CHECK (max_connections BETWEEN 1 AND 100000),
    ADD COLUMN statement_timeout integer CHECK (statement_timeout BETWEEN 1 AND 86400),
    ADD COLUMN rate_limit integer CHECK (rate_limit BETWEEN 1 AND 1000000),
    ADD COLUMN rate_limit_burst integer CHECK (rate_limit_burst BETWEEN 1 AND 1000000);

-- Whether a served tenant takes writes: 'read_only' while an operator changes it,
-- 'migrating' while `migrate` changes its storage.
ALTER TABLE tenancy.tenants
    ADD COLUMN maintenance text NOT NULL DEFAULT 'off'
        CHECK (maintenance IN ('off', 'read_only', 'migrating'));
