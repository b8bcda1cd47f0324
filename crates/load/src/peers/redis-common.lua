-- Shared by every livestock peer script (prepended to each; see crates/load/src/redis.rs).
--
-- Keys, all under "ls:":
--   ls:deal:{deal}   hash  stock, available, held, sold, limit (0: none), ttl_ms
--   ls:users:{deal}  hash  user -> units held or bought (kept when the deal has a limit)
--   ls:hold:{hold}   hash  deal, user, qty, state (held|confirmed|released|expired), exp
--   ls:expiries      zset  hold id scored by its expiry, ms since the epoch
--   ls:hold_seq      string, the last hold id
-- Invariant, per deal: stock = available + held + sold.

-- The server's clock (scripts replicate their effects, so TIME is allowed).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Ends a held hold as `state` (released or expired): its units go back on sale and leave the
-- user's count. Confirming is the caller's own.
local function give_back(hold_key, id, deal, user, qty, state)
  redis.call('HSET', hold_key, 'state', state)
  redis.call('ZREM', 'ls:expiries', id)
  redis.call('HINCRBY', 'ls:deal:' .. deal, 'held', -qty)
  redis.call('HINCRBY', 'ls:deal:' .. deal, 'available', qty)
  local users = 'ls:users:' .. deal
  if redis.call('HEXISTS', users, user) == 1 then
    redis.call('HINCRBY', users, user, -qty)
  end
end
