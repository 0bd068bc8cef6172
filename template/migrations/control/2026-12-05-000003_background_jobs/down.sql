ALTER TABLE tenancy.audit DROP CONSTRAINT audit_operation_check;
ALTER TABLE tenancy.audit ADD CONSTRAINT audit_operation_check
    CHECK (operation IN ('create', 'suspend', 'activate', 'delete', 'destroy', 'limits',
                         'maintenance', 'migrate', 'release')) NOT VALID;
DROP FUNCTION tenancy.claim_job(interval);
DROP TABLE tenancy.job_turns;
DROP TABLE tenancy.jobs;
