DROP TRIGGER tenants_server_of_tier ON tenancy.tenants;
DROP TRIGGER tenant_databases_follow ON tenancy.tenant_databases;
DROP FUNCTION tenancy.server_of_tier();
DROP FUNCTION tenancy.follow_tenant_database();
