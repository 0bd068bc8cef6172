-- The tenant registry. Runs with search_path=tenancy; the schema exists already.
CREATE TABLE tenancy.tenants (
    id          uuid PRIMARY KEY,
    identifier  text NOT NULL UNIQUE
                CHECK (identifier ~ '^[a-z][a-z0-9_]*$' AND octet_length(identifier) <= 56),
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    status      text NOT NULL DEFAULT 'provisioning'
                CHECK (status IN ('provisioning', 'active', 'suspended', 'deleted')),
    -- How this tenant's data is isolated; a service serves only the ones it was built for.
    isolation   text NOT NULL CHECK (isolation IN ('schema', 'rls', 'database')),
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tenants_status_idx ON tenancy.tenants (status);
