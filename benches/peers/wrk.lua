-- wrk's requests for benches/peers/wrk.sh: reserves of one unit.
--   WRK_DYNAMIC unset: one fixed request (wrk sends the same bytes without calling Lua: the
--                      fastest client, for the ceiling and the sold-out answer)
--   WRK_DYNAMIC=1:     a new user per request (WRK_PREFIX-thread-n), and with WRK_KEYED=1 a
--                      new Idempotency-Key each (Lua builds every request: a slower client)
local prefix = os.getenv("WRK_PREFIX") or "w"
local keyed = os.getenv("WRK_KEYED") == "1"
local dynamic = os.getenv("WRK_DYNAMIC") == "1"
local threads = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"user_id":"' .. prefix .. '","qty":1}'

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

if dynamic then
  function init(args)
    n = 0
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
end
