local testing = require("sluice.testing")

describe("cookbook: reshape a payload", function()
  local rule = testing.load("95_reshape.lua")

  it("renames, nests and flattens", function()
    local r = rule:run({ topic = "legacy.user", payload = {
      uid = 7, uname = "ada", ts = 1700000000, meta = { geo = { cc = "FR" }, v = 2 } } })
    assert.same({ user = { id = 7, name = "ada" }, at = 1700000000,
                  meta_geo_cc = "FR", meta_v = 2 }, r.event.payload)
    assert.equal("v2.user", r.event.topic)
  end)

  it("copes with missing parts", function()
    local r = rule:run({ topic = "legacy.user", payload = { uid = 1 } })
    assert.same({ user = { id = 1 } }, r.event.payload)
  end)
end)
