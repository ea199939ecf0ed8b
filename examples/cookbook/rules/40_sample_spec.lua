local testing = require("sluice.testing")

describe("cookbook: sample 1%", function()
  local rule = testing.load("40_sample.lua")

  it("keeps about 1 in 100", function()
    local kept = 0
    for i = 1, 10000 do
      local r = rule:run({ topic = "metrics.debug.cpu", id = ("ev-%d"):format(i) })
      if r.verdict == "pass" then kept = kept + 1 else assert.equal("sampled out", r.dropped) end
    end
    assert.is_true(kept > 60 and kept < 140, "kept " .. kept)
  end)

  it("decides the same for the same id", function()
    local first = rule:run({ topic = "metrics.debug.cpu", id = "same" }).verdict
    for _ = 1, 5 do
      assert.equal(first, rule:run({ topic = "metrics.debug.cpu", id = "same" }).verdict)
    end
  end)
end)
