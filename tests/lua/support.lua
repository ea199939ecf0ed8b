-- support.lua - shared helpers for the sandbox specs: rule files written to
-- a temp dir from inline source, loaded with sluice.testing, and msgpack
-- bytes from hex. Not a spec itself (no _spec suffix).

assert(jit, "the sandbox specs need LuaJIT: run busted from the repo root")

local build = os.getenv("BUILD")
if build then
  package.cpath = build .. "/?.so;" .. package.cpath
end

local testing = require("sluice.testing")

local M = { testing = testing }

-- mktemp: a name of its own per process (os.time() and an unseeded
-- math.random gave runs started in the same second one folder, and one's
-- cleanup removed the other's rules)
local mk = assert(io.popen("mktemp -d " .. (os.getenv("TMPDIR") or "/tmp") ..
  "/sluice-spec-XXXXXXXX"))
local base = assert(mk:read("*l"), "mktemp -d failed")
mk:close()
assert(os.execute("mkdir -p " .. base .. "/lib") == 0)
M.dir = base

local count = 0

-- Write name (relative to the temp dir) with src; returns the path.
function M.write(name, src)
  local path = base .. "/" .. name
  local f = io.open(path, "wb")
  if not f then -- a new subdir, or a teardown removed the dir
    os.execute("mkdir -p " .. (path:match("^(.*)/") or base) .. " " .. base .. "/lib")
    f = assert(io.open(path, "wb"))
  end
  f:write(src)
  f:close()
  return path
end

-- SLUICE_SPEC_JIT=1 loads every rule with rules.jit on (make test runs
-- the sandbox specs both ways); an explicit opts.jit wins.
local function with_jit(opts)
  if os.getenv("SLUICE_SPEC_JIT") ~= "1" then return opts end
  local o = { jit = true }
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end
M.with_jit = with_jit

-- Load src as a new rule file; returns the rule and its path.
function M.rule(src, opts)
  count = count + 1
  local path = M.write(("r%d.lua"):format(count), src)
  return testing.load(path, with_jit(opts)), path
end

-- A rule whose on_event(ev) body is body; returns the rule and its path.
function M.on_event(body, opts)
  return M.rule("return { on_event = function(ev)\n" .. body .. "\nend }", opts)
end

-- The error raised by loading src as a rule file, and the file's path.
function M.load_error(src, opts)
  count = count + 1
  local path = M.write(("r%d.lua"):format(count), src)
  local ok, err = pcall(testing.load, path, with_jit(opts))
  assert(not ok, "the rule loaded, but should not have")
  return err, path
end

function M.cleanup()
  os.execute("rm -rf " .. base)
end

-- Bytes from hex digits; spaces are ignored.
function M.hex(s)
  return (s:gsub("%s", ""):gsub("..", function(h)
    return string.char(tonumber(h, 16))
  end))
end

function M.tohex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- Big-endian unsigned of w bytes of raw at i.
local function be(raw, i, w)
  local v = 0
  for j = i, i + w - 1 do v = v * 256 + raw:byte(j) end
  return v
end

local FIXED = { [0xca] = 4, [0xcb] = 8, [0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8, [0xd0] = 1,
  [0xd1] = 2, [0xd2] = 4, [0xd3] = 8, [0xd4] = 2, [0xd5] = 3, [0xd6] = 5, [0xd7] = 9, [0xd8] = 17 }

-- The index past the msgpack value of raw at i (written apart from the
-- engine's codec, so the specs do not check its bytes with itself).
function M.msgpack_skip(raw, i)
  local c = raw:byte(i)
  if c < 0x80 or c >= 0xe0 or c == 0xc0 or c == 0xc2 or c == 0xc3 then return i + 1 end
  if c >= 0xa0 and c <= 0xbf then return i + 1 + c - 0xa0 end
  if FIXED[c] then return i + 1 + FIXED[c] end
  if c == 0xc4 or c == 0xd9 then return i + 2 + be(raw, i + 1, 1) end
  if c == 0xc5 or c == 0xda then return i + 3 + be(raw, i + 1, 2) end
  if c == 0xc6 or c == 0xdb then return i + 5 + be(raw, i + 1, 4) end
  if c == 0xc7 then return i + 3 + be(raw, i + 1, 1) end
  if c == 0xc8 then return i + 4 + be(raw, i + 1, 2) end
  if c == 0xc9 then return i + 6 + be(raw, i + 1, 4) end
  local n, j = 0, i + 1
  if c >= 0x80 and c <= 0x8f then n = 2 * (c - 0x80)
  elseif c >= 0x90 and c <= 0x9f then n = c - 0x90
  elseif c == 0xdc then n, j = be(raw, i + 1, 2), i + 3
  elseif c == 0xdd then n, j = be(raw, i + 1, 4), i + 5
  elseif c == 0xde then n, j = 2 * be(raw, i + 1, 2), i + 3
  elseif c == 0xdf then n, j = 2 * be(raw, i + 1, 4), i + 5
  else error(("no such value here: %02x"):format(c)) end
  for _ = 1, n do j = M.msgpack_skip(raw, j) end
  return j
end

-- A map's header and its pairs in hex, the pairs sorted (keys a rule
-- added may come in any order); anything but a map: its hex.
function M.map_pairs(raw)
  local c, n, i = raw:byte(1), 0, 2
  if c == 0xde then n, i = be(raw, 2, 2), 4
  elseif c == 0xdf then n, i = be(raw, 2, 4), 6
  elseif c >= 0x80 and c <= 0x8f then n = c - 0x80
  else return M.tohex(raw) end
  local head, out = M.tohex(raw:sub(1, i - 1)), {}
  for _ = 1, n do
    local j = M.msgpack_skip(raw, M.msgpack_skip(raw, i))
    out[#out + 1] = M.tohex(raw:sub(i, j - 1))
    i = j
  end
  if i ~= #raw + 1 then
    error(("the map's bytes do not end with its last pair (%d of %d)"):format(i - 1, #raw), 2)
  end
  table.sort(out)
  return head .. " " .. table.concat(out, ",")
end

-- Assert that hay contains needle as plain text.
function M.has(hay, needle)
  if type(hay) ~= "string" or not hay:find(needle, 1, true) then
    error(("expected %q in %s"):format(needle,
      type(hay) == "string" and ("%q"):format(hay) or tostring(hay)), 2)
  end
end

return M
