-- payload_keys_fuzz_spec.lua - find_lk's quick scan for short fixstr keys
-- and the write log's splice, against random maps whose keys come in every
-- encoding a producer may choose (fixstr, str8, str16, bin8, repeated) over
-- values of every kind (flat, nested, ext, float32): p[k] must be what
-- pairs(p) meets first under k, and a write spliced into the bytes must
-- leave what the general path (the root walked by pairs first) leaves.

local s = require("support")
local tohex = s.tohex

local KEYS = { "a", "b", "ab", "", ("k"):rep(31), ("k"):rep(32), "zz" }

local function u16(n) return string.char(math.floor(n / 256), n % 256) end

local function enc_key(k, how)
  if how == 1 and #k < 32 then return string.char(0xa0 + #k) .. k end
  if how == 2 then return "\xd9" .. string.char(#k) .. k end
  if how == 3 then return "\xda" .. u16(#k) .. k end
  if how == 4 then return "\xc4" .. string.char(#k) .. k end
  if #k < 32 then return string.char(0xa0 + #k) .. k end
  return "\xd9" .. string.char(#k) .. k
end

local VALUES = {
  "\x01", "\xc0", "\xc3", "\xa1x", "\xd9\x01y", "\xca\x3f\x80\x00\x00",
  "\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00", "\xcd\x01\x00", "\xd4\x05\x41",
  "\xc7\x02\x05ab", "\x91\x01", "\x81\xa1x\x02", "\x80", "\x90",
  "\xde\x00\x01\xa1a\x03", "\xc4\x01z",
}

local function random_map(rnd)
  local n = rnd(20) - 1
  local out = {}
  for j = 1, n do
    local k = KEYS[rnd(#KEYS)]
    local how = rnd(6) -- fixstr most often
    if how > 4 then how = 1 end
    out[j] = enc_key(k, how) .. VALUES[rnd(#VALUES)]
  end
  local head
  local form = rnd(3)
  if form == 1 and n < 16 then head = string.char(0x80 + n)
  elseif form == 3 then head = "\xdf\x00\x00" .. u16(n)
  else head = "\xde" .. u16(n) end
  return head .. table.concat(out)
end

describe("short string keys among keys of every encoding", function()
  teardown(s.cleanup)

  local reader = s.on_event([[
    local p = ev.payload
    local function show(v)
      if type(v) == "table" then return "tbl:" .. sluice.kind(v) end
      return type(v) .. ":" .. tostring(v)
    end
    local keys = { "a", "b", "ab", "", ("k"):rep(31), ("k"):rep(32), "zz", "q" }
    local out = {}
    for _, k in ipairs(keys) do
      out[#out + 1] = show(p[k])
    end
    return table.concat(out, " ")
  ]])
  -- the oracle: the first pair pairs() meets under each key (a fresh
  -- state per event: the walk builds its own index)
  local oracle_src = [[
    local p = ev.payload
    local function show(v)
      if type(v) == "table" then return "tbl:" .. sluice.kind(v) end
      return type(v) .. ":" .. tostring(v)
    end
    local keys = { "a", "b", "ab", "", ("k"):rep(31), ("k"):rep(32), "zz", "q" }
    local first = {}
    for k, v in pairs(p) do
      if type(k) == "string" and first[k] == nil then first[k] = { v } end
    end
    local out = {}
    for _, k in ipairs(keys) do
      out[#out + 1] = first[k] and show(first[k][1]) or "nil:nil"
    end
    return table.concat(out, " ")
  ]]

  it("reads each key as the first pair under it, whatever comes before", function()
    math.randomseed(16)
    local rnd = function(n) return math.random(n) end
    for i = 1, 300 do
      local raw = random_map(rnd)
      local ev = { topic = "t", payload_raw = raw }
      local got = reader:run(ev)
      local want = s.on_event(oracle_src):run(ev)
      assert.equal("route", want.verdict, want.error)
      assert.equal(want.routes[1], got.routes[1], ("%d: %s"):format(i, tohex(raw)))
      assert.is_false(got.changed)
      assert.equal(tohex(raw), tohex(got.event.payload_raw))
    end
  end)

  it("splices writes as the general path writes them", function()
    math.randomseed(17)
    local rnd = function(n) return math.random(n) end
    local prog = [[
      local p = ev.payload
      %s
      local w = ev.key
      for j = 1, #w, 2 do
        local k = ({ "a", "b", "ab", "", ("k"):rep(31), "new" })[tonumber(w:sub(j, j))]
        local v = ({ 1, "s", false, 1.5, nil, ("v"):rep(40) })[tonumber(w:sub(j + 1, j + 1))]
        p[k] = v
      end
      return "o"
    ]]
    local fast = s.on_event(prog:format(""))
    local general = s.on_event(prog:format("for _ in pairs(p) do end"))
    for i = 1, 300 do
      local raw = random_map(rnd)
      local w = {}
      for j = 1, rnd(4) do w[j] = rnd(6) .. rnd(6) end
      local ev = { topic = "t", key = table.concat(w), payload_raw = raw }
      local a, b = fast:run(ev), general:run(ev)
      local what = ("%d: %s %s"):format(i, ev.key, tohex(raw))
      assert.equal(b.verdict, a.verdict, what)
      assert.equal(b.error, a.error, what)
      assert.equal(s.map_pairs(b.event.payload_raw), s.map_pairs(a.event.payload_raw), what)
    end
  end)
end)
