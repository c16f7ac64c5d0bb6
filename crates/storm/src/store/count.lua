#!lua
-- Adds repeats of folded alerts to storm counters and returns the totals.
-- KEYS[i]   storm counter "<prefix>c:<id>:<window start>" (i = 1..n); further
--           KEYS are delivery keys "<prefix>d:<delivery>"
-- ARGV[1]   counter TTL ms, refreshed on every count
-- ARGV[2]   now, Unix ms
-- ARGV[3]   copy window ms: how long a counted delivery is remembered
-- ARGV[3+i] alerts to add to counter i, followed by ':<j>' when KEYS[j] is
--           the delivery they came with
-- A counter that no longer exists (its state was lost) is not created again:
-- its total is unknown, answered 0, and the caller counts the alerts elsewhere.
-- A delivery counted within the copy window adds nothing again (its key holds
-- the time until which it is remembered, compared with ARGV[2] as the memory
-- store compares it; the TTL only cleans up).
local now = tonumber(ARGV[2])
local copy_ttl = tonumber(ARGV[3])
local n = #ARGV - 3
local out = {}
for i = 1, n do
  local key = KEYS[i]
  local alerts, delivery = string.match(ARGV[3 + i], '^(%d+):?(%d*)$')
  alerts = tonumber(alerts)
  if redis.call('EXISTS', key) == 1 then
    if delivery ~= '' then
      local dkey = KEYS[tonumber(delivery)]
      local remembered = tonumber(redis.call('GET', dkey))
      if remembered ~= nil and now < remembered then
        alerts = 0
      else
        redis.call('SET', dkey, string.format('%d', now + copy_ttl), 'PX', copy_ttl)
      end
    end
    out[i] = redis.call('INCRBY', key, alerts)
    redis.call('PEXPIRE', key, ARGV[1])
  else
    out[i] = 0
  end
end
return out
