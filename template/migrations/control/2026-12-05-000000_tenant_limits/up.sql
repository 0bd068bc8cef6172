-- A tenant's own limits; NULL: the service's setting applies (TENANCY_TENANT_MAX_CONNECTIONS,
-- TENANCY_STATEMENT_TIMEOUT in seconds).
ALTER TABLE tenancy.tenants
    ADD COLUMN max_connections integer CHECK (max_connections BETWEEN 1 AND 100000),
    ADD COLUMN statement_timeout integer CHECK (statement_timeout BETWEEN 1 AND 86400);
