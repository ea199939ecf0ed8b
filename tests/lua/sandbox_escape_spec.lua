-- sandbox_escape_spec.lua - attempts to get out of the rule sandbox, each
-- refused with a clear error (or shown to lead nowhere).

local s = require("support")

-- Run body as on_event and return the result table.
local function try(body, opts)
  local r = s.on_event(body, opts)
  return r:run({ topic = "t" }), r
end

-- body must fail at runtime with a message containing msg.
local function refused(body, msg, opts)
  local res = try(body, opts)
  assert.equal("error", res.verdict, body)
  s.has(res.error, msg)
  return res
end

-- body must return the single route want.
local function routes(body, want)
  local res = try(body)
  assert.same({ want }, res.routes, body .. ": " .. tostring(res.error))
end

describe("the sandbox refuses", function()
  teardown(s.cleanup)

  it("a rule file of bytecode", function()
    local err, path = s.load_error(string.dump(function() return {} end))
    assert.equal(path .. ":1: bytecode is not allowed, rules are loaded as text", err)
  end)

  it("bytecode hidden behind a #! line", function()
    local err, path = s.load_error("#!/usr/bin/luajit\n" .. string.dump(function() return {} end))
    assert.equal(path .. ":1: bytecode is not allowed, rules are loaded as text", err)
  end)

  it("loadstring, load, dofile and loadfile", function()
    refused([[loadstring("return 1")]], "attempt to call global 'loadstring' (a nil value)")
    refused([[load(function() return nil end)]], "attempt to call global 'load' (a nil value)")
    refused([[dofile("/etc/passwd")]], "attempt to call global 'dofile' (a nil value)")
    refused([[loadfile("/etc/passwd")]], "attempt to call global 'loadfile' (a nil value)")
  end)

  it("string.dump, also as a string method", function()
    refused([[string.dump(function() end)]], "attempt to call field 'dump' (a nil value)")
    refused([[("x"):dump()]], "attempt to call method 'dump' (a nil value)")
  end)

  it("getfenv and setfenv games", function()
    refused([[local g = getfenv(0)]], "attempt to call global 'getfenv' (a nil value)")
    refused([[setfenv(1, {})]], "attempt to call global 'setfenv' (a nil value)")
    refused([[local f = string.gsub; return getfenv(f)]], "attempt to call global 'getfenv'")
  end)

  it("reaching the string metatable", function()
    routes([[return tostring(getmetatable(""))]], "protected")
    refused([[getmetatable("").__index.upper = nil]], "attempt to index field '__index' (a nil value)")
    refused([[rawget(getmetatable(""), "__index")]], "bad argument #1 to 'rawget' (table expected, got string)")
    refused([[setmetatable("", {})]], "bad argument #1 to 'setmetatable' (table expected, got string)")
  end)

  it("tampering with string methods through the string table", function()
    -- the global string table is a copy: changing it changes no method
    routes([[string.upper = function() return "pwned" end return ("a"):upper()]], "A")
    routes([[string.dump = function() return "x" end
             return tostring(pcall(function() return ("a"):dump() end))]], "false")
  end)

  it("ffi", function()
    refused([[local ffi = require("ffi")]], "module 'ffi' not found")
    refused([[ffi.C.exit(1)]], "attempt to index global 'ffi' (a nil value)")
  end)

  it("jit.on and the jit library", function()
    refused([[jit.on()]], "attempt to index global 'jit' (a nil value)")
    refused([[require("jit.opt")]], "module 'jit.opt' not found")
  end)

  it("debug.getregistry and the debug library", function()
    refused([[debug.getregistry()]], "attempt to index global 'debug' (a nil value)")
    refused([[require("debug")]], "module 'debug' not found")
  end)

  it("package.loadlib and C modules", function()
    refused([[package.loadlib("libc.so.6", "exit")]], "attempt to index global 'package' (a nil value)")
    refused([[require("socket.core")]], "module 'socket.core' not found")
    s.write("lib/cmod.so", "not really a shared object")
    refused([[require("cmod")]], "module 'cmod' not found")
  end)

  it("require outside the module dirs", function()
    refused([[require("../../etc/passwd")]], "require: invalid module name '../../etc/passwd'")
    refused([[require("/etc/passwd")]], "require: invalid module name")
    refused([[require("a..b")]], "require: invalid module name")
  end)

  it("require of a bytecode module", function()
    s.write("lib/bc.lua", string.dump(function() return 1 end))
    refused([[require("bc")]], "lib/bc.lua: bytecode is not allowed")
  end)

  it("require of the testing module, whose C half is not there", function()
    refused([[require("sluice.testing")]], "module 'sluice_core' not found")
  end)

  it("os.exit, os.execute and the rest of os", function()
    refused([[os.exit(1)]], "attempt to call field 'exit' (a nil value)")
    refused([[os.execute("true")]], "attempt to call field 'execute' (a nil value)")
    refused([[os.getenv("HOME")]], "attempt to call field 'getenv' (a nil value)")
    refused([[os.remove("/tmp/x")]], "attempt to call field 'remove' (a nil value)")
    routes([[return type(os.time()) .. type(os.clock()) .. type(os.date("%Y"))]],
      "numbernumberstring")
  end)

  it("io.open and the io library", function()
    refused([[io.open("/etc/passwd")]], "attempt to index global 'io' (a nil value)")
  end)

  it("hunting through _G with pairs and rawget", function()
    routes([[
      local names = {}
      for k in pairs(_G) do names[#names + 1] = k end
      table.sort(names)
      return table.concat(names, " ")
    ]], "_G _VERSION assert bit collectgarbage coroutine error getmetatable ipairs math next os pairs pcall print rawequal rawget rawset require select setmetatable sluice string table tonumber tostring type unpack xpcall")
    routes([[
      for _, k in ipairs({"io", "debug", "package", "jit", "ffi", "load",
          "loadstring", "dofile", "loadfile", "getfenv", "setfenv",
          "newproxy", "gcinfo", "module"}) do
        if rawget(_G, k) ~= nil then return k end
      end
      return "none"
    ]], "none")
    routes([[return tostring(_G._G == _G)]], "true")
  end)

  it("collectgarbage beyond count", function()
    refused([[collectgarbage("stop")]], [[collectgarbage("stop") is not allowed in a rule (only "count")]])
    refused([[collectgarbage()]], [[collectgarbage("collect") is not allowed]])
    refused([[collectgarbage("setpause", 1000)]], "is not allowed")
    routes([[return type(collectgarbage("count"))]], "number")
  end)

  it("newproxy and userdata with __gc", function()
    refused([[newproxy(true)]], "attempt to call global 'newproxy' (a nil value)")
  end)

  it("__gc on tables, which never runs", function()
    local r = s.on_event([[
      for i = 1, 10000 do
        setmetatable({}, { __gc = function() while true do end end })
      end
      return "ok"
    ]], { cpu_budget_ms = 50 })
    for _ = 1, 5 do
      local res = r:run({ topic = "t" })
      assert.same({ "ok" }, res.routes)
      assert.is_true(res.cpu_ms < 100)
    end
  end)

  it("error objects whose __tostring would run after the budget", function()
    local res = refused([[
      error(setmetatable({}, { __tostring = function() while true do end end }))
    ]], "(error object is a table value)", { cpu_budget_ms = 5 })
    assert.equal("runtime", res.error_kind)
    assert.is_true(res.cpu_ms < 50)
    res = refused([[
      local e = setmetatable({}, { __tostring = function() while true do end end })
      print(e)
      error(e, 0)
    ]], "(error object is a table value)", { cpu_budget_ms = 5 })
  end)

  it("dodging the hook with coroutines, pcall and xpcall handlers", function()
    for _, body in ipairs({
      "coroutine.wrap(function() while true do end end)()",
      "local co = coroutine.create(function() while true do coroutine.yield() end end) while true do coroutine.resume(co) end",
      "while true do pcall(function() while true do end end) end",
      "xpcall(function() while true do end end, function() while true do end end) while true do end",
      "while true do xpcall(error, function() while true do end end) end",
    }) do
      local res = refused(body, "cpu budget of 5 ms exceeded", { cpu_budget_ms = 5 })
      assert.equal("cpu", res.error_kind)
      assert.is_true(res.cpu_ms < 30, body)
    end
  end)

  it("the event's metatable", function()
    routes([[return tostring(getmetatable(ev))]], "protected")
    refused([[setmetatable(ev, {})]], "bad argument #1 to 'setmetatable' (table expected, got userdata)")
    refused([[rawset(ev, "topic", "x")]], "bad argument #1 to 'rawset' (table expected, got userdata)")
  end)

  it("keeping the event past on_event", function()
    local r = s.rule([[
      local kept
      sluice.every(10, function() sluice.log("info", kept.topic) end)
      return { on_event = function(ev) kept = ev end }
    ]])
    r:run({ topic = "t" })
    local out = r:advance(10)
    s.has(out.logs[1].msg, "the event is only valid during on_event")
  end)

  it("reaching another rule's globals", function()
    local a = s.on_event([[shared_secret = "a's"]])
    local b = s.on_event([[return tostring(shared_secret)]])
    a:run({ topic = "t" })
    assert.same({ "nil" }, b:run({ topic = "t" }).routes)
  end)

  it("the memory of the engine through a huge string", function()
    local res = refused([[return ("x"):rep(2^30)]], "not enough memory", { memory_mb = 8 })
    assert.equal("memory", res.error_kind)
  end)

  it("crashing the process through nested C calls", function()
    refused([[local function g(s) return (s:gsub(".", g)) end return g("ab")]],
      "C calls nested deeper than 100")
    refused([[local function f() return coroutine.wrap(f)() end return f()]],
      "C calls nested deeper than 100")
    refused([[local function c(a, b) table.sort({3, 2, 1}, c) return a < b end
              table.sort({3, 2, 1}, c)]], "C calls nested deeper than 100")
  end)

  it("metamethods on tables the C API reads", function()
    refused([[
      local t = setmetatable({}, { __index = function() while true do end end })
      sluice.emit("x", t)
    ]], "sluice.emit: topic must be a non-empty string (got nil)")
  end)
end)
