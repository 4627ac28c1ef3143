-- POST a fixed JSON body; body, key and extra MCP headers come from the environment.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
local key = os.getenv("WRK_KEY")
if key and key ~= "" then wrk.headers["X-API-Key"] = key end
local version = os.getenv("WRK_MCP_VERSION")
if version and version ~= "" then wrk.headers["MCP-Protocol-Version"] = version end
