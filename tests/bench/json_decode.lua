-- tests/bench/json_decode.lua - how long json.decode takes for a typical
-- 1 KB object (the path rules' sluice.json.decode takes). Prints timings,
-- asserts nothing. Part of `make bench`; alone: luajit tests/bench/json_decode.lua
package.cpath = (os.getenv("BUILD") or "build") .. "/?.so;" .. package.cpath
local core = require("sluice_core")

local parts = {}
for i = 1, 8 do
  parts[#parts + 1] = string.format(
    '{"id":"evt-%04d","user":{"name":"Ada Lovelace","email":"ada@example.org",' ..
    '"age":%d,"score":%d.25},"tags":["alpha","beta","gamma"],"ok":true,"n":null}',
    i, 30 + i, i * 7)
end
local doc = '{"items":[' .. table.concat(parts, ",") .. '],"total":8,"page":1}'

local function bench(name, text, n)
  for _ = 1, 1000 do core.decode_json(text) end -- warm up
  local best = math.huge
  for _ = 1, 5 do
    local t0 = os.clock()
    for _ = 1, n do core.decode_json(text) end
    local dt = (os.clock() - t0) / n
    if dt < best then best = dt end
  end
  print(string.format("%-22s %6d bytes  %8.2f us/decode  %7.1f MB/s", name,
                      #text, best * 1e6, #text / best / 1e6))
end

bench("typical object", doc, 20000)
bench("64 KB of objects", '[' .. string.rep(doc .. ",", 63) .. doc .. ']', 300)
