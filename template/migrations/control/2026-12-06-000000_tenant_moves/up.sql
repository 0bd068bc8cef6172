-- A tenant's data (its schema, or its database) moving to another server (`tenant move`):
-- one row while the move is under way, so that a move interrupted at any step is resumed
-- where it stopped. 'copying': the tenant is served from its recorded place, read-only,
-- while a copy is made on the target (redone from the start on resume); 'switched': the
-- registry names the target, and the old copy is still to be dropped.
CREATE TABLE tenancy.tenant_moves (
    tenant_id    uuid PRIMARY KEY REFERENCES tenancy.tenants (id) ON DELETE CASCADE,
    -- host or host:port; NULL: the default server.
    from_server  text CHECK (from_server ~ '^[a-z0-9.:\[\]-]+$' AND length(from_server) <= 300),
    to_server    text CHECK (to_server ~ '^[a-z0-9.:\[\]-]+$' AND length(to_server) <= 300),
    step         text NOT NULL DEFAULT 'copying' CHECK (step IN ('copying', 'switched')),
    started_at   timestamptz NOT NULL DEFAULT now()
);

-- 'moving': read-only while `tenant move` copies the tenant's data.
ALTER TABLE tenancy.tenants DROP CONSTRAINT tenants_maintenance_check;
ALTER TABLE tenancy.tenants ADD CONSTRAINT tenants_maintenance_check
    CHECK (maintenance IN ('off', 'read_only', 'migrating', 'moving'));

-- Moves are recorded in the audit trail.
ALTER TABLE tenancy.audit DROP CONSTRAINT audit_operation_check;
ALTER TABLE tenancy.audit ADD CONSTRAINT audit_operation_check
    CHECK (operation IN ('create', 'suspend', 'activate', 'delete', 'destroy', 'limits',
                         'maintenance', 'migrate', 'release', 'job_retry', 'job_cancel',
                         'move'));
