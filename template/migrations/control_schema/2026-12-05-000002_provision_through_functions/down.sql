DROP FUNCTION tenancy.drop_tenant_schema(text);
DROP FUNCTION tenancy.provision_schema(text);
DROP FUNCTION tenancy.tenant_schema(text, text);
DROP TABLE tenancy.tenant_migrations;
