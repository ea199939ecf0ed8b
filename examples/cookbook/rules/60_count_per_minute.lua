-- 60_count_per_minute.lua - count per minute and emit a summary: page
-- views by path, one event a minute to "summaries"; the last partial
-- minute goes out at shutdown (on_stop), and the counts survive a reload
-- and, with rules.persist, a restart (snapshot/restore).
local counts, total = {}, 0
local since = sluice.now()

local function flush()
  if total > 0 then
    sluice.emit("summaries", { topic = "pageviews.minute",
      payload = { from = since, to = sluice.now(), total = total, by_path = counts } })
  end
  counts, total, since = {}, 0, sluice.now()
end

return {
  topics = { "pageviews.*" },
  on_start = function() sluice.every(60000, flush) end,
  on_event = function(ev)
    local path = ev.payload.path or "?"
    counts[path] = (counts[path] or 0) + 1
    total = total + 1
    return nil -- the raw event goes where the routes say
  end,
  on_stop = flush,
  snapshot = function() return { counts = counts, total = total, since = since } end,
  restore = function(s) counts, total, since = s.counts, s.total, s.since end,
}
