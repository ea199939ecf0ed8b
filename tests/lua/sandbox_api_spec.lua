-- sandbox_api_spec.lua - what a rule sees and returns: the event object,
-- decisions, the sluice API, require, load errors, topics globs and state
-- handover, all through sluice.testing and the engine's own sandbox.

local s = require("support")
local T = s.testing

local function run(r, ev)
  return r:run(ev or { topic = "t" })
end

describe("on_event's return value", function()
  teardown(s.cleanup)

  it("nil passes, a string routes, a list routes to many", function()
    local r = s.on_event([[
      if ev.topic == "one" then return "a" end
      if ev.topic == "many" then return { "a", "b", "c" } end
    ]])
    local res = run(r)
    assert.equal("pass", res.verdict)
    assert.same({}, res.routes)
    assert.same({ "a" }, run(r, { topic = "one" }).routes)
    assert.same({ "a", "b", "c" }, run(r, { topic = "many" }).routes)
  end)

  it("sluice.drop(reason) drops, with a default reason", function()
    local r = s.on_event([[
      if ev.topic == "plain" then return sluice.drop() end
      return sluice.drop("no amount")
    ]])
    local res = run(r)
    assert.equal("drop", res.verdict)
    assert.equal("no amount", res.dropped)
    assert.equal("dropped by rule", run(r, { topic = "plain" }).dropped)
  end)

  it("anything else is a runtime error naming the type", function()
    local r, path = s.on_event([[
      if ev.topic == "n" then return 42 end
      if ev.topic == "b" then return true end
      if ev.topic == "e" then return "" end
      if ev.topic == "l" then return { "a", 7 } end
      if ev.topic == "z" then return {} end
      local t = {} for i = 1, 17 do t[i] = "o" .. i end return t
    ]])
    local function err(topic)
      local res = run(r, { topic = topic })
      assert.equal("runtime", res.error_kind, topic)
      assert.equal(path .. ":1", res.where)
      return res.error
    end
    assert.equal(path .. ":1: on_event returned a number (expected nil, an output "
      .. "name, a list of output names or sluice.drop(reason))", err("n"))
    s.has(err("b"), "on_event returned a boolean")
    s.has(err("e"), "on_event returned an empty string")
    s.has(err("l"), "a list with a non-string or empty entry")
    s.has(err("z"), "an empty or non-list table")
    s.has(err("many"), "too many routes (a list of 1..16 non-empty output names expected")
  end)

  it("errors read path:line: message, with where and a traceback", function()
    local r, path = s.rule([[
      local function inner(x)
        error("bad thing: " .. x)
      end
      return { on_event = function(ev)
        inner(ev.topic)
      end }
    ]])
    local res = run(r, { topic = "orders" })
    assert.equal("runtime", res.error_kind)
    assert.equal(path .. ":2: bad thing: orders", res.error)
    assert.equal(path .. ":2", res.where)
    s.has(res.traceback, "stack traceback:")
    s.has(res.traceback, path .. ":2: in function 'inner'")
    s.has(res.traceback, path .. ":5:")
    -- errors without a position get one
    local r2, path2 = s.on_event([[error({ code = 1 })]])
    assert.equal(path2 .. ":2: (error object is a table value)", run(r2).error)
    local r3, path3 = s.on_event([[error("plain", 0)]])
    assert.equal(path3 .. ":2: plain", run(r3).error)
  end)
end)

describe("the event object", function()
  teardown(s.cleanup)

  it("reads id, topic, key, time, headers and payload", function()
    local r = s.on_event([[
      return table.concat({ ev.id, ev.topic, tostring(ev.key), tostring(ev.time),
        ev.headers.h, tostring(ev.payload.n) }, "|")
    ]])
    local res = run(r, { id = "e1", topic = "a.b", key = "k", time = 1500,
      headers = { h = "v" }, payload = { n = 3 } })
    assert.same({ "e1|a.b|k|1500|v|3" }, res.routes)
    assert.same({ "sluice event e1" }, run(s.on_event([[return tostring(ev)]]),
      { topic = "t", id = "e1" }).routes)
    assert.is_false(res.changed)
    res = run((s.on_event([[return tostring(ev.key) .. tostring(ev.payload) .. tostring(next(ev.headers))]])))
    assert.same({ "nilnilnil" }, res.routes)
  end)

  it("reads one payload field with ev:field(name), without a rebuild", function()
    local r = s.on_event([[
      local a = ev:field("amount")
      local missing = ev:field("nope")
      return tostring(a) .. " " .. tostring(missing) .. " " .. sluice.kind(ev:field("list"))
    ]])
    local res = run(r, { topic = "t", payload = { amount = 7, list = T.array({ 1 }) } })
    assert.same({ "7 nil array" }, res.routes)
    assert.is_false(res.changed)
    local r2 = s.on_event([[ev.payload.amount = 9 return tostring(ev:field("amount"))]])
    assert.same({ "9" }, run(r2, { topic = "t", payload = { amount = 7 } }).routes)
    local r3 = s.on_event([[return tostring(ev:field("x"))]])
    assert.same({ "nil" }, run(r3, { topic = "t", payload = T.array({ 1 }) }).routes)
    assert.same({ "nil" }, run(r3, { topic = "t" }).routes)
  end)

  it("changes topic, key, headers and payload into a new event", function()
    local r = s.on_event([[
      ev.topic = "new.topic"
      ev.key = "k2"
      ev.headers.priority = "high"
      ev.payload.amount = ev.payload.amount * 2
      return "out"
    ]])
    local res = run(r, { id = "e1", topic = "t", key = "k", time = 7,
      headers = { a = "1" }, payload = { amount = 21, note = "x" } })
    assert.is_true(res.changed)
    local e = res.event
    assert.equal("e1", e.id)
    assert.equal("new.topic", e.topic)
    assert.equal("k2", e.key)
    assert.equal(7, e.time)
    assert.same({ a = "1", priority = "high" }, e.headers)
    assert.equal(42, e.payload.amount)
    assert.equal("x", e.payload.note)
  end)

  it("keeps the original bytes when nothing really changed", function()
    local r = s.on_event([[
      ev.topic = ev.topic
      ev.key = ev.key
      local h = ev.headers
      h.a = h.a
      local p = ev.payload
      p.n = p.n
      return "out"
    ]])
    local res = run(r, { topic = "t", key = "k", headers = { a = "1" },
      payload = { n = 1.5, list = T.array({ 1, 2 }) } })
    assert.is_false(res.changed)
  end)

  it("removes the key and the payload when set to nil", function()
    local r = s.on_event([[ev.key = nil ev.payload = nil ev.headers = {} return "x"]])
    local res = run(r, { topic = "t", key = "k", headers = { a = "b" }, payload = 1 })
    assert.is_true(res.changed)
    assert.is_nil(res.event.key)
    assert.is_nil(res.event.payload)
    assert.same({}, res.event.headers)
  end)

  it("refuses bad assignments and unknown fields", function()
    local function err(body)
      local res = run((s.on_event(body)))
      assert.equal("runtime", res.error_kind, body)
      return res.error
    end
    s.has(err([[ev.id = "x"]]), "ev.id is read-only")
    s.has(err([[ev.time = 1]]), "ev.time is read-only")
    s.has(err([[ev.topic = 5]]), "ev.topic must be a non-empty string (got number)")
    s.has(err([[ev.topic = ""]]), "ev.topic must be a non-empty string")
    s.has(err([[ev.key = {}]]), "ev.key must be a string or nil (got table)")
    s.has(err([[ev.headers = 1]]), "ev.headers must be a table of strings (got number)")
    s.has(err([[ev.headers.n = 5 return "x"]]), "ev.headers: header 'n' must be a string (got number)")
    s.has(err([[return ev.topics]]), "event has no field 'topics'")
    s.has(err([[ev.extra = 1]]), "event has no field 'extra'")
  end)

  it("changes nothing when the rule fails or drops", function()
    local r = s.on_event([[ev.topic = "changed" error("boom")]])
    local res = run(r, { topic = "t" })
    assert.is_false(res.changed)
    assert.equal("t", res.event.topic)
  end)
end)

describe("the sluice API", function()
  teardown(s.cleanup)

  it("emit builds new events for the host", function()
    local r = s.on_event([[
      sluice.emit("audit", { topic = "audit." .. ev.topic, key = "k",
        headers = { src = "rule" }, payload = { seen = ev.payload }, time = 1000 })
      sluice.emit("other", { topic = "x", id = "fixed" })
    ]])
    local res = run(r, { topic = "orders", payload = T.array({ 1 }) })
    assert.equal(2, #res.emitted)
    local a = res.emitted[1]
    assert.equal("audit", a.output)
    assert.equal("audit.orders", a.event.topic)
    assert.equal("k", a.event.key)
    assert.equal(1000, a.event.time)
    assert.equal("rule", a.event.headers.src)
    -- a new trace: the parent event had no traceparent
    assert.matches("^00%-%x+%-%x+%-01$", a.event.headers.traceparent)
    assert.equal("array", T.kind(a.event.payload, "seen"))
    assert.equal(32, #a.event.id)
    assert.equal("fixed", res.emitted[2].event.id)
  end)

  it("emit refuses events without a topic or with unknown fields", function()
    local res = run((s.on_event([[sluice.emit("o", { payload = 1 })]])))
    s.has(res.error, "sluice.emit: topic must be a non-empty string (got nil)")
    res = run((s.on_event([[sluice.emit("o", { topic = "t", body = 1 })]])))
    s.has(res.error, "sluice.emit: unknown event field 'body'")
    res = run((s.on_event([[sluice.emit("o", { topic = "t", headers = { a = 1 } })]])))
    s.has(res.error, "sluice.emit: header 'a' must be a string (got number)")
  end)

  it("log and print reach the host with level and fields", function()
    local res = run((s.on_event([[
      sluice.log("warn", "careful", { n = 1, tag = "x" })
      sluice.log(0, "dbg")
      print("a", 1, true, nil, {})
    ]])))
    assert.equal(3, #res.logs)
    assert.equal("warn", res.logs[1].level)
    assert.equal("careful", res.logs[1].msg)
    assert.same({ n = 1, tag = "x" }, res.logs[1].fields)
    assert.equal("debug", res.logs[2].level)
    assert.equal("a\t1\ttrue\tnil\ttable", res.logs[3].msg)
    res = run((s.on_event([[sluice.log("loud", "x")]])))
    s.has(res.error, "invalid option 'loud'")
    res = run((s.on_event([[sluice.log("info", "x", { 1, 2 })]])))
    s.has(res.error, "sluice.log: fields must be a map")
  end)

  it("now() is wall-clock milliseconds and follows the rule's clock", function()
    local r = s.on_event([[return tostring(sluice.now())]])
    local t0 = tonumber(run(r).routes[1])
    assert.is_true(math.abs(t0 - os.time() * 1000) < 5000)
    r:advance(60000)
    local t1 = tonumber(run(r).routes[1])
    assert.is_true(t1 - t0 >= 60000 and t1 - t0 < 60100, t1 - t0)
  end)

  it("every(ms, fn) runs timers as the clock moves, with emit", function()
    local r = s.rule([[
      local count = 0
      sluice.every(60000, function()
        sluice.emit("summary", { topic = "orders.per_minute", payload = { count = count } })
        count = 0
      end)
      return { on_event = function(ev) count = count + 1 end }
    ]])
    for _ = 1, 3 do run(r) end
    assert.same({}, r:advance(59999).emitted)
    local out = r:advance(1)
    assert.equal(1, #out.emitted)
    assert.equal(3, out.emitted[1].event.payload.count)
    run(r)
    out = r:advance(120000)
    assert.equal(2, #out.emitted)
    assert.equal(1, out.emitted[1].event.payload.count)
    assert.equal(0, out.emitted[2].event.payload.count)
  end)

  it("every refuses bad intervals and too many timers", function()
    local err = s.load_error([[sluice.every(0, function() end) return {}]])
    s.has(err, "an interval of at least 1 ms expected")
    err = s.load_error([[for i = 1, 65 do sluice.every(1000, function() end) end return {}]])
    s.has(err, "sluice.every: at most 64 timers per rule")
  end)

  it("counter(name, labels) adds up, read back per series", function()
    local r = s.on_event([[
      sluice.counter("orders_total", { kind = ev.topic, b = "x\"y" }):inc()
      sluice.counter("orders_total", { kind = ev.topic, b = "x\"y" }):add(2.5)
      sluice.counter("bytes"):inc(10)
    ]])
    run(r, { topic = "a" })
    run(r, { topic = "b" })
    assert.same({
      ['orders_total{b="x\\"y",kind="a"}'] = 3.5,
      ['orders_total{b="x\\"y",kind="b"}'] = 3.5,
      ["bytes{}"] = 20,
    }, r:counters())
    local res = run((s.on_event([[sluice.counter("c"):inc(-1)]])))
    s.has(res.error, "counters only go up")
    res = run((s.on_event([[sluice.counter("bad name")]])))
    s.has(res.error, "a metric name")
  end)

  it("rate_limit(key, per_second, burst) is a token bucket per key", function()
    local r = s.on_event([[
      local ok = sluice.rate_limit(ev.key, 2, 3)
      return ok and "yes" or "no"
    ]])
    local function go(key) return run(r, { topic = "t", key = key }).routes[1] end
    assert.equal("yes", go("a"))
    assert.equal("yes", go("a"))
    assert.equal("yes", go("a"))
    assert.equal("no", go("a"))
    assert.equal("yes", go("b"))
    r:advance(500) -- one token back at 2 per second
    assert.equal("yes", go("a"))
    assert.equal("no", go("a"))
  end)

  it("rate_limit takes fractions of a token per second", function()
    local r = s.on_event([[
      return sluice.rate_limit("k", 0.5, 1.5) and "yes" or "no"
    ]])
    assert.equal("yes", run(r).routes[1])
    assert.equal("no", run(r).routes[1])
    r:advance(1000) -- half a token back: with the half left, one token
    assert.equal("yes", run(r).routes[1])
    assert.equal("no", run(r).routes[1])
    r:advance(1999)
    assert.equal("no", run(r).routes[1])
    r:advance(1)
    assert.equal("yes", run(r).routes[1])
  end)

  it("rate_limit keeps a bounded number of keys", function()
    local r = s.on_event([[
      for i = 1, 10000 do sluice.rate_limit("k" .. i, 1, 1) end
      return sluice.rate_limit("k1", 1, 1) and "fresh" or "limited"
    ]], { cpu_budget_ms = 1000 })
    -- k1 was evicted (8192 keys at most), so it starts with a full bucket
    assert.same({ "fresh" }, run(r).routes)
  end)

  it("seen(id, ttl_ms) is a dedup window", function()
    local r = s.on_event([[return sluice.seen(ev.id, 1000) and "dup" or "new"]])
    assert.same({ "new" }, run(r, { topic = "t", id = "x" }).routes)
    assert.same({ "dup" }, run(r, { topic = "t", id = "x" }).routes)
    assert.same({ "new" }, run(r, { topic = "t", id = "y" }).routes)
    r:advance(1001)
    assert.same({ "new" }, run(r, { topic = "t", id = "x" }).routes)
  end)

  it("require loads pure-Lua modules from lib/ and scripts/, once", function()
    s.write("lib/util.lua", [[
      loads = (loads or 0) + 1
      return { double = function(x) return 2 * x end, loads = function() return loads end }
    ]])
    s.write("lib/sub/init.lua", [[return { name = "sub" }]])
    local r = s.on_event([[
      local u = require("util")
      local u2 = require("util")
      return tostring(u.double(21)) .. require("sub").name .. u.loads() .. tostring(u == u2)
    ]])
    assert.same({ "42sub1true" }, run(r).routes)
    s.write("lib/broken.lua", "return {\n  x = = 1 }")
    local res = run((s.on_event([[require("broken")]])))
    s.has(res.error, "lib/broken.lua:2: unexpected symbol near '='")
    s.write("lib/fails.lua", "error('module boom')")
    res = run((s.on_event([[require("fails")]])))
    s.has(res.error, "lib/fails.lua:1: module boom")
    s.write("lib/selfreq.lua", "return require('selfreq')")
    res = run((s.on_event([[require("selfreq")]])))
    s.has(res.error, "require: module 'selfreq' requires itself")
  end)

  it("the constructors and json are there", function()
    local r = s.on_event([[
      return sluice.json.encode({ a = sluice.array(), m = sluice.map(), f = sluice.float(1) })
    ]])
    local out = run(r).routes[1]
    s.has(out, '"a":[]')
    s.has(out, '"m":{}')
    s.has(out, '"f":1.0')
  end)
end)

describe("loading a rule", function()
  teardown(s.cleanup)

  it("reports syntax errors as path:line: message", function()
    local err, path = s.load_error("return {\n  on_event = function(ev)\n    return = 1\n  end }")
    assert.equal(path .. ":3: unexpected symbol near '='", err)
  end)

  it("reports runtime errors in the chunk and in on_start", function()
    local err, path = s.load_error("local x = nil\nreturn x.y")
    assert.equal(path .. ":2: attempt to index local 'x' (a nil value)", err)
    err, path = s.load_error("return { on_event = function() end,\n on_start = function() error('no db') end }")
    assert.equal(path .. ":2: no db", err)
  end)

  it("checks the contract, naming the field", function()
    local err, path = s.load_error("return 5")
    assert.equal(path .. ":1: the rule must return a table with on_event (got number)", err)
    err, path = s.load_error("return {}")
    assert.equal(path .. ":1: on_event must be a function (got nil)", err)
    err = s.load_error("return { on_event = function() end, topics = 5 }")
    s.has(err, "topics must be a string or a list of strings (got number)")
    err = s.load_error("return { on_event = function() end, topics = { 'a', 7 } }")
    s.has(err, "topics[2] must be a non-empty string (got number)")
    err = s.load_error("return { on_event = function() end, topics = {} }")
    s.has(err, "topics must be a non-empty list of strings")
    err = s.load_error("return { on_event = function() end, on_start = 1 }")
    s.has(err, "on_start must be a function (got number)")
    err = s.load_error("return { on_event = function() end, snapshot = 'x' }")
    s.has(err, "snapshot must be a function (got string)")
    local ok, e = pcall(T.load, s.dir .. "/missing.lua")
    assert.is_false(ok)
    s.has(e, "missing.lua:0: cannot read the rule: No such file or directory")
  end)

  it("runs on_start once after the chunk", function()
    local r = s.rule([[
      local started = 0
      return { on_start = function() started = started + 1 end,
               on_event = function() return tostring(started) end }
    ]])
    assert.same({ "1" }, run(r).routes)
  end)

  it("matches topics globs, where * spans dots", function()
    local r = s.rule([[return { topics = { "orders.*", "*.audit", "exact" },
                                on_event = function() end }]])
    assert.is_true(r:matches("orders.new"))
    assert.is_true(r:matches("orders.eu.new"))
    assert.is_true(r:matches("x.y.audit"))
    assert.is_true(r:matches("exact"))
    assert.is_false(r:matches("exactly"))
    assert.is_false(r:matches("order.new"))
    local one = s.rule([[return { topics = "a*b", on_event = function() end }]])
    assert.is_true(one:matches("ab"))
    assert.is_true(one:matches("a.x.b"))
    assert.is_false(one:matches("a.x.c"))
    local all = s.rule([[return { on_event = function() end }]])
    assert.is_true(all:matches("anything"))
  end)

  it("reports the file's SHA-256", function()
    local r, path = s.rule("return { on_event = function() end }")
    local p = io.popen("sha256sum " .. path)
    local want = p:read("*a"):match("^(%x+)")
    p:close()
    assert.equal(want, r:info().hash)
  end)
end)

describe("state handover", function()
  teardown(s.cleanup)

  it("snapshot() of the old rule feeds restore(value) of the new one", function()
    local src = [[
      local counts = sluice.map()
      return {
        on_event = function(ev) counts[ev.topic] = (counts[ev.topic] or 0) + 1
                                return tostring(counts[ev.topic]) end,
        snapshot = function() return { counts = counts, f = sluice.float(1) } end,
        restore = function(v) counts = v.counts end,
      }
    ]]
    local old = s.rule(src)
    run(old, { topic = "a" })
    run(old, { topic = "a" })
    local bytes = old:snapshot()
    local new = s.rule(src)
    assert.is_true(new:restore(bytes))
    assert.same({ "3" }, run(new, { topic = "a" }).routes)
    assert.same({ "1" }, run(new, { topic = "b" }).routes)
  end)

  it("reports a rule without the functions, and their failures", function()
    local plain = s.rule("return { on_event = function() end }")
    assert.is_nil(plain:snapshot())
    assert.is_false(plain:restore(T.encode(1)))
    local bad = s.rule([[return { on_event = function() end,
      snapshot = function() return { f = print } end,
      restore = function(v) error("cannot restore " .. v) end }]])
    local ok, e = pcall(bad.snapshot, bad)
    assert.is_false(ok)
    s.has(e, "snapshot() returned a value msgpack cannot hold: cannot encode a function value")
    ok, e = pcall(bad.restore, bad, T.encode("x"))
    assert.is_false(ok)
    s.has(e, ":3: cannot restore x (in restore)")
  end)

  it("bounds snapshot()'s encoding by memory_mb, however often a string is shared", function()
    -- one 1 MiB string in 64 slots would encode to 64 MiB of C memory
    local r = s.rule([[local big = ("x"):rep(1048576)
      return { on_event = function() end,
        snapshot = function() local t = {} for i = 1, 64 do t[i] = big end return t end,
        restore = function() end }]], { memory_mb = 16, cpu_budget_ms = 1000 })
    local ok, e = pcall(r.snapshot, r)
    assert.is_false(ok)
    s.has(e, "snapshot()'s value (memory_mb) is larger than 16777216 bytes")
  end)
end)

describe("rule:run's result contract (as sluice/testing.lua documents it)", function()
  teardown(s.cleanup)

  it("routes is always a table, {} unless the verdict is route; timings are numbers", function()
    local r = s.on_event([[
      if ev.topic == "r" then return "a" end
      if ev.topic == "d" then return sluice.drop("x") end
      if ev.topic == "e" then error("boom") end
    ]])
    for topic, verdict in pairs({ p = "pass", r = "route", d = "drop", e = "error" }) do
      local res = run(r, { topic = topic })
      assert.equal(verdict, res.verdict)
      assert.equal("table", type(res.routes))
      if verdict ~= "route" then assert.same({}, res.routes) end
      assert.equal(verdict == "drop", res.dropped ~= nil)
      assert.equal(verdict == "error", res.error ~= nil)
      assert.equal(verdict == "error", res.error_kind ~= nil)
      assert.equal("number", type(res.elapsed_ms))
      assert.equal("number", type(res.cpu_ms))
      assert.is_true(res.elapsed_ms >= 0 and res.cpu_ms >= 0)
      assert.equal("boolean", type(res.changed))
      assert.equal("table", type(res.emitted))
      assert.equal("table", type(res.logs))
    end
  end)
end)

describe("ev.time and ev.time_ns", function()
  teardown(s.cleanup)

  it("time is float ms, time_ns the exact integer as a decimal string", function()
    local r = s.on_event([[
      ev.headers.ms = string.format("%.3f", ev.time)
      ev.headers.ns = ev.time_ns
      ev.headers.kind = type(ev.time_ns)
    ]])
    -- 2^53 + 1 ns: a double cannot hold it, the string does
    local res = run(r, { topic = "t", time_ns = "1700000000000000123" })
    assert.equal("1700000000000000123", res.event.headers.ns)
    assert.equal("string", res.event.headers.kind)
    assert.equal("1700000000000.000", res.event.headers.ms)
    assert.equal("1700000000000000123", res.event.time_ns)
  end)

  it("time_ns is read-only, and sluice.emit takes it back exactly", function()
    local r = s.on_event([[
      if ev.topic == "w" then ev.time_ns = "1" end
      if ev.topic == "both" then sluice.emit("o", { topic = "x", time = 1, time_ns = "1" }) end
      if ev.topic == "bad" then sluice.emit("o", { topic = "x", time_ns = "12ms" }) end
      sluice.emit("o", { topic = "copy", time_ns = ev.time_ns })
    ]])
    assert.truthy(run(r, { topic = "w" }).error:find("ev.time_ns is read-only", 1, true))
    assert.truthy(run(r, { topic = "both" }).error:find("give time or time_ns, not both", 1, true))
    assert.truthy(run(r, { topic = "bad" }).error:find("time_ns must be a string of decimal digits", 1, true))
    local res = run(r, { topic = "t", time_ns = "1700000000000000123" })
    assert.equal("1700000000000000123", res.emitted[1].event.time_ns)
  end)
end)

describe("on_stop", function()
  teardown(s.cleanup)

  it("rule:stop() runs on_stop and collects what it emits; nil without one", function()
    local r = s.rule([[
      local n = 0
      return {
        on_event = function(ev) n = n + 1 end,
        on_stop = function() sluice.emit("o", { topic = "summary", payload = { n = n } }) end,
      }
    ]])
    r:run({ topic = "t" })
    r:run({ topic = "t" })
    local out = r:stop()
    assert.equal("summary", out.emitted[1].event.topic)
    assert.same({ n = 2 }, out.emitted[1].event.payload)
    assert.is_nil(s.on_event("return nil"):stop())
  end)

  it("an on_stop that is not a function fails the load; one that fails raises", function()
    local ok, err = pcall(s.rule, "return { on_event = function() end, on_stop = 1 }")
    assert.is_false(ok)
    assert.truthy(tostring(err):find("on_stop must be a function (got number)", 1, true))
    local r = s.rule("return { on_event = function() end, on_stop = function() error('late') end }")
    local ok2, err2 = pcall(r.stop, r)
    assert.is_false(ok2)
    assert.truthy(tostring(err2):find("late", 1, true))
  end)
end)
