-- Where each tenant's database lives (database per tenant only). Runs in schema tenancy.
-- Written before the database is created, so an interrupted provisioning or a destroy
-- always finds it.
CREATE TABLE tenancy.tenant_databases (
    tenant_id      uuid PRIMARY KEY REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    database_name  text NOT NULL UNIQUE
                   CHECK (database_name ~ '^[a-z][a-z0-9_]*$' AND octet_length(database_name) <= 63),
    -- host or host:port of another PostgreSQL server; NULL: the default server. Never
    -- credentials.
    server         text CHECK (server ~ '^[a-z0-9.:\[\]-]+$' AND length(server) <= 300),
    created_at     timestamptz NOT NULL DEFAULT now()
);
