-- wrk script for bench/lookup: decisions for the sample's cities in turn, with the API key, and
-- an optional pause between a connection's requests (SB_DELAY_MS; 0 = as fast as possible), which
-- run.sh calibrates to a target rate.
local cities = {"mumbai", "delhi", "bangalore", "hyderabad", "chennai", "kolkata", "pune", "ahmedabad"}
local key = os.getenv("SB_KEY") or ""
local path = os.getenv("SB_PATH") or "/v1/tenants/ajio/slots/hero/decision"
local delay_ms = tonumber(os.getenv("SB_DELAY_MS") or "0")
local i = 0

request = function()
  i = i + 1
  return wrk.format("GET", path .. "?city=" .. cities[(i % #cities) + 1],
    {["Authorization"] = "Bearer " .. key})
end

delay = function()
  return delay_ms
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT %.1f %.3f %.3f %.3f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests))
end
