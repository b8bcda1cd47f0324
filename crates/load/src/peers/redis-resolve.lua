-- confirm or release: KEYS = hold; ARGV = hold id, 'confirm' | 'release'. Returns 'ok' or a
-- code. A hold past its expiry that the reaper has not reached yet is expired here, as
-- livestock does.
local hold_key, id, op = KEYS[1], ARGV[1], ARGV[2]
local h = redis.call('HMGET', hold_key, 'deal', 'user', 'qty', 'state', 'exp')
if not h[1] then return 'unknown_hold' end
if h[4] ~= 'held' then return 'hold_' .. h[4] end
local deal, user, qty = h[1], h[2], tonumber(h[3])
if tonumber(h[5]) <= now_ms() then
  give_back(hold_key, id, deal, user, qty, 'expired')
  return 'hold_expired'
end
if op == 'release' then
  give_back(hold_key, id, deal, user, qty, 'released')
  return 'ok'
end
redis.call('HSET', hold_key, 'state', 'confirmed')
redis.call('ZREM', 'ls:expiries', id)
redis.call('HINCRBY', 'ls:deal:' .. deal, 'held', -qty)
redis.call('HINCRBY', 'ls:deal:' .. deal, 'sold', qty)
return 'ok'
