DROP TABLE tenancy.tenant_databases;
