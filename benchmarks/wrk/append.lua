-- wrk script: POST /api/v1/streams/{id}/events, the sidecar's REST append.
-- Arguments (after --): distribution (uniform|zipf|hot) events-per-request expected(0|1) seed prefix payload-json
-- "expected" tracks the stream's version (hot stream: one shared value per wrk thread) and sends
-- expected_version; 409 answers are counted as conflicts and teach the current version.
-- K1S0_WRK_TARGETS spreads the threads over several sidecars (see setup()).
-- done() prints one line "BENCHJSON {...}" with percentiles (ms) and per-outcome counts.

local threads = {}
local next_id = 0

-- K1S0_WRK_TARGETS="host:port,host:port,..." (the fleet cases): thread i connects to target
-- ((i - 1) mod #targets) + 1 instead of the URL's address, so one wrk spreads its threads, and the
-- connections of each, evenly over several sidecars and reports one latency distribution.
local targets = {}
for hostport in string.gmatch(os.getenv("K1S0_WRK_TARGETS") or "", "[^,]+") do
  local host, port = string.match(hostport, "^(.+):(%d+)$")
  table.insert(targets, wrk.lookup(host, port)[1])
end

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  if #targets > 0 then thread.addr = targets[((next_id - 1) % #targets) + 1] end
  table.insert(threads, thread)
end

local dist, per, expected, prefix, events_json
local cdf = {}
local zipf_n, zipf_s = 10000, 1.1
local uniform_n = 100000
local known = 0
ok, conflicts, failures = 0, 0, 0
counted = true

function init(args)
  dist = args[1] or "uniform"
  per = tonumber(args[2] or "1")
  expected = (args[3] == "1")
  local seed = tonumber(args[4] or "42")
  prefix = args[5] or "rest"
  local payload = args[6] or '{"pad":"x"}'
  math.randomseed(seed * 1000 + (tid or 0))
  local one = '{"event_type":"BenchEvent","payload":' .. payload .. '}'
  local parts = {}
  for i = 1, per do parts[i] = one end
  events_json = '{"events":[' .. table.concat(parts, ",") .. ']'
  if dist == "zipf" then
    local total, acc = 0, 0
    for k = 1, zipf_n do total = total + 1 / (k ^ zipf_s) end
    for k = 1, zipf_n do acc = acc + (1 / (k ^ zipf_s)) / total; cdf[k] = acc end
  end
  wrk.headers["Content-Type"] = "application/json"
  if not expected then
    -- only the expected_version mode reads answers; without response() wrk keeps bodies out of Lua
    response = nil
    counted = false
  end
end

local function zipf_index()
  local u = math.random()
  local lo, hi = 1, zipf_n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo - 1
end

local function stream()
  if dist == "uniform" then return prefix .. "-u" .. math.random(0, uniform_n - 1) end
  if dist == "zipf" then return prefix .. "-z" .. zipf_index() end
  return prefix .. "-hot"
end

function request()
  local body
  if expected then
    body = events_json .. ',"expected_version":' .. known .. '}'
  else
    body = events_json .. '}'
  end
  return wrk.format("POST", "/api/v1/streams/" .. stream() .. "/events", nil, body)
end

function response(status, headers, body)
  if status == 201 then
    ok = ok + 1
    if expected then
      local v = string.match(body, '"current_version":(%d+)}$')
      if v then known = tonumber(v) end
    end
  elseif status == 409 then
    conflicts = conflicts + 1
    local v = string.match(body, '"actual_version","message":"(%d+)"')
    if v then known = tonumber(v) end
  else
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  local o, c, f = 0, 0, 0
  local e = summary.errors
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); c = c + t:get("conflicts"); f = f + t:get("failures")
  end
  if not threads[1] or not threads[1]:get("counted") then
    o, c, f = summary.requests - e.status, 0, e.status
  end
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"ok":%d,"conflicts":%d,"failures":%d,' ..
    '"socket_errors":%d,"p50_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration, o, c, f, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
