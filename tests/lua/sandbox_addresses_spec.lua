-- sandbox_addresses_spec.lua - a rule never sees a memory address (issue 9,
-- finding 16): tostring and string.format name tables, functions, userdata
-- and threads by a per-state number, %p is refused, and sluice.drop()'s
-- mark prints as "sluice.drop" (it was an address inside the engine binary).

local s = require("support")

-- Run body as on_event; its routes (the strings it returned).
local function strings(body)
  local r = s.on_event(body)
  local res = r:run({ topic = "t" })
  assert.is_nil(res.error, res.error)
  return res.routes, r
end

local function no_address(text)
  assert.is_nil(text:match("0x%x%x%x%x"), text)
  assert.is_nil(text:match("builtin#"), text)
end

describe("rules see no addresses", function()
  teardown(s.cleanup)

  it("tostring(sluice.drop()) is a fixed string", function()
    local out = strings([[return { tostring(sluice.drop()), ("%s"):format(sluice.drop("x")) }]])
    assert.same({ "sluice.drop", "sluice.drop" }, out)
  end)

  it("tostring of functions, tables, userdata and threads shows no address", function()
    local out = strings([[
      local t = {}
      return { tostring(print), tostring(sluice.emit), tostring(string.rep),
               tostring(function() end), tostring(t), tostring(t),
               tostring(coroutine.create(function() end)),
               tostring(sluice.counter("c")), tostring(ev) }
    ]])
    for i = 1, 8 do no_address(out[i]) end
    assert.equal(out[5], out[6]) -- the same table, the same name
    assert.not_equal(out[4], out[5])
    assert.truthy(out[5]:match("^table: #%d+$"), out[5])
    assert.truthy(out[1]:match("^function: #%d+$"), out[1])
    assert.truthy(out[9]:match("^sluice event "), out[9]) -- __tostring kept
  end)

  it("string.format %s shows no address and %p is refused", function()
    local out = strings([[
      return { string.format("%s|%5s|%d%%|%s", print, {}, 3, "x"),
               ("%-3s"):format(coroutine.running() or {}),
               string.format("%s", setmetatable({}, { __tostring = function() return "mine" end })) }
    ]])
    for _, v in ipairs(out) do no_address(v) end
    assert.truthy(out[1]:match("^function: #%d+|table: #%d+|3%%|x$"), out[1])
    assert.equal("mine", out[3])
    -- not tail calls: a tail call leaves no frame of the rule's to name
    for _, body in ipairs({ [[local v = string.format("%p", {}) return v]],
                            [[local v = ("%p"):format("x") return v]],
                            [[local v = ("%10p"):format(print) return v]] }) do
      local r, path = s.on_event(body)
      local res = r:run({ topic = "t" })
      assert.equal("error", res.verdict, body)
      s.has(res.error, "%p is not allowed")
      -- where is the rule's line (the body's, line 2), not the sandbox's
      -- own format wrapper ("tostring:42")
      assert.equal(path .. ":2", res.where, body)
    end
  end)

  it("a __tostring that returns a table, function or thread shows no address", function()
    -- string.format("%s") handed what __tostring returned to LuaJIT's
    -- own format, which printed it with its address
    for _, ret in ipairs({ "{}", "print", "coroutine.create(print)", "ev" }) do
      local mt = "{ __tostring = function() return " .. ret .. " end }"
      for _, call in ipairs({ "string.format('%s', t)", "('%5s|'):format(t)",
                              "tostring(t)", "tostring(tostring(t))" }) do
        local r, path = s.on_event("local t = setmetatable({}, " .. mt .. ")\n"
          .. "local ok, v = pcall(function() local v = " .. call .. " return v end)\n"
          .. "return { tostring(ok), type(v) == 'string' and v or type(v) }")
        local res = r:run({ topic = "t" })
        assert.is_nil(res.error, res.error)
        for _, v in ipairs(res.routes) do no_address(v) end
        if res.routes[1] == "false" then
          -- the rule's line, not the sandbox's own chunk ("tostring:60")
          assert.equal(path .. ":3: '__tostring' must return a string",
                       res.routes[2], call)
        end
      end
    end
  end)

  it("numbers, strings and booleans format as before", function()
    local out = strings([[
      return { tostring(1.5), tostring(nil), tostring(true), tostring("s"),
               string.format("%5.2f %d %x %q", 3.14159, 42, 255, "a\nb") }
    ]])
    assert.same({ "1.5", "nil", "true", "s", ' 3.14 42 ff "a\\\nb"' }, out)
  end)
end)
