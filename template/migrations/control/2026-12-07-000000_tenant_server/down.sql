ALTER TABLE tenancy.tenants DROP COLUMN server;
