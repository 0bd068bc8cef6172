ALTER TABLE tenancy.tenants DROP COLUMN max_connections;
