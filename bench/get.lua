-- wrk script: GET /route?uid=... with a different uid on every request (as a
-- reconnect storm sends them), path prefix taken from the target URL.
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", wrk.path .. "?uid=user-" .. string.format("%08d", counter % 100000000))
end
