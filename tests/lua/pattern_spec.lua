-- pattern_spec.lua - engine/pattern.c against LuaJIT's own string library.
-- Every case runs through both and must give the same results, or the same
-- error message. Run from the repo root: busted --lua=luajit tests/lua/pattern_spec.lua
-- (the module is $BUILD/sluice_pattern_test.so, built by `make`).

assert(jit, "pattern_spec.lua compares with LuaJIT: run busted --lua=luajit")

-- only for this module: a cpath left changed made the specs after this one
-- load sluice.testing from build/ beside a --cpath=build-asan/?.so copy
local build, cpath = os.getenv("BUILD") or "build", package.cpath
package.cpath = build .. "/?.so;" .. cpath
local T = require("sluice_pattern_test")
package.cpath = cpath

local real = { find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub }
local mine = T.functions()
local unchecked = T.functions(false)

local compared = 0 -- differential cases run, reported at the end
local skipped = 0  -- random cases too slow to hand to LuaJIT's matcher

local function pack(...)
  return { n = select("#", ...), ... }
end

local function show(t)
  local out = {}
  for i = 1, t.n do
    local v = t[i]
    out[i] = type(v) == "string" and ("%q"):format(v) or tostring(v)
  end
  return "(" .. table.concat(out, ", ") .. ")"
end

local function equal(a, b)
  if a.n ~= b.n then return false end
  for i = 1, a.n do
    if type(a[i]) ~= type(b[i]) or a[i] ~= b[i] then return false end
  end
  return true
end

-- gmatch as a list: every iteration's values, then what ends it.
local function gmatch_all(gmatch, s, p)
  return pack(pcall(function()
    local out, it = {}, gmatch(s, p)
    for _ = 1, 200 do
      local r = pack(it())
      out[#out + 1] = show(r)
      if r.n == 0 or r[1] == nil then break end
    end
    return table.concat(out, " ")
  end))
end

-- Run name(...) on both libraries; returns nil when they agree, else a
-- description of the difference.
local function differ(name, ...)
  compared = compared + 1
  local a, b
  if name == "gmatch" then
    a, b = gmatch_all(real.gmatch, ...), gmatch_all(mine.gmatch, ...)
  else
    a, b = pack(pcall(real[name], ...)), pack(pcall(mine[name], ...))
  end
  if equal(a, b) then return nil end
  return ("%s%s\n    luajit %s\n    sluice %s"):format(name, show(pack(...)), show(a), show(b))
end

-- Collects differences; fails listing the first few.
local function differences()
  local list = {}
  return function(d)
    if d then list[#list + 1] = d end
  end, function()
    if #list > 0 then
      local head = {}
      for i = 1, math.min(#list, 8) do head[i] = list[i] end
      error(#list .. " differences:\n  " .. table.concat(head, "\n  "), 2)
    end
  end
end

local subjects = {
  "", "a", "aaa", "abc", "hello world", "  trim me  ", "THE (quick) fox",
  "x = 1, y = 22", "f(a(b)c)d", "[[x]]", "a.b-c+d*e?f", "100%", "a\0b\0c",
  "\0", "caf\195\169 \255\128", "aAbB09_-", "\t\n\r\v\f x", "^$^$", "]]-[[",
  "one two  three   ", "key=val;k2=v2", "((a)", "%d%a", "a,b,,c,",
}

local patterns = {
  -- literals and plain-looking ones
  "", "a", "abc", "o w", "x", "]", "a)", "a\0b", "\0", "\0b", "b\0",
  -- single classes and quantifiers
  ".", "..", "a*", "a+", "a-", "a?", ".-", ".*", ".+", "%a+", "%d+", "%s*",
  "%w+", "%p", "%u%l", "%x+", "%c", "%g+", "%z", "%Z+", "%A+", "%S+", "%W",
  "%D*", "%P+", "%L", "%U", "%X", "%C+", "%G", "%.", "%%", "%]", "%-",
  -- sets
  "[abc]", "[^abc]+", "[a-c]+", "[%d_]+", "[]]", "[^]]+", "[a-]", "[%a-]+",
  "[%%-a]+", "[b-%]]", "[a^]", "[z-a]", "[%w%s]+", "[%]%[]", "[\0]",
  "[-a]", "[a-c-e]", "[^%s]+", "[%z]", "[\128-\255]+",
  -- anchors
  "^", "$", "^$", "^a", "a$", "^a*$", "$a", "a$$", "^^", "^.-$", "a^",
  -- captures
  "(a)", "(a*)", "()", "()a()", "(.)(.)", "(%w+)=(%w+)", "((a)(b))",
  "(a)(b)?", "(.-)%s", "()(%a+)()", "(h)(e)(l)(l)(o)",
  -- back-references, balance, frontier
  "(a)%1", "(%a)%1", "(.)%1*", "()%1", "%b()", "%b[]", "%b((", "%bxy",
  "%f[%w]%w+", "%f[%W]", "%f[%a]", "%f[%z]", "%f[%Z]", "%f[^a]", "%f[]a]",
  -- errors, raised when the matcher reaches them
  "%", "a%", "[a", "[", "[^", "[]", "[^]", "[a%", "[%", "(a", "a)", "(()",
  "%1", "(a%1)", "(a)%2", "%0", "%b", "%ba", "%f", "%fa", "x[", "x%", "x%b",
  "x(", "a(", "(", ")", "%f[a", "[%]",
}

local inits = { false, 0, 1, 2, 3, -1, -2, -3, -100, 100, 2.7, -1.5, "2", 2 ^ 31,
  2 ^ 31 - 1, 2 ^ 32 + 2, -2 ^ 31, 1e10, 0 / 0, 1 / 0, -1 / 0 }

describe("pattern", function()
  teardown(function()
    io.stderr:write(("\npattern_spec: %d differential cases, %d random cases skipped as slow\n")
      :format(compared, skipped))
  end)

  describe("find", function()
    it("agrees with LuaJIT for every subject, pattern, init and plain flag", function()
      local add, check = differences()
      for _, s in ipairs(subjects) do
        for _, p in ipairs(patterns) do
          add(differ("find", s, p))
          for _, i in ipairs(inits) do
            if i then
              add(differ("find", s, p, i))
              add(differ("find", s, p, i, true))
            else
              add(differ("find", s, p, nil, 1))
            end
          end
        end
      end
      check()
    end)

    it("agrees with LuaJIT on every byte against every %x and [%x]", function()
      local add, check = differences()
      for e = 1, 255 do
        local cl = string.char(e)
        if not cl:find("[%dbf]") then
          for b = 0, 255 do
            local s = string.char(b)
            add(differ("find", s, "%" .. cl))
            add(differ("find", s, "[%" .. cl .. "]"))
          end
        end
      end
      check()
    end)

    it("agrees with LuaJIT on argument errors", function()
      local add, check = differences()
      add(differ("find", nil, "a"))
      add(differ("find", "a"))
      add(differ("find", "a", {}))
      add(differ("find", "a", "a", {}))
      add(differ("find", "a", "a", false))
      add(differ("find", 12345, 3))
      add(differ("find", "a.b", ".", 1, false))
      add(differ("find", "a.b", ".", 1, 0))
      check()
    end)
  end)

  describe("match", function()
    it("agrees with LuaJIT for every subject, pattern and init", function()
      local add, check = differences()
      for _, s in ipairs(subjects) do
        for _, p in ipairs(patterns) do
          add(differ("match", s, p))
          for _, i in ipairs(inits) do
            if i then add(differ("match", s, p, i)) end
          end
        end
      end
      add(differ("match", "a", "a", {}))
      add(differ("match", nil, "a"))
      check()
    end)
  end)

  describe("gmatch", function()
    it("agrees with LuaJIT, '^' being an ordinary byte and errors raised by the iterator", function()
      local add, check = differences()
      for _, s in ipairs(subjects) do
        for _, p in ipairs(patterns) do add(differ("gmatch", s, p)) end
      end
      add(differ("gmatch", "^a^a", "^a"))
      add(differ("gmatch", "abc", "()"))
      add(differ("gmatch", nil, "a"))
      add(differ("gmatch", "a"))
      check()
    end)

    it("returns nothing once exhausted, however often it is called", function()
      local it = mine.gmatch("ab", "%a")
      assert.are.equal("a", it())
      assert.are.equal("b", it())
      assert.are.equal(0, select("#", it()))
      assert.are.equal(0, select("#", it()))
    end)
  end)

  describe("gsub", function()
    local seen = {}
    local replacements = {
      "-", "", "<%0>", "%1", "%2", "[%1|%2]", "%%", "%", "x%", "%x", "%\0",
      "a\0b", 42, 1.5,
      { a = "A", b = 2, c = false, hello = "HI", ["1"] = "one", [1] = "pos" },
      { a = {} },
      setmetatable({}, { __index = function(_, k) return type(k) == "string" and k:upper() or nil end }),
      function(...) seen[#seen + 1] = show(pack(...)) return "<" .. select("#", ...) .. ">" end,
      function() return nil end,
      function() return false end,
      function(x) return x, "ignored" end,
      function() return true end,
      function(x) return tonumber(x) end,
    }
    local maxes = { false, 0, 1, 2, -1, 1.9, "1", 2 ^ 32 + 2, 1e15 + 7, 0 / 0 }

    it("agrees with LuaJIT for every replacement kind and count", function()
      local add, check = differences()
      for _, s in ipairs(subjects) do
        for _, p in ipairs(patterns) do
          for _, r in ipairs(replacements) do
            seen = {}
            local a = pack(pcall(real.gsub, s, p, r))
            local real_seen = table.concat(seen, ";")
            seen = {}
            local b = pack(pcall(mine.gsub, s, p, r))
            compared = compared + 1
            if not equal(a, b) or real_seen ~= table.concat(seen, ";") then
              add(("gsub(%q, %q, %s)\n    luajit %s %s\n    sluice %s %s"):format(
                s, p, tostring(r), show(a), real_seen, show(b), table.concat(seen, ";")))
            end
          end
          for _, n in ipairs(maxes) do
            if n then add(differ("gsub", s, p, "<%0>", n)) end
          end
        end
      end
      check()
    end)

    -- results past the C-stack array (1 KiB), past one copy piece (64 KiB)
    -- and doubling many times, with gsubs nested in a replacement function
    it("builds results of every size as LuaJIT does", function()
      local add, check = differences()
      local function same(what, f, ...)
        local args = pack(...)
        local ra, ma = pack(...), pack(...)
        if f then -- the replacement: a function of each library's own
          ra[ra.n + 1], ma[ma.n + 1], ra.n, ma.n = f[1], f[2], ra.n + 1, ma.n + 1
        end
        local a = pack(pcall(real.gsub, unpack(ra, 1, ra.n)))
        local b = pack(pcall(mine.gsub, unpack(ma, 1, ma.n)))
        assert(args.n >= 2 and a[1], what)
        if not equal(a, b) then
          add(("%s: luajit %s %s (%s bytes), sluice %s %s (%s bytes)"):format(what,
            tostring(a[1]), tostring(a[3]), #tostring(a[2]), tostring(b[1]), tostring(b[3]), #tostring(b[2])))
        end
      end
      local big = ("xy"):rep(40000)
      same("1023 bytes", nil, ("a"):rep(1023), "a", "b")
      same("2048 bytes", nil, ("a"):rep(1024), "a", "bc")
      same("captures", nil, ("a"):rep(3000), "(a)", "%1%1%0")
      same("long replacement, max 3", nil, ("ab"):rep(50000), "b", ("r"):rep(70000), 3)
      same("1 MiB replacement", nil, ("a"):rep(16), "a", ("r"):rep(1048576 + 7))
      same("table", nil, ("abc"):rep(200000), "%w", { a = "1", b = ("2"):rep(9) })
      same("swap", nil, big, "(x)(y)", "%2%1%%")
      same("zeros", nil, "x" .. ("\0"):rep(70000), "%z", "\0\0")
      same("nested", { function(c) return (real.gsub(big, "y", c)) end,
                       function(c) return (mine.gsub(big, "y", c)) end }, ("q"):rep(5), "q")
      check()
    end)

    -- LuaJIT's luaL_Buffer joined its pieces with copies of up to the whole
    -- result in one C step: 50-57 ms of CPU between two checks for this
    -- 64 MiB result when idle (0.1-0.2 ms now), and in the sandbox 30-140 ms
    -- against a 10 ms budget on a loaded VM. (Garbage collected first: the
    -- collector freeing a big string is one C step of its own.)
    it("asks the check between pieces while building a long result", function()
      collectgarbage()
      T.reset()
      local s = mine.gsub(("a"):rep(1024), "a", ("r"):rep(65536))
      local gap = T.max_gap()
      T.reset()
      assert.are.equal(1024 * 65536, #s)
      assert.is_true(gap < 0.02, ("%.1f ms of CPU between two checks"):format(gap * 1000))
    end)

    it("raises from the check while copying a long result, then works again", function()
      T.reset(3)
      local ok, err = pcall(mine.gsub, ("a"):rep(64), "a", ("r"):rep(1048576))
      assert.is_false(ok)
      assert.matches("pattern step budget exceeded", err)
      assert.are.equal(3, T.calls())
      T.reset()
      local s, n = mine.gsub(("a"):rep(64), "a", ("r"):rep(70000))
      assert.are.equal(64 * 70000, #s)
      assert.are.equal(64, n)
    end)

    it("agrees with LuaJIT on argument errors", function()
      local add, check = differences()
      add(differ("gsub", "a", "a"))
      add(differ("gsub", "a", "a", true))
      add(differ("gsub", "a", "a", nil))
      add(differ("gsub", "a", "a", true, {}))
      add(differ("gsub", "a", "a", "x", {}))
      add(differ("gsub", "a", "a", "x", "z"))
      add(differ("gsub", 123, 2, 4))
      add(differ("gsub", nil, "a", "b"))
      check()
    end)
  end)

  describe("errors", function()
    local cases = {
      { "find", "a", "%", "malformed pattern (ends with '%')" },
      { "find", "a", "[a", "malformed pattern (missing ']')" },
      { "find", "a", "[%", "malformed pattern (missing ']')" },
      { "find", "a", "(a%1)", "invalid capture index" },
      { "find", "a", "%0", "invalid capture index" },
      { "match", "a", "a)", "invalid pattern capture" },
      { "find", "a", "(()", "unfinished capture" },
      { "find", "a", "%fa", "missing '[' after '%f' in pattern" },
      { "find", "a", ("()"):rep(33), "too many captures" },
      { "find", "a", "%ba", "unbalanced pattern" },
      { "gsub", "a", "a", "%2", "invalid capture index" },
      { "gsub", "a", "(", "%1", "unfinished capture" },
      { "gsub", "a", "a", { a = {} }, "invalid replacement value (a table)" },
      { "gsub", "a", "a", function() return true end, "invalid replacement value (a boolean)" },
    }

    it("raises LuaJIT's message for each malformed pattern", function()
      for _, c in ipairs(cases) do
        local name, want = c[1], c[#c]
        local args = { unpack(c, 2, #c - 1) }
        local ok_real, err_real = pcall(real[name], unpack(args))
        local ok_mine, err_mine = pcall(mine[name], unpack(args))
        assert.is_false(ok_real)
        assert.is_false(ok_mine)
        assert.are.equal(want, err_real)
        assert.are.equal(err_real, err_mine)
      end
    end)

    it("prefixes the calling line as LuaJIT does", function()
      local function call(f, ...) local r = f(...) return r end -- one line: same location
      for _, c in ipairs(cases) do
        local args = { unpack(c, 2, #c - 1) }
        local _, err_real = pcall(call, real[c[1]], unpack(args))
        local _, err_mine = pcall(call, mine[c[1]], unpack(args))
        assert.matches("pattern_spec.lua:%d+: ", err_mine)
        assert.are.equal(err_real, err_mine)
      end
    end)

    it("raises only for the part of a pattern the matcher reaches", function()
      assert.is_nil(mine.match("abc", "x["))
      assert.is_nil(mine.match("abc", "d%b"))
      assert.are.equal("xaxbxcx", (mine.gsub("abc", "(", "x")))
    end)

    it("raises pattern too complex past the depth bound instead of overflowing the C stack", function()
      local ok, err = pcall(mine.find, ("a"):rep(400), ("a?"):rep(T.MAX_DEPTH + 1))
      assert.is_false(ok)
      assert.are.equal("pattern too complex", err)
      ok, err = pcall(mine.match, ("a"):rep(300), ("("):rep(32) .. ("a?"):rep(300))
      assert.are.equal("pattern too complex", err)
      -- just under the bound, the result is LuaJIT's
      assert.is_nil(differ("find", ("a"):rep(150), ("a?"):rep(T.MAX_DEPTH - 2)))
    end)
  end)

  describe("random", function()
    local atoms = {
      "a", "b", "c", " ", "(", ")", ".", "%a", "%d", "%s", "%w", "%p", "%A", "%S",
      "%x", "%z", "[abc]", "[^a]", "[a-c]", "[%d_]", "[]]", "%.", "%%", "%b()",
      "%f[%w]", "%f[%W]", "()", "%1", "%2", "^", "$", "[", "%", "\0", "[^%s]", "-",
    }
    local quantifiers = { "", "", "", "*", "+", "-", "?" }
    local alphabet = "aabbc  ()1_.%\0]-^$x\200"

    local function random_pattern()
      local out = {}
      if math.random(4) == 1 then out[1] = "^" end
      for _ = 1, math.random(0, 6) do
        out[#out + 1] = atoms[math.random(#atoms)] .. quantifiers[math.random(#quantifiers)]
      end
      if math.random(4) == 1 then out[#out + 1] = "$" end
      return table.concat(out)
    end

    local function random_bytes(max)
      local out = {}
      for i = 1, math.random(0, max) do
        local k = math.random(#alphabet)
        out[i] = alphabet:sub(k, k)
      end
      return table.concat(out)
    end

    -- Hand a case to LuaJIT only when ours finished in few steps: LuaJIT's
    -- matcher cannot be stopped, and does about the work ours does.
    local function cheap(name, s, p, x)
      T.reset(50)
      local ok, err = pcall(name == "gmatch" and function()
        local n = 0
        for _ in mine.gmatch(s, p) do
          n = n + 1
          if n > 100 then error("budget: gmatch runs on") end
        end
      end or mine[name], s, p, x)
      T.reset()
      return ok or not tostring(err):find("budget", 1, true)
    end

    it("agrees with LuaJIT on 80000 generated cases (seeded)", function()
      math.randomseed(20240601)
      local add, check = differences()
      for _ = 1, 20000 do
        local s, p = random_bytes(14), math.random(5) == 1 and random_bytes(6) or random_pattern()
        local init = math.random(-16, 16)
        for _, name in ipairs({ "find", "match", "gmatch", "gsub" }) do
          local x = name == "gsub" and "<%0%1>" or init
          if cheap(name, s, p, x) then
            if name == "gmatch" then x = nil end
            add(differ(name, s, p, x))
          else
            skipped = skipped + 1
          end
        end
      end
      check()
    end)
  end)

  describe("budget", function()
    local bomb = ("a"):rep(5000)

    it("calls check every CHECK_STEPS steps, so a check that raises stops a pattern bomb", function()
      for _, name in ipairs({ "find", "match", "gsub" }) do
        T.reset(20)
        local t0 = os.clock()
        local ok, err = pcall(mine[name], bomb, ".-.-.-.-b", name == "gsub" and "x" or nil)
        assert.is_false(ok)
        assert.matches("pattern step budget exceeded", err)
        assert.are.equal(20, T.calls())
        assert.is_true(os.clock() - t0 < 0.5)
      end
      T.reset(20)
      local ok, err = pcall(function() for _ in mine.gmatch(bomb, ".-.-.-.-b") do end end)
      assert.is_false(ok)
      assert.matches("pattern step budget exceeded", err)
      T.reset()
    end)

    it("stops a bomb at a 10 ms deadline", function()
      T.reset(0, 0.010)
      local t0 = os.clock()
      local ok, err = pcall(mine.find, bomb, ".-.-.-.-b")
      local elapsed = os.clock() - t0
      T.reset()
      assert.is_false(ok)
      assert.matches("pattern deadline exceeded", err)
      assert.is_true(elapsed < 0.05, "took " .. elapsed .. " s")
    end)

    it("counts backreferences, %b and sets, not only single classes", function()
      local cases = {
        { ("a"):rep(3000), "(a*)%1%1b" },
        { ("("):rep(3000), "%b()x" },
        { ("a"):rep(3000), "[" .. ("%d"):rep(500) .. "a]-[" .. ("%d"):rep(500) .. "a]-b" },
      }
      for _, c in ipairs(cases) do
        T.reset(10)
        local t0 = os.clock()
        local ok, err = pcall(mine.find, c[1], c[2])
        assert.is_false(ok, c[2])
        assert.matches("budget", err)
        assert.is_true(os.clock() - t0 < 0.2)
      end
      T.reset()
    end)

    it("does not call check for short work", function()
      T.reset(1)
      assert.are.equal(7, (mine.find("hello world", "world")))
      assert.are.equal(0, T.calls())
    end)

    it("works without a check", function()
      assert.are.equal("b", unchecked.match("abc", "%f[b]."))
      assert.are.same({ "c", 1 }, { unchecked.gsub("abc", "^ab", "") })
    end)
  end)

  describe("install", function()
    it("serves method calls through the string metatable", function()
      local saved = {}
      for k, f in pairs(mine) do saved[k], string[k] = string[k], f end
      T.reset(1)
      local ok, a, b = pcall(function() return ("hello"):find("l+") end)
      local ok2, err = pcall(function() return (("a"):rep(3000)):find(".-.-.-b") end)
      for k, f in pairs(saved) do string[k] = f end
      T.reset()
      assert.is_true(ok)
      assert.are.same({ 3, 4 }, { a, b })
      assert.is_false(ok2)
      assert.matches("budget", err)
    end)
  end)
end)
