-- wrk script: GET /api/notes?limit=20, every request another tenant: X-Tenant-ID rotates
-- over t0..t(TENANTS-1), each wrk thread starting at its own offset.
local tenants = tonumber(os.getenv("TENANTS") or "10")
local counter = 0
i = 0
setup = function(thread)
  thread:set("i", counter * 7919)
  counter = counter + 1
end
request = function()
  i = (i + 1) % tenants
  return wrk.format("GET", "/api/notes?limit=20", { ["X-Tenant-ID"] = "t" .. i })
end
