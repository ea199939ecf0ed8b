-- sluice.testing - run a rule file in the engine's own sandbox from busted.
--
--   local testing = require("sluice.testing")
--   local rule = testing.load("orders.lua", { cpu_budget_ms = 10 })
--   local res = rule:run({ topic = "orders.new", payload = { amount = 5 } })
--
-- The sandbox is the C code the engine runs (build/sluice_core.so, built by
-- `make all`), not a Lua imitation of it. Run specs with
-- `busted` from the repository root (.busted selects luajit and the paths).
--
-- load(path [, opts]) -> rule. A relative path is taken from the folder of
-- the spec calling load (not the current folder), so `sluice test` runs a
-- spec from anywhere. opts: cpu_budget_ms (default 10), memory_mb
-- (default 64), scripts_dir (default: the scripts/ folder holding this
-- file), lib_dir (default: lib/ beside the rule), jit (rules.jit; default
-- false). A rule that fails to load raises "path:line: message".
--
-- Events are tables shaped like the wire event: topic (required), id, key,
-- time (ms since the epoch, a float) or time_ns (exact ns, a decimal
-- string), headers (table of strings), payload
-- (any value; testing.array/map/bin/float/ext make exact types), or
-- payload_raw (msgpack bytes, sent as they are), and schema_version
-- ("2", "2.1": the version ingest would have checked it against, what the
-- rule reads as ev.schema_version; nil by default).
--
-- rule:run(event) -> result, a table with exactly these fields:
--   verdict     what on_event decided, always set:
--               "pass"  returned nil: no decision, the routes decide
--               "route" returned output name(s): see routes
--               "drop"  returned sluice.drop(reason): see dropped
--               "error" raised, or ran out of CPU or memory: see error
--   routes      list of output names, in the order returned; always a
--               table: {} (empty, never nil) unless verdict is "route"
--   dropped     the drop reason (a string) when verdict is "drop", else nil
--   error       "path:line: message" when verdict is "error", else nil
--   error_kind  "runtime" | "cpu" | "memory" when verdict is "error"
--   where, traceback   for errors: the rule's file:line and the Lua trace
--   event       the event after the rule (table form, plus payload_raw)
--   changed     true when the rule changed topic, key, headers or payload
--   emitted     list of { output = name, event = table } from sluice.emit
--   logs        list of { level = "info", msg = ..., fields = table|nil }
--   elapsed_ms  wall-clock time of the call into the sandbox, ms (float)
--   cpu_ms      CPU time of that call, ms (float): what cpu_budget_ms counts
-- (the on_error policy of the rule applies in the engine, not here: a
-- failing rule shows verdict "error" whatever its on_error says)
-- rule:advance(ms) -> { emitted = ..., logs = ... }: moves the rule's clock
--   (sluice.now, sluice.every, rate_limit, seen) and fires due timers.
-- rule:snapshot() -> msgpack bytes or nil; rule:restore(bytes) -> boolean
-- rule:stop() -> { emitted = ..., logs = ... }, or nil without on_stop:
--   runs on_stop() as the engine does at shutdown
-- rule:counters() -> { ["name{labels}"] = value }
-- rule:matches(topic) -> boolean; rule:info() -> path, hash, memory,
--   rebuilds; rule:close()
--
-- encode(v) / decode(bytes) / decode_json(s) convert with the engine's
-- codec; kind(v [, key]) names the msgpack type a value encodes as.
-- validate(schema_path, payload) / validate_event(schema_path, event) ->
--   true, or false, path, expected: the engine's payload-contract check
--   (the schemas config key) on a value or an event's payload.
-- contracts(config_path) -> c; c:check(event) -> nil (no contract), or
--   ok, contract, version[, path, expected]: the config's contracts, as
--   ingest applies them (version header or field, default, newest).

local ok, core = pcall(require, "sluice_core")
if not ok then
  error("module 'sluice_core' not found: build it with `make all` (it is "
    .. "build/sluice_core.so) and run the specs with `sluice test DIR` or "
    .. "`busted` from the repository root\n" .. tostring(core), 0)
end

local M = {
  array = core.array,
  map = core.map,
  bin = core.bin,
  float = core.float,
  ext = core.ext,
  kind = core.kind,
  encode = core.encode,
  decode = core.decode,
  decode_json = core.decode_json,
}

local function here()
  local src = debug.getinfo(1, "S").source
  if src:sub(1, 1) ~= "@" then
    return nil
  end
  local dir = src:sub(2):match("^(.*)/sluice/testing%.lua$")
  return dir or "scripts"
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local SELF = debug.getinfo(1, "S").source

-- The folder of the spec that called load: the first *_spec.lua on the
-- stack, else the calling file; nil when neither is a file.
local function spec_dir()
  local caller
  for level = 3, 30 do
    local info = debug.getinfo(level, "S")
    if info == nil then
      break
    end
    local src = info.source
    if src:sub(1, 1) == "@" and src ~= SELF then
      caller = caller or src:sub(2)
      if src:match("_spec%.lua$") then
        return dirname(src:sub(2))
      end
    end
  end
  return caller and dirname(caller)
end

-- A relative path against the spec's folder, not the current one:
-- `sluice test` runs from anywhere, and a spec travels with its files.
local function from_spec(path)
  if path:sub(1, 1) ~= "/" then
    local dir = spec_dir()
    if dir then
      return dir .. "/" .. path
    end
  end
  return path
end

-- validate(schema_path, payload) -> true, or false, path, expected: does
-- the payload (any value; testing.array/map/... for exact types) fit the
-- schema file, as the engine checks it at ingest? path is the JSON path
-- of the first violation ("/items/0/sku", "" for the root), expected what
-- the schema wanted there. A schema that does not compile raises.
function M.validate(path, payload)
  assert(type(path) == "string", "testing.validate: a schema path expected")
  return core.validate(from_spec(path), core.encode(payload))
end

-- validate_event(schema_path, event) -> the same for an event table (as
-- rule:run takes, or result.event): its payload, or payload_raw.
function M.validate_event(path, event)
  assert(type(event) == "table", "testing.validate_event: an event expected")
  local raw = event.payload_raw or core.encode(event.payload)
  return core.validate(from_spec(path), raw)
end

-- contracts(config_path) -> c: the schemas of a config file, compiled as
-- the engine compiles them (the rest of the config is not checked). A
-- config whose schemas are wrong raises the config's errors.
-- c:check(event) -> the engine's verdict at ingest on an event table:
--   nil when no contract covers its topic; else ok, contract (the topics
--   glob), version (as written; nil when the event names one the contract
--   lacks) and, when not ok, path and expected.
local Contracts = {}
Contracts.__index = Contracts

function Contracts:check(event)
  assert(type(event) == "table" and type(event.topic) == "string",
    "contracts:check: an event with a topic expected")
  local headers = event.headers and next(event.headers) ~= nil
    and core.encode(core.map(event.headers)) or nil
  local payload = event.payload_raw
  if payload == nil and event.payload ~= nil then
    payload = core.encode(event.payload)
  end
  return self.c:check(event.topic, headers, payload)
end

function M.contracts(path)
  assert(type(path) == "string", "testing.contracts: a config path expected")
  return setmetatable({ c = core.contracts(from_spec(path)) }, Contracts)
end

function M.load(path, opts)
  assert(type(path) == "string", "testing.load: a rule path expected")
  path = from_spec(path)
  opts = opts or {}
  local o = {
    cpu_budget_ms = opts.cpu_budget_ms,
    memory_mb = opts.memory_mb,
    jit = opts.jit,
    scripts_dir = opts.scripts_dir or here(),
    lib_dir = opts.lib_dir or (dirname(path) .. "/lib"),
  }
  return core.load(path, o)
end

return M
