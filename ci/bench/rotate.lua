-- wrk script: GET /api/notes?limit=20, the tenant rotating over t0..t(TENANTS-1).
local tenants = tonumber(os.getenv("TENANTS") or "10")
local i = 0
request = function()
  i = (i + 1) % tenants
  return wrk.format("GET", "/api/notes?limit=20", { ["X-Tenant-ID"] = "t" .. i })
end
