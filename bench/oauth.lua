-- wrk script for bench/run: one HTTP case of the facade, every answer checked (status and body).
-- Arguments after `--`:  <case> <threads> <basic-file> [<data-file>]
--   <basic-file>  holds the client's HTTP Basic credential (base64 of id:secret)
--   <data-file>   what the case needs, one item a line:
--     healthz            (none)                     GET /healthz, {"status":"ok"}
--     client_credentials (none)                     POST /oauth2/token, a Bearer JWT of scope api
--     password           "username" then "password" POST /oauth2/token grant_type=password
--     refresh            refresh tokens             each presented once, the rotated one fed back
--     code               "code verifier"            each exchanged once (authorization_code + PKCE)
--     device             approved device codes      each polled once, must give tokens
--     introspect         access tokens              POST /oauth2/introspect, "active":true; one
--                                                   line is the hot token, many lines are cycled
--     revoke             access tokens              POST /oauth2/revoke, each once, 200 and no body
--     userinfo           one access token (openid)  GET /userinfo, claims with a "sub"
-- Single-use items are split between the threads (line i goes to thread i mod threads); a thread
-- whose items run out stops. At the end prints one line for bench/run:
--   RESULT {"ok":…,"errors":…,"filler":…,"elapsed_s":…,"rps":…,"p50_ms":…,"p99_ms":…,"exhausted":…}
-- where elapsed_s runs from the first request to the last checked answer (so a case whose items
-- ran out is rated over the time it took) and rps counts good answers. The first bad answers'
-- statuses and bodies' first bytes go to stderr (no credentials are in them).

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC: one clock for every thread
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function urlencode(s)
  -- Tokens are mostly unreserved characters already: no copy for them.
  if not s:find("[^%w%-%._~]") then return s end
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local function read_lines(path)
  local lines = {}
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if line ~= "" then table.insert(lines, line) end
  end
  f:close()
  return lines
end

local mode, items, cursor, stack, hot, user, pass, verifying, static, healthz_request
-- wrk.format uses the headers it is given instead of wrk.headers: each request names all of its own.
local form = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local plain = {}
ok, errors, filler, first_at, last_at, exhausted, shown = 0, 0, 0, 0, 0, 0, 0

local function token_request(body)
  return wrk.format("POST", "/oauth2/token", form, body)
end

local function introspect_request(token)
  return wrk.format("POST", "/oauth2/introspect", form, "token=" .. urlencode(token))
end

function init(args)
  mode = args[1]
  local nthreads = tonumber(args[2])
  form["Authorization"] = "Basic " .. read_lines(args[3])[1]
  local all = args[4] and read_lines(args[4]) or {}
  -- This thread's share of the single-use items.
  items = {}
  for i, line in ipairs(all) do
    if (i - 1) % nthreads == tid then table.insert(items, line) end
  end
  cursor = 0
  -- wrk calls the first thread's request() once before the run, to check what it returns; that
  -- call must not use up an item.
  verifying = tid == 0
  if mode == "password" then
    user, pass = all[1], all[2]
  elseif mode == "introspect" then
    if #all == 1 then hot = all[1] end
    items = all
    cursor = tid * 997
  elseif mode == "userinfo" then
    plain["Authorization"] = "Bearer " .. all[1]
  elseif mode == "refresh" then
    stack = items
  end
  -- The requests that never change, formatted once.
  healthz_request = wrk.format("GET", "/healthz", {}, nil)
  if mode == "healthz" then
    static = healthz_request
  elseif mode == "client_credentials" then
    static = token_request("grant_type=client_credentials&scope=api")
  elseif mode == "password" then
    static = token_request("grant_type=password&scope=api&username=" .. urlencode(user) .. "&password=" .. urlencode(pass))
  elseif mode == "introspect" and hot ~= nil then
    static = introspect_request(hot)
  elseif mode == "userinfo" then
    static = wrk.format("GET", "/userinfo", plain, nil)
  end
end

local function take()
  cursor = cursor + 1
  return items[cursor]
end

-- Sent when this thread has nothing left to send: cheap, recognised by its answer, not counted.
local function filler_request()
  return healthz_request
end

local function out_of_items()
  if exhausted == 0 then
    exhausted = 1
    wrk.thread:stop()
  end
  return filler_request()
end

function request()
  if verifying then
    verifying = false
    return filler_request()
  end
  if first_at == 0 then first_at = now() end
  if static ~= nil then
    return static
  elseif mode == "refresh" then
    -- Several connections share this thread: any chain whose last answer came back is free.
    local token = table.remove(stack)
    if token == nil then return filler_request() end
    return token_request("grant_type=refresh_token&refresh_token=" .. urlencode(token))
  elseif mode == "code" then
    local item = take()
    if item == nil then return out_of_items() end
    local code, verifier = item:match("^(%S+) (%S+)$")
    return token_request("grant_type=authorization_code&code=" .. urlencode(code) .. "&code_verifier="
      .. urlencode(verifier) .. "&redirect_uri=" .. urlencode("http://127.0.0.1/cb"))
  elseif mode == "device" then
    local item = take()
    if item == nil then return out_of_items() end
    return token_request("grant_type=urn:ietf:params:oauth:grant-type:device_code&device_code=" .. urlencode(item))
  elseif mode == "introspect" then
    cursor = cursor % #items + 1
    return introspect_request(items[cursor])
  elseif mode == "revoke" then
    local item = take()
    if item == nil then return out_of_items() end
    return wrk.format("POST", "/oauth2/revoke", form, "token=" .. urlencode(item) .. "&token_type_hint=access_token")
  end
  error("unknown case " .. tostring(mode))
end

-- The checks run once an answer in this process, which shares the cores with the server: they
-- look for the compact form the server writes with plain searches (a pattern tried at every
-- offset of a 900-byte answer cost more than the rest of the generator), and fall back to a
-- pattern allowing whitespace.
local compact = {}
local function field(body, name)
  local key = compact[name]
  if key == nil then
    key = '"' .. name .. '":"'
    compact[name] = key
  end
  local _, open = body:find(key, 1, true)
  if open then
    local close = body:find('"', open + 1, true)
    return close and body:sub(open + 1, close - 1)
  end
  return body:match('"' .. name .. '"%s*:%s*"([^"]*)"')
end

-- Whether `body` holds `literal` followed by what `after` (anchored) matches, or else matches
-- `pattern` (the same with whitespace allowed).
local function has(body, literal, after, pattern)
  local _, e = body:find(literal, 1, true)
  if e and (after == nil or body:find(after, e + 1)) then return true end
  return body:match(pattern) ~= nil
end

-- Three non-empty base64url segments: one pass over the bytes, which LuaJIT compiles (a
-- character-class pattern over a 600-byte token cost ten times as much).
local base64url = ffi.new("uint8_t[256]")
for c = 0, 255 do
  local ch = string.char(c)
  if ch:match("[%w%-_]") then base64url[c] = 1 end
end
local DOT = string.byte(".")
local function is_jwt(s)
  if s == nil then return false end
  local p, n = ffi.cast("const uint8_t *", s), #s
  local dots, last_dot = 0, -1
  for i = 0, n - 1 do
    local c = p[i]
    if c == DOT then
      if i == last_dot + 1 then return false end -- an empty segment
      dots, last_dot = dots + 1, i
    elseif base64url[c] == 0 then
      return false
    end
  end
  return dots == 2 and last_dot < n - 1
end

-- A token answer (RFC 6749 §5.1): a Bearer JWT with a lifetime, and a refresh token if asked.
local function good_token(status, body, want_refresh)
  if status ~= 200 or not is_jwt(field(body, "access_token")) or field(body, "token_type") ~= "Bearer" then
    return false
  end
  if not has(body, '"expires_in":', "^[1-9]", '"expires_in"%s*:%s*[1-9]') or field(body, "scope") ~= "api" then
    return false
  end
  if want_refresh then
    local r = field(body, "refresh_token")
    return r ~= nil and #r >= 20
  end
  return true
end

local function check(status, body)
  if mode == "healthz" then
    return status == 200 and has(body, '"status":"ok"', nil, '"status"%s*:%s*"ok"')
  elseif mode == "client_credentials" or mode == "password" then
    return good_token(status, body, false)
  elseif mode == "refresh" then
    if not good_token(status, body, true) then return false end
    table.insert(stack, field(body, "refresh_token"))
    return true
  elseif mode == "code" or mode == "device" then
    return good_token(status, body, true)
  elseif mode == "introspect" then
    return status == 200 and has(body, '"active":true', nil, '"active"%s*:%s*true')
  elseif mode == "revoke" then
    return status == 200 and #body == 0
  elseif mode == "userinfo" then
    local sub = field(body, "sub")
    return status == 200 and sub ~= nil and #sub > 0
  end
  return false
end

function response(status, headers, body)
  if mode ~= "healthz" and status == 200 and body:match('^{"status":"ok"}$') then
    filler = filler + 1
    return
  end
  if check(status, body) then
    ok = ok + 1
  else
    errors = errors + 1
    if shown < 3 then
      shown = shown + 1
      io.stderr:write(string.format("  bad answer (%s): %d %s\n", mode, status, body:sub(1, 160)))
    end
  end
  last_at = now()
end

function done(summary, latency, requests)
  local total = { ok = 0, errors = 0, filler = 0, exhausted = 0 }
  local first, last = math.huge, 0
  for _, t in ipairs(threads) do
    for k, _ in pairs(total) do total[k] = total[k] + t:get(k) end
    local f, l = t:get("first_at"), t:get("last_at")
    if f > 0 and f < first then first = f end
    if l > last then last = l end
  end
  local elapsed = last - first
  if elapsed <= 0 then elapsed = summary.duration / 1e6 end
  local transport = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    'RESULT {"ok":%d,"errors":%d,"filler":%d,"transport_errors":%d,"elapsed_s":%.3f,"rps":%.1f,' ..
    '"p50_ms":%.3f,"p99_ms":%.3f,"exhausted":%s}\n',
    total.ok, total.errors + transport, total.filler, transport, elapsed, total.ok / elapsed,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, total.exhausted > 0 and "true" or "false"))
end
