-- 70_dedup.lua - dedup by id: webhook senders retry, so the same delivery
-- may arrive more than once; the first within 10 minutes goes on.
local WINDOW_MS = 10 * 60 * 1000

return {
  topics = { "webhooks.*" },
  on_event = function(ev)
    local p = ev.payload
    local id = type(p) == "table" and p.delivery_id or ev.id
    if sluice.seen(tostring(id), WINDOW_MS) then
      return sluice.drop("duplicate")
    end
    return nil
  end,
}
