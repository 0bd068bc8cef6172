-- Where each tenant's database lives (database per tenant only). Runs in schema tenancy.
CREATE TABLE tenancy.tenant_databases (
    tenant_id      uuid PRIMARY KEY REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    database_name  text NOT NULL UNIQUE
                   CHECK (database_name ~ '^[a-z][a-z0-9_]*$' AND octet_length(database_name) <= 63),
    created_at     timestamptz NOT NULL DEFAULT now()
);
