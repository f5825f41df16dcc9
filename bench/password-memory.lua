-- wrk script for bench/password-memory.sh. Arguments after `--`:
--   login <csrf-token>                     POST /login with an unknown username and a wrong password
--   grant <basic-credentials> <user> <pw>   POST /oauth2/token, grant_type=password
-- Counts answers by status (200/400/401/503/other) across threads and prints them as
-- `statuses 200=… 400=… 401=… 503=… other=… duration_s=…` for the script to read.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

function init(args)
  mode = args[1]
  counts = { ["200"] = 0, ["400"] = 0, ["401"] = 0, ["503"] = 0, other = 0 }
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  if mode == "login" then
    csrf = args[2]
    wrk.method = "POST"
    wrk.path = "/login"
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
    wrk.headers["Cookie"] = "tessera_csrf=" .. csrf
  elseif mode == "grant" then
    wrk.method = "POST"
    wrk.path = "/oauth2/token"
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
    wrk.headers["Authorization"] = "Basic " .. args[2]
    wrk.body = "grant_type=password&username=" .. urlencode(args[3]) .. "&password=" .. urlencode(args[4])
  end
end

function request()
  -- A different source each time (RFC 2544's benchmark range 198.18.0.0/15), as from many
  -- machines: the per-source throttle is a separate bound, and this measures the pool behind it.
  wrk.headers["X-Forwarded-For"] = string.format("198.%d.%d.%d", math.random(18, 19), math.random(0, 255),
    math.random(1, 254))
  if mode == "login" then
    -- A new unknown username each time: every attempt costs the dummy Argon2 check and no
    -- account's lockout counter short-cuts it.
    local body = "csrf_token=" .. csrf .. "&username=nobody-" .. math.random(1, 1000000000)
      .. "&password=wrong-" .. math.random(1, 1000000000)
      .. "&response_type=code&client_id=bench&redirect_uri=" .. urlencode("http://127.0.0.1/cb")
    return wrk.format(nil, nil, nil, body)
  end
  return wrk.format()
end

function response(status, headers, body)
  local key = tostring(status)
  if counts[key] ~= nil then
    counts[key] = counts[key] + 1
  else
    counts.other = counts.other + 1
  end
end

function done(summary, latency, requests)
  local total = { ["200"] = 0, ["400"] = 0, ["401"] = 0, ["503"] = 0, other = 0 }
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, v in pairs(c) do total[k] = total[k] + v end
  end
  io.write(string.format("statuses 200=%d 400=%d 401=%d 503=%d other=%d duration_s=%.3f errors=%d\n",
    total["200"], total["400"], total["401"], total["503"], total.other, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
