local testing = require("sluice.testing")

describe("examples/dedup: rate limit per service", function()
  local path = "20_rate_limit.lua"

  it("allows the burst, then drops and counts", function()
    local rule = testing.load(path)
    local passed, dropped = 0, 0
    for _ = 1, 250 do
      local r = rule:run({ topic = "log.debug", headers = { service = "api" } })
      if r.dropped then dropped = dropped + 1 else passed = passed + 1 end
    end
    assert.are.equal(200, passed)
    assert.are.equal(50, dropped)
    assert.are.equal(50, rule:counters()["debug_events_limited{}"])
  end)

  it("refills at the configured rate", function()
    local rule = testing.load(path)
    for _ = 1, 200 do rule:run({ topic = "log.debug", headers = { service = "api" } }) end
    rule:advance(100) -- 10 tokens
    local passed = 0
    for _ = 1, 20 do
      if not rule:run({ topic = "log.debug", headers = { service = "api" } }).dropped then
        passed = passed + 1
      end
    end
    assert.are.equal(10, passed)
  end)

  it("keeps services apart", function()
    local rule = testing.load(path)
    for _ = 1, 200 do rule:run({ topic = "log.debug", headers = { service = "api" } }) end
    local r = rule:run({ topic = "log.debug", headers = { service = "db" } })
    assert.is_nil(r.dropped)
  end)

  it("ignores other topics", function()
    local rule = testing.load(path)
    assert.is_false(rule:matches("log.info"))
  end)
end)
