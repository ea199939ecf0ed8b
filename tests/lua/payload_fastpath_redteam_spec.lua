-- payload_fastpath_redteam_spec.lua - the ev.payload fast path (the root
-- kept in the event's fields table, made before the call; take_result's
-- and the slot's caches of route names) against the same rule run cold:
-- one rule instance fed a random stream of events must decide and write
-- exactly what a fresh instance of the same rule decides and writes for
-- each event alone (a fresh instance has no slot warm, so it reads
-- ev.payload through ev_index as before the fast path).

local s = require("support")
local hex, tohex = s.hex, s.tohex

-- The rule reads its program from ev.key, one letter per step, so the
-- same source does the same to an event whatever ran before it.
local PROGRAM = [[
  local kept, kept_at, kept_ev, calls, assigned = nil, 0, nil, 0, false
  local function show(v)
    if type(v) == "table" then
      local n = 0
      for _ in pairs(v) do n = n + 1 end
      return "tbl" .. n
    end
    return type(v) .. ":" .. tostring(v)
  end
  local function try(f)
    local ok, e = pcall(f)
    if ok then return show(e) end
    return "E(" .. tostring(e):gsub("^[^:]*:%d+: ", "") .. ")"
  end
  local STEPS = {
    t = function(ev) return ev.topic end,
    p = function(ev) return type(ev.payload) end,
    a = function(ev) return ev.payload.a end,
    b = function(ev) return ev.payload.b end,
    i = function(ev) return ev.payload[1] end,
    n = function(ev) return ev.payload.a.x end,
    w = function(ev) ev.payload.b = "w" return "w" end,
    W = function(ev) ev.payload.a = 17 return "W" end,
    d = function(ev) ev.payload.a = nil return "d" end,
    A = function(ev) assigned = true ev.payload = { a = "set" } return "A" end,
    N = function(ev) assigned = true ev.payload = nil return "N" end,
    R = function(ev) ev.payload = ev.payload return "R" end,
    T = function(ev) ev.topic = "new." .. ev.topic return "T" end,
    f = function(ev) return ev:field("a") end,
    q = function(ev) return rawequal(ev.payload, ev.payload) end,
    c = function(ev) return sluice.copy(ev.payload) end,
    k = function(ev) local n = 0 for _ in pairs(ev.payload) do n = n + 1 end return n end,
    -- a root kept past its call reads nothing: "old" whether it is stale
    -- or none was kept (a fresh rule kept none)
    K = function(ev)
      local p = ev.payload -- only a root as it came: an assigned table is the rule's
      if type(p) ~= "table" or assigned then return "-" end
      kept, kept_at = p, calls
      return "K"
    end,
    S = function(ev)
      if kept == nil then return "old" end
      local ok, e = pcall(function() return kept.a end)
      if kept_at == calls then return ok and show(e) or "E" end
      if ok then return "READ " .. show(e) end
      return tostring(e):find("only valid during the on_event call", 1, true) and "old" or e
    end,
    X = function(ev) kept_ev = ev return "X" end,
  }
  sluice.every(1000, function()
    if kept_ev == nil then return end
    for _, k in ipairs({ "payload", "topic", "key" }) do
      local ok, e = pcall(function() return kept_ev[k] end)
      if ok or not tostring(e):find("only valid during on_event", 1, true) then
        sluice.log("error", "LEAK " .. k .. " " .. tostring(e))
      end
    end
    if kept ~= nil and pcall(function() return kept.a end) then
      sluice.log("error", "LEAK root")
    end
  end)
  return { on_event = function(ev)
    calls, assigned = calls + 1, false
    local out = { "x" }
    local prog = ev.key or ""
    for j = 1, #prog do
      local c = prog:sub(j, j)
      if c == "e" then error("boom " .. #out) end
      if c == "L" then while true do end end -- past the CPU budget
      if c == "M" then -- past memory_mb
        local t = {}
        for k = 1, 1e9 do t[k] = ("x"):rep(4096) .. k end
      end
      out[#out + 1] = c .. "=" .. try(function() return STEPS[c](ev) end)
    end
    local name = table.concat(out, " ")
    if #name > 250 then name = name:sub(1, 250) end
    return name
  end }
]]

local PAYLOADS = {
  "81 a161 01", "82 a161 02 a162 03", "81 a161 81 a178 05", "80", "90",
  "92 07 08", "05", "c0", "a3 616263", "c3", "",
  "de 0001 a161 09", "de 0011 a161 01 a162 02 a163 03 a164 04 a165 05 a166 06 a167 07 a168 08 a169 09 a16a 0a a16b 0b a16c 0c a16d 0d a16e 0e a16f 0f a170 10 a171 11",
  "8f" .. string.rep(" a17a 00", 14) .. " a161 0c",
  "82 d90161 01 a161 02", "82 c40161 01 a161 02", "82 a161 01 a161 02",
  "83 a178 91 01 a162 02 a161 03", "dc 0002 01 02",
  "df 00000001 a161 0d", "81 a8 6161616161616161 01",
  "91 81 a161 01", "85 a162 c0 a161 cb3ff8000000000000",
}

local STEP_LETTERS = "tpabinwWdANRTfqckKSXKS"

local function lcg(seed) -- math.random: an LCG's low bits repeat too soon
  math.randomseed(seed)
  return function(n) return math.random(n) end
end

local function program(rnd)
  local n, out = rnd(6) - 1, {}
  for j = 1, n do
    local bad = rnd(60)
    if bad <= 2 then out[j] = "e"
    elseif bad == 3 then out[j] = "L"
    elseif bad == 4 and j > 1 then out[j] = "M"
    else
      local k = rnd(#STEP_LETTERS)
      out[j] = STEP_LETTERS:sub(k, k)
    end
  end
  return table.concat(out)
end

local function outcome(res)
  return {
    verdict = res.verdict,
    routes = table.concat(res.routes or {}, "|"),
    -- a memory overrun may run past the CPU budget first on a loaded
    -- machine: either is an overrun
    error = (res.error_kind == "cpu" or res.error_kind == "memory") and "overrun"
      or res.error and res.error:gsub("^[^:]*:%d+: ", "") or nil,
    changed = res.changed,
    topic = res.event.topic,
    -- a table the rule assigned is encoded in its own order (Lua's): pairs
    -- sorted then; a spliced or untouched payload byte for byte
    payload = not res.event.payload_raw and "-" or
      (res.assigned and s.map_pairs(res.event.payload_raw) or tohex(res.event.payload_raw)),
  }
end

describe("ev.payload's fast path against the same rule run cold", function()
  teardown(s.cleanup)

  for _, jit in ipairs({ false, true }) do
    it("decides and writes every event of a random stream as a fresh rule does" ..
       (jit and " (rules.jit)" or ""), function()
      local rnd = lcg(jit and 7 or 3)
      local warm = s.rule(PROGRAM, { jit = jit, memory_mb = 8 })
      for i = 1, 1000 do
        local ev = {
          topic = rnd(9) == 1 and ("long." .. ("x"):rep(60 + rnd(10)) .. rnd(3)) or "t" .. rnd(40),
          key = program(rnd),
          payload_raw = rnd(15) > 1 and hex(PAYLOADS[rnd(#PAYLOADS)]) or nil, -- none
        }
        local ok_w, got = pcall(warm.run, warm, ev)
        local assigned = ev.key:find("[AN]") ~= nil
        local cold = s.rule(PROGRAM, { jit = jit, memory_mb = 8 })
        local ok_c, want = pcall(cold.run, cold, ev)
        assert.equal(ok_c, ok_w, ("event %d: %s %s"):format(i, ev.key, tohex(ev.payload_raw or "")))
        if i % 50 == 0 then
          local out = warm:advance(1000)
          for _, l in ipairs(out.logs or {}) do assert.is_nil(l.msg:find("LEAK"), l.msg) end
        end
        if ok_c then
          got.assigned, want.assigned = assigned, assigned
          assert.same(outcome(want), outcome(got),
            ("event %d: %s %s %s"):format(i, ev.topic, ev.key, tohex(ev.payload_raw or "")))
        end
      end
    end)
  end
end)
