local testing = require("sluice.testing")

describe("cookbook: count per minute and emit a summary", function()
  local function view(rule, path)
    return rule:run({ topic = "pageviews.web", payload = { path = path } })
  end

  it("emits one summary a minute with the counts by path, then starts over", function()
    local rule = testing.load("60_count_per_minute.lua")
    view(rule, "/a"); view(rule, "/a"); view(rule, "/b")
    assert.same({}, rule:advance(59999).emitted)
    local out = rule:advance(1).emitted
    assert.equal(1, #out)
    assert.equal("summaries", out[1].output)
    assert.equal(3, out[1].event.payload.total)
    assert.same({ ["/a"] = 2, ["/b"] = 1 }, out[1].event.payload.by_path)
    assert.same({}, rule:advance(60000).emitted) -- an empty minute says nothing
  end)

  it("flushes the partial minute at shutdown", function()
    local rule = testing.load("60_count_per_minute.lua")
    view(rule, "/a")
    local out = rule:stop().emitted
    assert.equal(1, out[1].event.payload.total)
  end)

  it("hands its counts to the next version (reload or restart)", function()
    local old = testing.load("60_count_per_minute.lua")
    view(old, "/a"); view(old, "/a")
    local new = testing.load("60_count_per_minute.lua")
    assert.is_true(new:restore(old:snapshot()))
    view(new, "/a")
    assert.same({ ["/a"] = 3 }, new:advance(60000).emitted[1].event.payload.by_path)
  end)
end)
