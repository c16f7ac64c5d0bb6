#!lua
-- Adds repeats of folded alerts to storm counters and returns the totals.
-- KEYS[i]   storm counter "<prefix>c:<id>:<window start>"
-- ARGV[1]   counter TTL ms, refreshed on every count
-- ARGV[1+i] alerts to add to counter i
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('INCRBY', key, tonumber(ARGV[1 + i]))
  redis.call('PEXPIRE', key, ARGV[1])
end
return out
