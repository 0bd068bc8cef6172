-- The PostgreSQL server a tenant's data is on: host or host:port of a server of
-- TENANCY_DATABASE_SERVERS; NULL: the default server. Never credentials: each role logs
-- in there with its own URL's. Read with the tenant, so a request is routed to its server
-- without another query.
ALTER TABLE tenancy.tenants ADD COLUMN server text
    CHECK (server ~ '^[a-z0-9.:\[\]-]+$' AND length(server) <= 300);
