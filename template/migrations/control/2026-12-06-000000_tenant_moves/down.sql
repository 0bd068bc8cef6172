ALTER TABLE tenancy.audit DROP CONSTRAINT audit_operation_check;
ALTER TABLE tenancy.audit ADD CONSTRAINT audit_operation_check
    CHECK (operation IN ('create', 'suspend', 'activate', 'delete', 'destroy', 'limits',
                         'maintenance', 'migrate', 'release', 'job_retry', 'job_cancel'))
    NOT VALID;
ALTER TABLE tenancy.tenants DROP CONSTRAINT tenants_maintenance_check;
ALTER TABLE tenancy.tenants ADD CONSTRAINT tenants_maintenance_check
    CHECK (maintenance IN ('off', 'read_only', 'migrating')) NOT VALID;
DROP TABLE tenancy.tenant_moves;
