-- wrk script for bench/lookup: decisions for the sample's cities in turn, with the API key, and
-- an optional request rate (SB_RATE requests/s over all connections; 0 = as fast as possible).
local cities = {"mumbai", "delhi", "bangalore", "hyderabad", "chennai", "kolkata", "pune", "ahmedabad"}
local key = os.getenv("SB_KEY") or ""
local path = os.getenv("SB_PATH") or "/v1/tenants/ajio/slots/hero/decision"
local rate = tonumber(os.getenv("SB_RATE") or "0")
local connections = tonumber(os.getenv("SB_CONNECTIONS") or "64")
local i = 0

request = function()
  i = i + 1
  return wrk.format("GET", path .. "?city=" .. cities[(i % #cities) + 1],
    {["Authorization"] = "Bearer " .. key})
end

delay = function()
  if rate > 0 then
    return math.floor(connections / rate * 1000 + 0.5)
  end
  return 0
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT %.1f %.3f %.3f %.3f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests))
end
