-- sandbox_limits_spec.lua - the CPU budget and the memory cap hold: loops
-- (also hot ones, in coroutines, behind pcall), pattern bombs inside C,
-- memory bombs, deep recursion; the state stays usable or is rebuilt.

local s = require("support")

local function run(rule, ev)
  return rule:run(ev or { topic = "t" })
end

describe("the CPU budget", function()
  teardown(s.cleanup)

  it("stops while true do end within the budget plus a few ms", function()
    local r, path = s.on_event("while true do end", { cpu_budget_ms = 10 })
    local res = run(r)
    assert.equal("error", res.verdict)
    assert.equal("cpu", res.error_kind)
    assert.equal(path .. ":2: cpu budget of 10 ms exceeded", res.error)
    assert.equal(path .. ":2", res.where)
    assert.is_true(res.cpu_ms >= 9, res.cpu_ms) -- at least 15/16 of it
    assert.is_true(res.cpu_ms < 50, res.cpu_ms)
  end)

  it("stops a loop after the same loop has run hot many times", function()
    local r = s.on_event([[
      if ev.topic == "warm" then
        local x = 0
        for i = 1, 20000 do x = x + i end
        return tostring(x)
      end
      local x = 0
      while true do x = x + 1 end
    ]], { cpu_budget_ms = 20 })
    for _ = 1, 300 do
      local res = run(r, { topic = "warm" })
      assert.equal("route", res.verdict, res.error)
    end
    -- best of three: seen once at 71 ms with two busy loops beside the
    -- suite on this 2-core machine; a loop the budget misses runs forever
    local best = math.huge
    for _ = 1, 3 do
      local res = run(r)
      assert.equal("cpu", res.error_kind)
      best = math.min(best, res.cpu_ms)
      if best < 60 then break end
    end
    assert.is_true(best < 60, best)
    assert.equal("route", run(r, { topic = "warm" }).verdict)
  end)

  it("stops a loop inside a coroutine", function()
    local r = s.on_event([[
      local co = coroutine.wrap(function() while true do end end)
      co()
    ]], { cpu_budget_ms = 5 })
    local res = run(r)
    assert.equal("cpu", res.error_kind)
    assert.is_true(res.cpu_ms < 45, res.cpu_ms)
  end)

  it("is not swallowed by pcall, xpcall or coroutine.resume", function()
    for _, body in ipairs({
      "while true do pcall(function() while true do end end) end",
      "while true do xpcall(function() while true do end end, function() while true do end end) end",
      "local co = coroutine.create(function() while true do end end) while true do coroutine.resume(co) end",
      "for i = 1, 1e9 do pcall(error, i) end",
    }) do
      local r = s.on_event(body, { cpu_budget_ms = 5 })
      local res = run(r)
      assert.equal("cpu", res.error_kind, body)
      assert.is_true(res.cpu_ms < 45, body .. ": " .. res.cpu_ms)
    end
  end)

  it("stops a pattern bomb running inside string.find", function()
    local r = s.on_event([[
      local subject = ("a"):rep(5000)
      if ev.topic == "method" then return tostring(subject:find(".-.-.-.-b")) end
      if ev.topic == "match" then return tostring(string.match(subject, ".-.-.-.-b")) end
      if ev.topic == "gsub" then return tostring(string.gsub(subject, ".-.-.-.-b", "")) end
      if ev.topic == "gmatch" then for m in subject:gmatch(".-.-.-.-b") do end return "x" end
      return tostring(string.find(subject, ".-.-.-.-b"))
    ]], { cpu_budget_ms = 10 })
    for _, topic in ipairs({ "find", "method", "match", "gsub", "gmatch" }) do
      local res = run(r, { topic = topic })
      assert.equal("cpu", res.error_kind, topic)
      s.has(res.error, "cpu budget of 10 ms exceeded")
      assert.is_true(res.cpu_ms < 50, topic .. ": " .. res.cpu_ms)
    end
    -- ordinary patterns still work
    local ok = s.on_event([[return (ev.topic:match("^(%a+)%.") or "none")]])
    assert.same({ "orders" }, run(ok, { topic = "orders.new" }).routes)
  end)

  it("applies to the chunk, on_start and timers", function()
    local err = s.load_error("while true do end", { cpu_budget_ms = 5 })
    s.has(err, ":1: cpu budget of 5 ms exceeded")
    err = s.load_error([[
      return { on_event = function() end,
               on_start = function() while true do end end }
    ]], { cpu_budget_ms = 5 })
    s.has(err, ":2: cpu budget of 5 ms exceeded")
    local r = s.rule([[
      sluice.every(1000, function() while true do end end)
      return { on_event = function() return "ok" end }
    ]], { cpu_budget_ms = 5 })
    local out = r:advance(1000)
    assert.equal(1, #out.logs)
    assert.equal("error", out.logs[1].level)
    s.has(out.logs[1].msg, "cpu budget of 5 ms exceeded")
    assert.same({ "ok" }, run(r).routes)
  end)

  it("bounds table.sort, which sorts in C", function()
    local r = s.on_event([[
      local t = {}
      for i = 1, 200000 do t[i] = -i end
      table.sort(t)
    ]], { cpu_budget_ms = 1000 })
    local res = run(r)
    assert.equal("runtime", res.error_kind)
    s.has(res.error, "table.sort: more than 131072 elements in a rule")
    local small = s.on_event([[
      local t = { 3, 1, 2 }
      table.sort(t, function(a, b) return a > b end)
      return table.concat(t, ",")
    ]])
    assert.same({ "3,2,1" }, run(small).routes)
  end)
end)

describe("the memory cap", function()
  teardown(s.cleanup)

  it("turns a memory bomb into 'not enough memory' and the next call works", function()
    local r, path = s.on_event([[
      if ev.topic == "bomb" then
        local t = {}
        for i = 1, 1e9 do t[i] = ("x"):rep(1000) .. i end
      end
      return "fine"
    ]], { memory_mb = 16, cpu_budget_ms = 2000 })
    local res = run(r, { topic = "bomb" })
    assert.equal("memory", res.error_kind)
    s.has(res.error, path .. ":")
    s.has(res.error, "not enough memory (memory_mb=16)")
    for _ = 1, 3 do
      assert.same({ "fine" }, run(r).routes)
    end
    assert.is_true(r:info().memory < 4 * 1024 * 1024)
    assert.equal(0, r:info().rebuilds)
  end)

  it("refuses one huge string without harming the state", function()
    local r = s.on_event([[
      if ev.topic == "big" then return ("x"):rep(1e9) end
      return "fine"
    ]], { memory_mb = 8 })
    assert.equal("memory", run(r, { topic = "big" }).error_kind)
    assert.same({ "fine" }, run(r).routes)
  end)

  it("rebuilds a state that stays full, from its file", function()
    local r = s.rule([[
      hoard = {}
      return { on_event = function(ev)
        if ev.topic == "grow" then
          while true do hoard[#hoard + 1] = ("y"):rep(4096) .. #hoard end
        end
        return tostring(#hoard)
      end }
    ]], { memory_mb = 8, cpu_budget_ms = 2000 })
    local res = run(r, { topic = "grow" })
    assert.equal("memory", res.error_kind)
    assert.equal(1, r:info().rebuilds)
    assert.same({ "0" }, run(r).routes) -- a fresh state
  end)

  it("reports a memory error raised while decoding the payload", function()
    local r = s.on_event([[
      local t = {}
      for i = 1, 50 do t[i] = sluice.copy(ev.payload) end
      return "ok"
    ]], { memory_mb = 2, cpu_budget_ms = 1000 }) -- decoding is not what is tested
    local big = {}
    for i = 1, 40000 do big[i] = "value number " .. i end -- within max_event_bytes
    local res = run(r, { topic = "t", payload = big })
    assert.equal("memory", res.error_kind)
    assert.same({ "ok" }, run(r, { topic = "t", payload = 1 }).routes)
  end)
end)

describe("deep recursion", function()
  teardown(s.cleanup)

  it("raises a stack overflow and leaves the state usable", function()
    local r = s.on_event([[
      if ev.topic == "deep" then
        local function f(n) return 1 + f(n + 1) end
        return f(1)
      end
      if ev.topic == "cdeep" then
        local function g(s) return (s:gsub(".", g)) end
        return g("ab")
      end
      if ev.topic == "codeep" then
        local function f() return coroutine.wrap(f)() end
        return f()
      end
      if ev.topic == "fmtdeep" then
        local t = setmetatable({}, {})
        getmetatable(t).__tostring = function(x) return string.format("%s", x) end
        return string.format("%s", t)
      end
      return "ok"
    ]], { cpu_budget_ms = 1000 })
    local res = run(r, { topic = "deep" })
    assert.equal("runtime", res.error_kind)
    s.has(res.error, "stack overflow")
    res = run(r, { topic = "cdeep" })
    assert.equal("runtime", res.error_kind)
    s.has(res.error, "C calls nested deeper than 100")
    for _, topic in ipairs({ "codeep", "fmtdeep" }) do
      res = run(r, { topic = topic })
      assert.equal("error", res.verdict, topic)
    end
    assert.same({ "ok" }, run(r).routes)
  end)
end)
