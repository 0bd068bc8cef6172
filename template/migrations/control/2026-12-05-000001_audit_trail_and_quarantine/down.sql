DROP TABLE tenancy.quarantine;
DROP TABLE tenancy.audit;
DROP FUNCTION tenancy.audit_is_append_only();
