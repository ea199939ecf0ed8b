-- 95_reshape.lua - reshape a payload: rename fields, nest flat ones and
-- flatten nested ones. A legacy producer's
--   { uid = 7, uname = "ada", ts = 1700000000, meta = { geo = { cc = "FR" } } }
-- becomes
--   { user = { id = 7, name = "ada" }, at = 1700000000, meta_geo_cc = "FR" }
local function flatten(prefix, t, out, depth)
  for k, v in pairs(t) do
    local name = prefix .. "_" .. tostring(k)
    if type(v) == "table" and depth < 8 then
      flatten(name, v, out, depth + 1)
    else
      out[name] = v
    end
  end
end

return {
  topics = { "legacy.*" },
  on_event = function(ev)
    local p = ev.payload
    local out = { user = { id = p.uid, name = p.uname }, at = p.ts }
    if type(p.meta) == "table" then flatten("meta", p.meta, out, 1) end
    ev.payload = out
    ev.topic = ev.topic:gsub("^legacy%.", "v2.")
    return nil
  end,
}
