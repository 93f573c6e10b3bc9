-- wrk script for bench/lookup and bench/scale (through bench/lib/http.sh): decisions with an API
-- key, and an optional pause between a connection's requests (SB_DELAY_MS, fractional; 0 = as
-- fast as possible), which the scripts calibrate to a target rate. wrk pauses whole
-- milliseconds, so a pause of 1.4 ms is 1 ms or 2 ms at random, 1.4 ms on average.
--
-- Two ways to say what to ask:
-- - SB_TARGETS=FILE: one "PATH KEY" per line (a decision path with its query, and the API key of
--   its tenant); each request is one of them picked at random (bench/scale: every tenant, slot
--   and city of a generated history).
-- - otherwise: SB_PATH (default the sample's ajio/hero) for the sample's 8 cities in turn, with
--   the key SB_KEY.
local cities = {"mumbai", "delhi", "bangalore", "hyderabad", "chennai", "kolkata", "pune", "ahmedabad"}
local key = os.getenv("SB_KEY") or ""
local targets = os.getenv("SB_TARGETS") or ""
local path = os.getenv("SB_PATH") or "/v1/tenants/ajio/slots/hero/decision"
local delay_ms = tonumber(os.getenv("SB_DELAY_MS") or "0")
local whole_ms = math.floor(delay_ms)
local extra_ms_chance = delay_ms - whole_ms
-- The requests are built once: wrk.format per request would spend the client's CPU, which on a
-- 2-core machine is taken from the service.
-- (In init: wrk sets the Host header just before calling it.)
local requests = {}
local i = 0
local random = math.random

-- Each thread gets its own seed (its Lua state would otherwise draw the same sequence).
local thread_count = 0
setup = function(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

init = function()
  math.randomseed(os.time() * 1000 + (thread_id or 0))
  if targets ~= "" then
    local f = assert(io.open(targets, "r"), "SB_TARGETS: cannot open " .. targets)
    for line in f:lines() do
      local p, k = line:match("^(%S+)%s+(%S+)$")
      if p then
        requests[#requests + 1] = wrk.format("GET", p, {["Authorization"] = "Bearer " .. k})
      end
    end
    f:close()
    assert(#requests > 0, "SB_TARGETS: no \"PATH KEY\" line in " .. targets)
  else
    for n, city in ipairs(cities) do
      requests[n] = wrk.format("GET", path .. "?city=" .. city, {["Authorization"] = "Bearer " .. key})
    end
  end
end

if targets ~= "" then
  request = function()
    return requests[random(#requests)]
  end
else
  request = function()
    i = i % #requests + 1
    return requests[i]
  end
end

-- Defined only for a pause: with a delay function wrk puts every request on its timer list,
-- which costs the client CPU even at a pause of 0.
if delay_ms > 0 then
  delay = function()
    if random() < extra_ms_chance then
      return whole_ms + 1
    end
    return whole_ms
  end
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT %.1f %.3f %.3f %.3f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests))
end
