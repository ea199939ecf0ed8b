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

local base = ("%s/sluice-spec-%d-%d"):format(os.getenv("TMPDIR") or "/tmp",
  os.time(), math.random(1, 1e9))
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

-- Assert that hay contains needle as plain text.
function M.has(hay, needle)
  if type(hay) ~= "string" or not hay:find(needle, 1, true) then
    error(("expected %q in %s"):format(needle,
      type(hay) == "string" and ("%q"):format(hay) or tostring(hay)), 2)
  end
end

return M
