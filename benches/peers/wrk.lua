-- wrk's requests for benches/peers/wrk.sh: one reserve per request, each for a new user
-- (WRK_PREFIX-n), and with a new Idempotency-Key each when WRK_KEYED=1. Counts the answers'
-- statuses, printed at the end ("statuses: 201=... 409=..."), so a row shows what it measured.
local prefix = os.getenv("WRK_PREFIX") or "w"
local keyed = os.getenv("WRK_KEYED") == "1"
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  n = 0
  statuses = {}
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  n = n + 1
  local user = prefix .. "-" .. id .. "-" .. n
  if keyed then
    headers["Idempotency-Key"] = "k-" .. user
  end
  return wrk.format("POST", nil, headers, '{"user_id":"' .. user .. '","qty":1}')
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for status, count in pairs(s) do
      total[status] = (total[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(total) do
    table.insert(parts, status .. "=" .. count)
  end
  table.sort(parts)
  io.write("statuses: " .. table.concat(parts, " ") .. "\n")
end
