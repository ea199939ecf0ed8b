-- 10_dedup.lua - at-least-once producers retry: drop an event whose id was
-- seen in the last 10 minutes (bounded memory, see sluice.seen).
return {
  on_event = function(ev)
    if sluice.seen(ev.id, 600000) then
      return sluice.drop("duplicate id")
    end
    return nil
  end,
}
