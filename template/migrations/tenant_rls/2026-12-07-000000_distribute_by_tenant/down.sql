-- Tables already distributed stay distributed (Citus's undistribute_table reverses that).
DROP FUNCTION distribute_by_tenant(regclass);
