DROP TRIGGER tenant_databases_follow ON tenancy.tenant_databases;
DROP FUNCTION tenancy.follow_tenant_database();
