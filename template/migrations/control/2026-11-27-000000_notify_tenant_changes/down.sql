DROP TRIGGER tenants_announce ON tenancy.tenants;
DROP FUNCTION tenancy.announce_tenant_change();
DROP TRIGGER tenants_touch ON tenancy.tenants;
DROP FUNCTION tenancy.touch_tenant();
