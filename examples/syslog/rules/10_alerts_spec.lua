local testing = require("sluice.testing")

describe("examples/syslog: alerts", function()
  local rule = testing.load("10_alerts.lua")

  local function msg(severity, extra)
    local p = { format = "rfc5424", facility = 1, facility_name = "user",
                severity = severity, hostname = "web-1", app_name = "billing",
                message = "payment failed" }
    for k, v in pairs(extra or {}) do p[k] = v end
    return { topic = "syslog.user.billing", payload = p }
  end

  it("sends err and worse to the file and the alerts command", function()
    local r = rule:run(msg(3))
    assert.are.same({ "all", "alerts" }, r.routes)
    assert.are.equal("web-1", r.event.key)
  end)

  it("sends warning and milder to the file only", function()
    assert.are.same({ "all" }, rule:run(msg(4)).routes)
    assert.are.same({ "all" }, rule:run(msg(7)).routes)
  end)

  it("keeps a malformed line in the file, never alerting", function()
    local r = rule:run({ topic = "syslog.unknown.unknown",
                         payload = { message = "junk", malformed = true } })
    assert.are.same({ "all" }, r.routes)
    assert.is_nil(r.event.key)
  end)
end)
