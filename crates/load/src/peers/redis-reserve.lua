-- reserve: KEYS = deal, users, expiries, hold_seq; ARGV = deal id, user, qty, ttl_ms.
-- Returns {'ok', hold_id} or {code}. The same work as livestock's reserve: check the stock,
-- the per-user limit, take the units, record the hold and its expiry.
local deal_key, users_key, expiries_key, seq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local deal, user, qty, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local d = redis.call('HMGET', deal_key, 'available', 'limit')
if not d[1] then return {'unknown_deal'} end
local available = tonumber(d[1])
if available == 0 then return {'sold_out'} end
if available < qty then return {'insufficient_stock'} end
local limit = tonumber(d[2])
if limit > 0 then
  local had = tonumber(redis.call('HGET', users_key, user) or '0')
  if had + qty > limit then return {'per_user_limit'} end
  redis.call('HINCRBY', users_key, user, qty)
end
redis.call('HINCRBY', deal_key, 'available', -qty)
redis.call('HINCRBY', deal_key, 'held', qty)
local exp = now_ms() + ttl_ms
local id = redis.call('INCR', seq_key)
redis.call('HSET', 'ls:hold:' .. id, 'deal', deal, 'user', user, 'qty', qty, 'state', 'held',
  'exp', exp)
redis.call('ZADD', expiries_key, exp, id)
return {'ok', tostring(id)}
