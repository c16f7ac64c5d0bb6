#!lua
-- Storm decision for a batch, atomically: the Redis twin of StormRules::decide.
-- Per query i, three keys:
--   KEYS[3i-2] window record: "<start>|<last>|<alerts>|<distinct>|<omitted>|<storm 0/1/2>"
--   KEYS[3i-1] capped set of the window's listed resources
--   KEYS[3i]   prefix of the storm's alert counter; the counter is "<prefix>:<window start>"
--              (it outlives the window, so repeats of folded alerts are counted after it)
-- ARGV[1] counter TTL ms (the longest TTL written; window keys live ARGV[5])
-- ARGV[2] now ms, ARGV[3] rate threshold, ARGV[4] pattern threshold,
-- ARGV[5] inactivity ms, ARGV[6] max window ms, ARGV[7] list cap,
-- ARGV[8] copy window ms, ARGV[9] number of queries n
-- ARGV[9+i]   resource id of query i
-- ARGV[9+n+i] index in KEYS of query i's delivery key, or 0: a delivery counted on a
--             storm is remembered (until now + copy window), so a copy's count adds nothing
-- Reply per query: "<N|O|J>|<storm 0/1/2>|<window start>|<storm alerts>|<listed 0/1>|<omitted>"
local count_ttl = ARGV[1]
local now = tonumber(ARGV[2])
local rate, pattern = tonumber(ARGV[3]), tonumber(ARGV[4])
local inactivity, maxw, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local copy_ttl, n = tonumber(ARGV[8]), tonumber(ARGV[9])
local out = {}
for i = 1, n do
  local wkey, rkey, ckey, res = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], ARGV[9 + i]
  local delivery = tonumber(ARGV[9 + n + i])
  local rec = redis.call('GET', wkey)
  local open = false
  local start, last, alerts, distinct, omitted, storm
  if rec then
    local f = {}
    for n in string.gmatch(rec, '(%-?%d+)') do f[#f + 1] = tonumber(n) end
    if #f == 6 then
      start, last, alerts, distinct, omitted, storm = f[1], f[2], f[3], f[4], f[5], f[6]
      open = (now - last) < inactivity and (now - start) < maxw
    end
  end
  local listed = false
  if open then
    listed = redis.call('SISMEMBER', rkey, res) == 1
  else
    start, last, alerts, distinct, omitted, storm = now, now, 0, 0, 0, 0
    redis.call('DEL', rkey)
  end
  alerts = alerts + 1
  if now > last then last = now end
  local add = false
  if not listed then
    if distinct < cap then
      distinct = distinct + 1
      add = true
    else
      omitted = omitted + 1
    end
  end
  local outcome, storm_alerts = 'N', 0
  local counter = string.format('%s:%d', ckey, start)
  if storm ~= 0 then
    outcome = 'J'
    storm_alerts = redis.call('INCR', counter)
    redis.call('PEXPIRE', counter, count_ttl)
  else
    if alerts > rate then storm = 1 elseif distinct > pattern then storm = 2 end
    if storm ~= 0 then
      outcome = 'O'
      storm_alerts = 1
      redis.call('SET', counter, 1, 'PX', count_ttl)
    end
  end
  if storm_alerts > 0 and delivery > 0 then
    redis.call('SET', KEYS[delivery], string.format('%d', now + copy_ttl), 'PX', copy_ttl)
  end
  if add then redis.call('SADD', rkey, res) end
  redis.call('PEXPIRE', rkey, inactivity)
  redis.call('SET', wkey, string.format('%d|%d|%d|%d|%d|%d', start, last, alerts, distinct, omitted, storm), 'PX', inactivity)
  local shown = 0
  if listed or add then shown = 1 end
  out[i] = string.format('%s|%d|%d|%d|%d|%d', outcome, storm, start, storm_alerts, shown, omitted)
end
return out
