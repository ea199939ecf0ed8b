local testing = require("sluice.testing")

describe("cookbook: fan out a copy", function()
  local rule = testing.load("80_fanout.lua")

  it("routes the event to two outputs and emits a trimmed copy", function()
    local r = rule:run({ topic = "audit.login", key = "u-1", time_ns = "1700000000000000123",
                         payload = { action = "login", ok = true, user = { email = "a@b.c" } } })
    assert.same({ "siem", "archive" }, r.routes)
    assert.equal(1, #r.emitted)
    local copy = r.emitted[1]
    assert.equal("analytics", copy.output)
    assert.equal("analytics.audit.login", copy.event.topic)
    assert.equal("u-1", copy.event.key)
    assert.equal("1700000000000000123", copy.event.time_ns)
    assert.same({ action = "login", ok = true }, copy.event.payload)
    assert.is_false(r.changed) -- the original goes on untouched
  end)
end)
