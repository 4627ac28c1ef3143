-- One wrk of bench/run.py. With WRK_BODY set, POST that JSON body (key and MCP protocol
-- version from the environment too); otherwise GET.
-- At the end, the latency histogram, so that the histograms of several wrk processes (one per
-- worker port) can be merged exactly: in wrk 4.1.0, `#latency` is the number of non-empty
-- buckets and `latency(i)` returns the i-th of them as (microseconds, count), lowest first
-- (script.c: script_stats_call, stats.c: stats_value_at). `latency[i]` is no bucket: it
-- returns its own key.
local body = os.getenv("WRK_BODY")
if body and body ~= "" then
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
end
local key = os.getenv("WRK_KEY")
if key and key ~= "" then wrk.headers["X-API-Key"] = key end
local version = os.getenv("WRK_MCP_VERSION")
if version and version ~= "" then wrk.headers["MCP-Protocol-Version"] = version end

function done(summary, latency, requests)
  local lines = {"latency-histogram-us"}
  for i = 1, #latency do
    local us, count = latency(i)
    lines[#lines + 1] = string.format("%d %d", us, count)
  end
  io.write(table.concat(lines, "\n"), "\n")
end
