-- 40_sample.lua - keep 1% of noisy events. The choice hashes the event id,
-- so it is the same on every host and on a replay (math.random is not).
local KEEP_PER_10000 = 100

local function bucket(id)
  local h = 5381
  for i = 1, #id do h = (h * 33 + id:byte(i)) % 4294967296 end
  return h % 10000
end

return {
  topics = { "metrics.debug.*" },
  on_event = function(ev)
    if bucket(ev.id) < KEEP_PER_10000 then return nil end
    return sluice.drop("sampled out")
  end,
}
