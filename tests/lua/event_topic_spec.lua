-- event_topic_spec.lua - ev.topic is read without a C call: the event's
-- metatable indexes a table holding the topic of the event being decided
-- (engine/lua/ev.c, struct ev_cache). These prove that table never shows
-- a topic other than the running event's: across many topics (more than
-- the cache's 16 slots, so slots are reused), after the rule sets
-- ev.topic, through an event kept from an earlier call, and outside
-- on_event, where the event raises as it always did.

local s = require("support")

local function run(r, topic)
  return r:run({ topic = topic })
end

describe("ev.topic", function()
  teardown(s.cleanup)

  it("is each event's own topic, over more topics than the cache holds", function()
    local r = s.on_event("return ev.topic .. '.' .. ev.topic")
    local topics = {}
    for i = 1, 40 do topics[i] = ("topic.%d"):format(i) end
    topics[#topics + 1] = ("x"):rep(64) -- the longest cached
    topics[#topics + 1] = ("y"):rep(65) -- not cached
    for round = 1, 3 do
      for i, t in ipairs(topics) do
        -- in order, then each twice in a row, then reversed
        local pick = round == 3 and topics[#topics + 1 - i] or t
        for _ = 1, round == 2 and 2 or 1 do
          assert.same({ pick .. "." .. pick }, run(r, pick).routes)
        end
      end
    end
  end)

  it("tells apart topics of one length that differ in any one byte", function()
    -- the cache's slot hashes a few bytes only: topics differing elsewhere
    -- share a slot and length, and only the compare tells them apart
    local r = s.on_event("return ev.topic")
    for _, n in ipairs({ 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 63, 64 }) do
      local base = ("abcdefghijklmnopqrstuvwxyz0123456789"):rep(2):sub(1, n)
      for i = 1, n do
        local other = base:sub(1, i - 1) .. "#" .. base:sub(i + 1)
        assert.same({ base }, run(r, base).routes)
        assert.same({ other }, run(r, other).routes)
        assert.same({ base }, run(r, base).routes)
      end
    end
  end)

  it("reads what the rule set, and the next event's topic after it", function()
    local r = s.on_event([[
      local before = ev.topic
      if before == "rename" then ev.topic = "renamed" end
      return before .. ">" .. ev.topic]])
    for _ = 1, 3 do
      assert.same({ "a>a" }, run(r, "a").routes)
      assert.same({ "rename>renamed" }, run(r, "rename").routes)
      assert.same({ "rename>renamed" }, run(r, "rename").routes)
      assert.same({ "a>a" }, run(r, "a").routes)
    end
  end)

  it("of an event kept from an earlier call is the running event's", function()
    local r = s.on_event([[
      kept = kept or ev
      return kept.topic .. "/" .. tostring(rawequal(kept, ev))]])
    assert.same({ "first/true" }, run(r, "first").routes)
    assert.same({ "second/true" }, run(r, "second").routes)
    assert.same({ "first/true" }, run(r, "first").routes)
  end)

  it("raises outside on_event, also after events of the same topic", function()
    local r = s.rule([[
      local kept
      sluice.every(10, function()
        local ok, err = pcall(function() return kept.topic end)
        sluice.log("info", tostring(ok) .. " " .. tostring(err))
      end)
      return { on_event = function(ev) kept = ev return ev.topic end }
    ]])
    for _ = 1, 3 do
      assert.same({ "t" }, run(r, "t").routes)
    end
    local out = r:advance(10)
    s.has(out.logs[1].msg, "false")
    s.has(out.logs[1].msg, "the event is only valid during on_event")
    -- and the next event reads its topic again
    assert.same({ "t" }, run(r, "t").routes)
    assert.same({ "u" }, run(r, "u").routes)
  end)

  -- Topics that share one of the cache's 16 slots (ev.c's topic_slot, as
  -- of this writing): orders.11, .12, .21 and .22 share a slot and a
  -- length; orders.2, orders.6 and orders.105 share one across lengths.
  local SAME_SLOT = { "orders.11", "orders.12", "orders.21", "orders.22",
                      "orders.2", "orders.6", "orders.105" }

  it("is each event's own topic when topics sharing a cache slot alternate", function()
    local r = s.on_event([[
      local a = ev.payload.a
      return ev.topic .. ":" .. tostring(a) .. ":" .. tostring(ev.payload.a)]])
    for round = 1, 3 do
      for i, t in ipairs(SAME_SLOT) do
        local pick = round == 2 and SAME_SLOT[#SAME_SLOT + 1 - i] or t
        local n = (i + round) % 100
        local res = r:run({ topic = pick, payload = { a = n } })
        assert.same({ ("%s:%d:%d"):format(pick, n, n) }, res.routes)
        assert.is_false(res.changed)
      end
    end
  end)

  it("of an event kept through alternating topics is the running event's, and raises in a timer every time", function()
    -- one event object for every call, whatever its topic: a kept one
    -- reads the running event, and raises between calls
    local r = s.rule([[
      local kept
      sluice.every(10, function()
        for _, k in ipairs({ "topic", "payload", "key", "id" }) do
          local ok, err = pcall(function() return kept[k] end)
          sluice.log("info", k .. " " .. tostring(ok) .. " " .. tostring(err))
        end
        local ok, err = pcall(function() return kept:field("a") end)
        sluice.log("info", "field " .. tostring(ok) .. " " .. tostring(err))
      end)
      return { on_event = function(ev)
        kept = kept or ev
        return kept.topic .. "/" .. tostring(rawequal(kept, ev)) .. "/" ..
          tostring(kept.payload.a) .. "/" .. tostring(kept:field("a"))
      end }]])
    local seq = { "A", "B", "C", "A", "orders.11", "orders.12", "B", "A", "A" }
    for i, t in ipairs(seq) do
      local res = r:run({ topic = t, payload = { a = i } })
      assert.same({ ("%s/true/%d/%d"):format(t, i, i) }, res.routes)
      local out = r:advance(10)
      assert.equal(5, #out.logs)
      for _, l in ipairs(out.logs) do
        assert.matches("^%a+ false ", l.msg)
        s.has(l.msg, "the event is only valid during on_event")
      end
    end
  end)

  it("reads what the rule set, then each later event's own topic and payload, topics alternating", function()
    local r = s.on_event([[
      local before, a = ev.topic, ev.payload.a
      if before == "B" then ev.topic = "B2" end
      if before == "orders.12" then ev.payload = { a = -a } end
      return before .. ">" .. ev.topic .. ":" .. a .. ":" .. ev.payload.a]])
    local seq = { "A", "B", "A", "B", "B", "C", "orders.11", "orders.12",
                  "orders.11", "orders.12", "A", "C" }
    for round = 1, 2 do
      for i, t in ipairs(seq) do
        local n = i * round
        local after = t == "B" and "B2" or t
        local pa = t == "orders.12" and -n or n
        local res = r:run({ topic = t, payload = { a = n } })
        assert.same({ ("%s>%s:%d:%d"):format(t, after, n, pa) }, res.routes)
        assert.equal(t == "B" or t == "orders.12", res.changed)
        assert.equal(after, res.event.topic)
      end
    end
  end)

  it("gives each event its own payload whether or not its rule read ev.topic, topics alternating", function()
    -- the payload-only fields table and the topics' ones take turns
    local r = s.on_event([[
      if ev.key == "t" then return ev.topic .. ":" .. ev.payload.a end
      if ev.key == "f" then return "f:" .. ev:field("a") end
      return "p:" .. ev.payload.a]])
    local topics = { "A", "B", "orders.11", "orders.12", "orders.2", "orders.105" }
    local keys = { "t", "p", "t", "f", "p", "p", "t" }
    for i = 1, 60 do
      local t, k = topics[i % #topics + 1], keys[i % #keys + 1]
      local res = r:run({ topic = t, key = k, payload = { a = i } })
      local want = k == "t" and (t .. ":" .. i) or (k .. ":" .. i)
      assert.same({ want }, res.routes)
      assert.is_false(res.changed)
    end
  end)

  it("names the missing field as before", function()
    local r = s.on_event("return ev.nope")
    local res = run(r, "t")
    assert.equal("runtime", res.error_kind)
    s.has(res.error, "event has no field 'nope'")
    res = run(r, "t") -- with the topic's table in front
    s.has(res.error, "event has no field 'nope'")
  end)

  it("keeps getmetatable(ev) protected", function()
    local r = s.on_event("local t = ev.topic return tostring(getmetatable(ev))")
    assert.same({ "protected" }, run(r, "t").routes)
    assert.same({ "protected" }, run(r, "t").routes)
  end)
end)
