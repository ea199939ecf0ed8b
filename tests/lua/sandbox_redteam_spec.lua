-- sandbox_redteam_spec.lua - a red-team pass as an attacker who writes
-- only rule files: single C calls of the string library whose work grows
-- with a string the rule builds (up to memory_mb), each of which ran far
-- past a 10 ms budget in one call. Each must now end within a bound that
-- the attack exceeded several times over before its fix, and keep its
-- meaning for ordinary inputs.

local s = require("support")

-- A rule with a big memory cap (so one call can do a lot of work) and a
-- 10 ms budget: prep events build S step by step (each under the budget),
-- then one "attack" event runs body. Returns the attack's result.
local function attack(prep, body, opts)
  local r = s.rule(([[
    local S = {}
    local function grow(k, unit, n)
      if S[k] == nil then S[k] = unit return false end
      if #S[k] >= n then return true end
      local x = S[k]
      if #x >= 4194304 then x = x:sub(1, 4194304) end
      S[k] = S[k] .. x
      return false
    end
    return { on_event = function(ev)
      if ev.topic == "prep" then
        if (function() %s end)() then return nil end
        return "more"
      end
      %s
      return "done"
    end }
  ]]):format(prep or "return true", body), opts or { cpu_budget_ms = 10, memory_mb = 1024 })
  for _ = 1, 5000 do
    local res = r:run({ topic = "prep" })
    assert(res.verdict ~= "error" or res.error_kind == "cpu", res.error)
    if res.verdict == "pass" then break end
  end
  return r:run({ topic = "attack" }), r
end

-- The bound for one call: about 10x what a fixed call takes when idle
-- (the budget, 10 ms); each attack below took at least 150 ms before.
local BOUND_MS = 100

describe("string library calls on long strings stay within the budget", function()
  teardown(s.cleanup)

  it("stops string.rep with a separator within the budget (was 0.9 s in one call)", function()
    local res = attack(nil, [[local y = string.rep("a", 150 * 1048576, "b")]])
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  it("stops string.rep of a long result within the budget (was 0.4 s in one call)", function()
    local res = attack(nil, [[local y = ("ab"):rep(200 * 1048576)]])
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  it("refuses a string.rep over memory_mb at once, before doing the work", function()
    local res = attack(nil, [[local y = ("ab"):rep(40 * 1048576)]], { cpu_budget_ms = 1000, memory_mb = 64 })
    assert.equal("memory", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  it("keeps string.rep's meaning", function()
    local res = attack(nil, [[
      assert(("ab"):rep(3) == "ababab")
      assert(("ab"):rep(3, ",") == "ab,ab,ab")
      assert(("ab"):rep(1, ",") == "ab")
      assert(("ab"):rep(0, ",") == "" and ("ab"):rep(-5) == "")
      assert((""):rep(5, "-") == "----")
      assert(("x"):rep(2.9) == "xx")
      assert(string.rep(12, 2) == "1212")
      assert(not pcall(string.rep))
      assert(not pcall(string.rep, "x"))
      assert(#("x"):rep(2^31) == 0 and #("x"):rep(-0.5) == 0)
      local ok, err = pcall(string.rep, "ab", 2^30 + 5) -- over LuaJIT's string limit
      assert(not ok and err:find("not enough memory"), err)
      local big = ("abc"):rep(1000000, "-")
      assert(#big == 3999999 and big:sub(1, 8) == "abc-abc-" and big:sub(-4) == "-abc")
      assert(big == string.rep("abc-", 999999) .. "abc")
    ]], { cpu_budget_ms = 2000, memory_mb = 256 })
    assert.equal("done", res.routes and res.routes[1], res.error)
  end)

  it("keeps string.upper, lower and reverse's meaning on long strings", function()
    local res = attack(nil, [[
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local all = table.concat(bytes)
      local long = all:rep(2000) -- 512000 bytes: the checked path
      local up, low, rev = all:upper(), all:lower(), all:reverse()
      assert(long:upper() == up:rep(2000) and long:lower() == low:rep(2000))
      assert(long:reverse() == rev:rep(2000))
      assert(("abc"):upper() == "ABC" and string.reverse(123) == "321")
      assert(not pcall(string.upper))
    ]], { cpu_budget_ms = 2000, memory_mb = 64 })
    assert.equal("done", res.routes and res.routes[1], res.error)
  end)

  it("stops a plain string.find in a long subject within the budget (was 0.15 s in one call)", function()
    local res = attack([[return grow("x", "a", 32 * 1048576)]],
      [[local y = S.x:find(("a"):rep(1048576) .. "b", 1, true)]])
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  it("stops a string.find without specials in a long subject within the budget", function()
    local res = attack([[return grow("x", "a", 32 * 1048576)]],
      [[local y = S.x:find(("a"):rep(15) .. "b")]])
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  it("keeps a plain string.find's meaning across its search windows", function()
    local res = attack(nil, [[
      local hay = ("x"):rep(3 * 1048576 + 17) .. "needle" .. ("y"):rep(1000)
      assert(hay:find("needle", 1, true) == 3 * 1048576 + 18)
      assert(select(2, hay:find("needle", 1, true)) == 3 * 1048576 + 23)
      assert(hay:find("needle", 3 * 1048576 + 19, true) == nil)
      assert(hay:find("needles", 1, true) == nil)
      local long = ("m"):rep(200000) .. "end"
      local hay2 = ("n"):rep(2 * 1048576) .. "end" .. long
      assert(hay2:find(long, 1, true) == 2 * 1048576 + 4)
      assert(hay2:find(("n"):rep(100000) .. "end", 1, true) == 2 * 1048576 - 100000 + 1)
      assert(("abc"):find("", 2, true) == 2 and ("abc"):find("c", -1, true) == 3)
      assert(("abc"):find("abcd", 1, true) == nil and ("abc"):find("bc") == 2)
      local parts = {}
      for i = 1, 110000 do parts[i] = ("%09d,"):format(i) end
      local huge = table.concat(parts) -- over 1 MiB: found by its prefix
      local hay3 = ("q"):rep(300000) .. huge:sub(1, 70000) .. "z" .. huge .. "q"
      assert(hay3:find(huge, 1, true) == 370002)
      assert(hay3:find(huge .. "qq", 1, true) == nil)
      local edge = ("x"):rep(1048576 - 2) .. "abcd"
      assert(edge:find("abcd", 1, true) == 1048575)
    ]], { cpu_budget_ms = 2000, memory_mb = 256 })
    assert.equal("done", res.routes and res.routes[1], res.error)
  end)

  it("stops string.gsub whose replacements copy many bytes within the budget (was 0.5 s in one call)", function()
    local res = attack([[if not grow("x", "a", 16384) then return false end
      S.r = ("r"):rep(65536) return true]],
      [[local y = S.x:gsub("a", S.r)]])
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  it("stops string.gsub copying a long capture many times within the budget", function()
    local res = attack([[return grow("x", "a", 16 * 1048576)]],
      [[local y = S.x:gsub("^(.*)$", ("%1"):rep(40))]])
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  it("refuses string.format %q of a string longer than 1 MiB (was 2.3 ms per MiB in one call)", function()
    local res = attack([[return grow("x", "\n", 4 * 1048576)]],
      [[local y = string.format("%5q", S.x)]])
    assert.equal("error", res.verdict)
    s.has(res.error, "%q")
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  it("keeps string.format %q's meaning below the limit", function()
    local res = attack(nil, [[
      assert(string.format("%q", "a\n\"\0" .. "1") == '"a\\\n\\"\\0001"')
      assert(("%s %q %d"):format("x", "y", 3) == 'x "y" 3')
      assert(#string.format("%q", ("z"):rep(1048576)) == 1048578)
      assert(string.format("%%q %s", "x") == "%q x")
    ]], { cpu_budget_ms = 2000, memory_mb = 64 })
    assert.equal("done", res.routes and res.routes[1], res.error)
  end)
end)

describe("table.concat of a big table stays within the budget", function()
  teardown(s.cleanup)

  it("stops table.concat of 20M elements within the budget (was 0.2 s in one call)", function()
    local res, r = attack([[S.t = S.t or {}
      local t = S.t
      for i = #t + 1, math.min(#t + 200000, 20000000) do t[i] = "ab" end
      return #t >= 20000000]], [[local y = table.concat(S.t, ",")]])
    -- the first call may also pay for a GC step that traverses the whole
    -- table at once (LuaJIT does not split one table): about 30 ms here
    res = r:run({ topic = "attack" })
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  it("keeps table.concat's meaning over many pieces", function()
    local res = attack(nil, [[
      local t = {}
      for i = 1, 200001 do t[i] = i % 10 end
      local all = table.concat(t)
      assert(#all == 200001 and all:sub(1, 12) == "123456789012" and all:sub(-2) == "01")
      local withsep = table.concat(t, "-", 65530, 200001)
      assert(#withsep == (200001 - 65530 + 1) * 2 - 1)
      assert(withsep:sub(1, 9) == "0-1-2-3-4" and withsep:sub(-3) == "0-1")
      assert(table.concat(t, ",", 5, 4) == "" and table.concat({}, ",") == "")
      assert(table.concat(t, "", 199999) == "901")
      t[150000] = {}
      local ok, err = pcall(table.concat, t)
      assert(not ok and err:find("150000"), err)
      assert(not pcall(table.concat, t, {}))
    ]], { cpu_budget_ms = 2000, memory_mb = 256 })
    assert.equal("done", res.routes and res.routes[1], res.error)
  end)
end)

describe("rule counters cannot spoil /metrics", function()
  teardown(s.cleanup)

  -- /metrics prints sluice_rule_value_total{rule="..",name="..",<labels>}
  it("refuses the label names /metrics adds itself or Prometheus reserves", function()
    for _, label in ipairs({ "rule", "name", "__name__", "__x" }) do
      local r = s.on_event(("sluice.counter('c', { %s = 'v' }):inc() return 'ok'"):format(label))
      local res = r:run({ topic = "t" })
      assert.equal("error", res.verdict, label)
      s.has(res.error, "label name '" .. label .. "' is reserved")
      assert.same({}, r:counters())
    end
  end)

  it("refuses a label value with a NUL byte (it was cut there, losing its closing quote)", function()
    local r = s.on_event([[sluice.counter("c", { k = "x\0y" }):inc() return "ok"]])
    local res = r:run({ topic = "t" })
    assert.equal("error", res.verdict)
    s.has(res.error, "label 'k' holds a NUL byte")
    assert.same({}, r:counters())
  end)

  it("names at most 128 bytes of a long label name in its errors", function()
    -- README Limits: error messages name at most 128 bytes of a rule's
    -- string; a label name is the rule's string, of any length
    local r = s.on_event([[
      local long = ("k"):rep(tonumber(ev.payload))
      local cases = {
        function() sluice.counter("c", { [long] = "v" }) end,     -- too long
        function() sluice.counter("c", { [long] = 1 }) end,       -- not a string
        function() sluice.counter("c", { ["__" .. long] = "v" }) end, -- reserved
      }
      local out = {}
      for i, f in ipairs(cases) do
        local ok, err = pcall(f)
        assert(not ok)
        out[i] = err
      end
      ev.headers.a, ev.headers.b, ev.headers.c = out[1], out[2], out[3]
      return "ok"]], { cpu_budget_ms = 2000 })
    for _, n in ipairs({ 129, 4 * 1024 * 1024 }) do
      local res = r:run({ topic = "t", payload = n })
      assert.same({ "ok" }, res.routes, res.error)
      for _, h in ipairs({ "a", "b", "c" }) do
        local err = res.event.headers[h]
        assert.is_nil(err:find(("k"):rep(129), 1, true), h .. ": " .. #err .. " bytes")
        s.has(err, ("k"):rep(100))
        assert.is_true(#err < 400, h .. ": " .. #err .. " bytes")
      end
    end
  end)

  it("refuses a metric or label name with a NUL byte", function()
    local r = s.on_event([[
      assert(not pcall(sluice.counter, "c\0d"))
      assert(not pcall(sluice.counter, "c", { ["k\0x"] = "v" }))
      return "ok"]])
    assert.same({ "ok" }, r:run({ topic = "t" }).routes)
    assert.same({}, r:counters())
  end)

  it("keeps ordinary labels, escaped", function()
    local r = s.on_event([[
      sluice.counter("c_total", { kind = 'a"b\\c\nd', rule_x = "1", names = "2" }):inc()
      return "ok"]])
    assert.same({ "ok" }, r:run({ topic = "t" }).routes)
    assert.same({ ['c_total{kind="a\\"b\\\\c\\nd",names="2",rule_x="1"}'] = 1 }, r:counters())
  end)
end)

describe("output names are whole names", function()
  teardown(s.cleanup)

  -- names went on as C strings: "a\0b" routed or emitted to output "a"
  it("refuses an output name with a NUL byte from on_event or sluice.emit", function()
    for _, ret in ipairs({ [["a\0b"]], [[{ "b", "a\0b" }]] }) do
      local res = s.on_event("return " .. ret):run({ topic = "t" })
      assert.equal("error", res.verdict, ret)
      s.has(res.error, "NUL byte")
    end
    local res = s.on_event([[sluice.emit("a\0b", { topic = "x" }) return "a"]]):run({ topic = "t" })
    assert.equal("error", res.verdict)
    s.has(res.error, "sluice.emit: output name with a NUL byte")
    assert.same({}, res.emitted)
    assert.same({ "a", "b" }, s.on_event([[return { "a", "b" }]]):run({ topic = "t" }).routes)
  end)
end)

describe("long error messages and drop reasons", function()
  teardown(s.cleanup)

  -- the error handler and the drop verdict copied them with snprintf("%s"),
  -- which reads all of a 64 MB string: 0.15-0.4 s after the rule returned
  for _, case in ipairs({
    { "error(S, 0)", "error(S, 0)", "runtime" },
    -- LuaJIT's error() itself prefixes the position: one copy of S (about
    -- 40 ms at 64 MB here, 120 ms under ASan) that no wrapper can check
    { "error(S) with its position", "error(S)", "runtime", untimed = true },
    { "sluice.drop(S)", "do return sluice.drop(S) end", nil },
    { "require(S)", "require(S)", "runtime" },
    { "ev[S]", "local x = ev[S]", "runtime" },
    { "ev[S] = 1", "ev[S] = 1", "runtime" },
    { "sluice.emit with a field named S", "sluice.emit('o', { topic = 't', [S] = 1 })", "runtime" },
    { "a header named S", "ev.headers = { [S] = 1 }", "runtime" },
  }) do
    it(("costs little past the rule for %s with a 64 MB string"):format(case[1]), function()
      local res = attack([[return grow("x", "y", 64 * 1048576)]],
        "local S = S.x\n" .. case[2], { cpu_budget_ms = 20, memory_mb = 512 })
      if case[3] then
        assert.equal(case[3], res.error_kind, res.error)
        assert.is_true(#res.error < 8192, #res.error)
        s.has(res.error, "yyyyyyyy")
        if case[2]:find("S%]") or case[2]:find("require") then s.has(res.error, "yyy...") end
      else
        assert.equal("drop", res.verdict, res.error)
        assert.is_true(#res.dropped < 8192 and res.dropped:sub(1, 8) == "yyyyyyyy")
      end
      if not case.untimed then
        assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
      end
    end)
  end

  it("names a short field, header or module in full in its error", function()
    local r = s.on_event([[
      if ev.topic == "a" then return ev.nope end
      if ev.topic == "b" then ev.headers = { h = 1 } return "x" end
      if ev.topic == "c" then require("bad/name") end
      sluice.emit("o", { topic = "t", extra = 1 })]])
    s.has(r:run({ topic = "a" }).error, "event has no field 'nope'")
    s.has(r:run({ topic = "b" }).error, "header 'h' must be a string (got number)")
    s.has(r:run({ topic = "c" }).error, "invalid module name 'bad/name'")
    s.has(r:run({ topic = "d" }).error, "unknown event field 'extra'")
  end)

  it("keeps positioned messages as they are and prefixes the others", function()
    local r = s.on_event([[
      if ev.topic == "a" then error("file.lua:12: broken", 0) end
      if ev.topic == "b" then error("file.lua:12:", 0) end
      if ev.topic == "c" then error("no position", 0) end
      error(42)]])
    assert.equal("file.lua:12: broken", r:run({ topic = "a" }).error)
    s.has(r:run({ topic = "b" }).error, ": file.lua:12:")
    s.has(r:run({ topic = "c" }).error, ".lua:4: no position")
    s.has(r:run({ topic = "d" }).error, ": 42")
  end)
end)

describe("sluice.seen and rate_limit with long keys", function()
  teardown(s.cleanup)

  -- hashing a key ran unchecked (10 ms per 16 MB); it is now checked per MiB
  it("tell long keys apart that differ only at the end, and stop near the budget", function()
    local res = attack([[return grow("x", "k", 16 * 1048576)]], [[
      local a, b = S.x .. "a", S.x .. "b"
      assert(sluice.seen(a, 1000) == false and sluice.seen(a, 1000) == true)
      assert(sluice.seen(b, 1000) == false)
      assert(sluice.rate_limit(a, 1, 1) == true and sluice.rate_limit(a, 1, 1) == false)
      assert(sluice.rate_limit(b, 1, 1) == true)
    ]], { cpu_budget_ms = 2000, memory_mb = 256 })
    assert.equal("done", res.routes and res.routes[1], res.error)
    res = attack([[return grow("x", "k", 16 * 1048576)]],
      [[while true do sluice.seen(S.x, 1000) end]], { cpu_budget_ms = 20, memory_mb = 256 })
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
  end)

  -- gsub builds its result in a userdata that doubles (pattern.c, struct
  -- out): past memory_mb it is a memory error mid-build, caught or not, a
  -- replacement raising or yielding mid-result leaves nothing behind, and
  -- the state works after each
  it("ends a gsub result past memory_mb, or a replacement raising mid-result, and works after", function()
    local r = s.rule([[
      local S = { x = ("a"):rep(1048576) }
      return { on_event = function(ev)
        local t = ev.topic
        if t == "memory" then local y = S.x:gsub("^.*$", ("%0"):rep(100)) end
        if t == "caught" then
          local ok, err = pcall(string.gsub, S.x, "^.*$", ("%0"):rep(100))
          assert(not ok) error(err, 0)
        end
        if t == "raise" then
          local i = 0
          local y = S.x:gsub("a", function() i = i + 1 if i == 5000 then error("boom", 0) end return "xyz" end)
        end
        if t == "yield" then
          local y = coroutine.wrap(function() return S.x:gsub("a", function() coroutine.yield() end) end)()
        end
        local y, n = S.x:sub(1, 2000):gsub("a", "bc")
        assert(n == 2000 and y == ("bc"):rep(2000))
        return "fine"
      end }
    ]], { cpu_budget_ms = 1000, memory_mb = 64 })
    for _ = 1, 3 do
      for _, t in ipairs({ "memory", "caught" }) do
        local res = r:run({ topic = t })
        assert.equal("memory", res.error_kind, t .. ": " .. tostring(res.error))
        s.has(res.error, "not enough memory") -- the cap ended it, not the budget
        assert.equal("fine", r:run({ topic = "after" }).routes[1])
      end
      local res = r:run({ topic = "raise" })
      assert.equal("runtime", res.error_kind, res.error)
      s.has(res.error, "boom")
      res = r:run({ topic = "yield" })
      assert.equal("runtime", res.error_kind, res.error)
      s.has(res.error, "attempt to yield across C-call boundary")
      assert.equal("fine", r:run({ topic = "after" }).routes[1])
    end
  end)
end)

describe("files a rule's author can write", function()
  teardown(s.cleanup)
  before_each(function() s.write("lib/keep.lua", "return true") end) -- the dirs

  it("refuses a module over memory_mb without reading it all (was 1 GB of C memory)", function()
    assert(os.execute("truncate -s 1G " .. s.dir .. "/lib/huge_mod.lua") == 0)
    local r = s.on_event([[return tostring(pcall(require, "huge_mod"))]],
      { cpu_budget_ms = 5000, memory_mb = 16 })
    local res = r:run({ topic = "t" })
    s.has(res.routes[1], "false")
    assert.is_true(res.cpu_ms < BOUND_MS, ("took %.1f ms"):format(res.cpu_ms))
    local err = s.load_error(([[local m = require("huge_mod") return { on_event = function() end }]]),
      { memory_mb = 16 })
    s.has(err, "over the limits")
    os.remove(s.dir .. "/lib/huge_mod.lua")
  end)

  it("refuses a module that is a FIFO instead of blocking the engine for good", function()
    assert(os.execute("mkfifo " .. s.dir .. "/lib/fifo_mod.lua") == 0)
    local err = s.load_error([[local m = require("fifo_mod") return { on_event = function() end }]])
    s.has(err, "not a regular file")
    os.remove(s.dir .. "/lib/fifo_mod.lua")
  end)

  it("refuses a rule file that is a FIFO or over memory_mb", function()
    local fifo = s.dir .. "/fifo_rule.lua"
    assert(os.execute("mkfifo " .. fifo) == 0)
    local ok, err = pcall(s.testing.load, fifo)
    assert.is_false(ok)
    s.has(err, "not a regular file")
    local big = s.dir .. "/big_rule.lua"
    assert(os.execute("truncate -s 1G " .. big) == 0)
    local t0 = os.clock()
    ok, err = pcall(s.testing.load, big, { memory_mb = 16 })
    assert.is_false(ok)
    s.has(err, "larger than memory_mb")
    assert.is_true(os.clock() - t0 < 0.1 * BOUND_MS, os.clock() - t0)
    os.remove(fifo)
    os.remove(big)
  end)
end)
