#!lua
-- Adds repeats of folded alerts to storm counters and returns the totals.
-- KEYS[i]   storm counter "<prefix>c:<id>:<window start>"
-- ARGV[1]   counter TTL ms, refreshed on every count
-- ARGV[1+i] alerts to add to counter i
-- A counter that no longer exists (its state was lost) is not created again:
-- its total is unknown, answered 0, and the caller counts the alerts elsewhere.
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    out[i] = redis.call('INCRBY', key, tonumber(ARGV[1 + i]))
    redis.call('PEXPIRE', key, ARGV[1])
  else
    out[i] = 0
  end
end
return out
