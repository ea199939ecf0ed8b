-- 30_redact.lua - redact PII before it leaves: fields by name (anywhere
-- in the payload, nested too) and values by pattern (e-mail addresses and
-- card-like digit runs inside any string).
local by_name = { password = true, ssn = true, card_number = true, token = true }
local MASK = "[redacted]"

local function scrub(s)
  s = s:gsub("[%w._%%+-]+@[%w.-]+%.%a+", "[email]")
  s = s:gsub("%d[%d -]%d[%d -]+%d", function(run)
    local digits = run:gsub("[ -]", "")
    if #digits >= 13 and #digits <= 19 then return "[card]" end
  end)
  return s
end

local function walk(t, depth)
  if depth > 16 then return end
  for k, v in pairs(t) do
    if type(k) == "string" and by_name[k:lower()] then
      t[k] = MASK
    elseif type(v) == "string" then
      local clean = scrub(v)
      if clean ~= v then t[k] = clean end
    elseif type(v) == "table" then
      walk(v, depth + 1)
    end
  end
end

return {
  topics = { "users.*", "support.*" },
  on_event = function(ev)
    if type(ev.payload) == "table" then walk(ev.payload, 1) end
    return nil
  end,
}
