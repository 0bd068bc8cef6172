-- A tenant's own limits; NULL: the service's setting applies (TENANCY_TENANT_MAX_CONNECTIONS).
ALTER TABLE tenancy.tenants
    ADD COLUMN max_connections integer CHECK (max_connections BETWEEN 1 AND 100000);
