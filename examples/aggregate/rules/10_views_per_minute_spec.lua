local testing = require("sluice.testing")

describe("examples/aggregate: views per minute", function()
  local path = "10_views_per_minute.lua"

  it("makes no decision: the raw event goes where the routes say", function()
    local rule = testing.load(path)
    local r = rule:run({ topic = "page.view", payload = { path = "/a" } })
    assert.are.equal(0, #r.routes)
    assert.is_nil(r.dropped)
    assert.is_nil(r.error)
  end)

  it("emits one summary per minute with counts per path", function()
    local rule = testing.load(path)
    rule:run({ topic = "page.view", payload = { path = "/a" } })
    rule:run({ topic = "page.view", payload = { path = "/a" } })
    rule:run({ topic = "page.view", payload = { path = "/b" } })
    local emitted = rule:advance(60000).emitted
    assert.are.equal(1, #emitted)
    local s = emitted[1]
    assert.are.equal("summaries", s.output)
    assert.are.equal("page.views.minute", s.event.topic)
    assert.are.equal(3, s.event.payload.total)
    assert.are.same({ ["/a"] = 2, ["/b"] = 1 }, s.event.payload.by_path)
  end)

  it("keeps its counts across a reload (snapshot, then restore)", function()
    local old = testing.load(path)
    old:run({ topic = "page.view", payload = { path = "/a" } })
    local state = old:snapshot()
    local new = testing.load(path)
    assert.is_true(new:restore(state))
    new:run({ topic = "page.view", payload = { path = "/a" } })
    local s = new:advance(60000).emitted[1]
    assert.are.equal(2, s.event.payload.by_path["/a"])
  end)

  it("emits nothing for a quiet minute", function()
    local rule = testing.load(path)
    assert.are.equal(0, #rule:advance(60000).emitted)
  end)
end)
