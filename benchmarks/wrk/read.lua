-- wrk script: GET pages of one stream (/api/v1/streams/{id}/events?page=&page_size=) or of all
-- events by sequence (/api/v1/events?after_sequence=&limit=), cycling through the range.
-- Arguments (after --): mode (stream|all) stream-or-first-sequence length page-size
-- done() prints one line "BENCHJSON {...}". Every page of the range is full, so the harness counts
-- page-size events per 200 answer; there is no response() here, so wrk never hands bodies to Lua.

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

local mode, target, size, pages
local position = 0

function init(args)
  mode = args[1] or "stream"
  target = args[2]
  size = tonumber(args[4] or "200")
  pages = math.max(1, math.floor(tonumber(args[3] or "10000") / size))
  position = (tid or 0) * 7
end

function request()
  local p = position % pages
  position = position + 1
  if mode == "stream" then
    return wrk.format("GET", "/api/v1/streams/" .. target .. "/events?page=" .. (p + 1) .. "&page_size=" .. size)
  end
  local after = tonumber(target) - 1 + p * size
  return wrk.format("GET", "/api/v1/events?after_sequence=" .. after .. "&limit=" .. size)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"ok":%d,"conflicts":0,"failures":%d,' ..
    '"socket_errors":%d,"p50_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration, summary.requests - e.status, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
