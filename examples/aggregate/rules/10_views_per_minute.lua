-- 10_views_per_minute.lua - counts "page.view" events per path and emits a
-- summary to the "summaries" output every minute. The counts survive a hot
-- reload through snapshot/restore.
local counts = {}
local window_start = sluice.now()

local function flush()
  local total = 0
  for _, n in pairs(counts) do total = total + n end
  if total > 0 then
    sluice.emit("summaries", {
      topic = "page.views.minute",
      payload = { from = window_start, to = sluice.now(), total = total,
                  by_path = counts },
    })
  end
  counts = {}
  window_start = sluice.now()
end

return {
  topics = { "page.view" },

  on_start = function()
    sluice.every(60000, flush)
  end,

  on_event = function(ev)
    local path = ev.payload.path or "?"
    counts[path] = (counts[path] or 0) + 1
    return nil -- no decision: the config routes the raw event
  end,

  snapshot = function()
    return { counts = counts, window_start = window_start }
  end,

  restore = function(s)
    counts = s.counts
    window_start = s.window_start
  end,
}
