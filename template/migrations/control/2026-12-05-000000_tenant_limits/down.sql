ALTER TABLE tenancy.tenants DROP COLUMN max_connections, DROP COLUMN statement_timeout;
