-- expire: KEYS = expiries; ARGV = batch size. Ends up to a batch of holds past their expiry,
-- earliest first; returns how many it took off the expiry set.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  local hold_key = 'ls:hold:' .. id
  local h = redis.call('HMGET', hold_key, 'deal', 'user', 'qty', 'state')
  if h[4] == 'held' then
    give_back(hold_key, id, h[1], h[2], tonumber(h[3]), 'expired')
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return #due
