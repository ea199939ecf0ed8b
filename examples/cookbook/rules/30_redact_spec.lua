local testing = require("sluice.testing")

describe("cookbook: redact fields by name and by pattern", function()
  local rule = testing.load("30_redact.lua")

  it("masks fields by name, nested ones too", function()
    local r = rule:run({ topic = "users.signup", payload = {
      name = "Ada", password = "hunter2", profile = { SSN = "078-05-1120", city = "Paris" } } })
    assert.same({ name = "Ada", password = "[redacted]",
                  profile = { SSN = "[redacted]", city = "Paris" } }, r.event.payload)
  end)

  it("masks e-mail addresses and card numbers inside strings", function()
    local r = rule:run({ topic = "support.ticket", payload = {
      text = "mail ada@example.com, card 4111 1111 1111 1111, order 12345" } })
    assert.equal("mail [email], card [card], order 12345", r.event.payload.text)
  end)

  it("leaves a clean event byte for byte as it came", function()
    local r = rule:run({ topic = "users.signup", payload = { name = "Ada", n = 3 } })
    assert.is_false(r.changed)
  end)
end)
