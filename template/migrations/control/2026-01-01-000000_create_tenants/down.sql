DROP TABLE tenancy.tenants;
