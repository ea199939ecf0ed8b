-- 20_drop_debug.lua - drop by level: debug and trace logs never leave the
-- host; everything else goes on (nil: the routes decide).
local noisy = { debug = true, trace = true }

return {
  topics = { "logs.*" },
  on_event = function(ev)
    local level = ev.payload.level
    if type(level) == "string" and noisy[level:lower()] then
      return sluice.drop("level " .. level:lower())
    end
    return nil
  end,
}
