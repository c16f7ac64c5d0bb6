#!lua
-- Dedup decision for a batch, atomically: the Redis twin of DedupWindow::decide
-- and of the memory store's copy check.
-- KEYS[i]   record key of query i (i = 1..n); further KEYS are delivery keys
-- ARGV[1]   TTL in ms (the window: the record lives as long as the incident is open)
-- ARGV[2]   now, Unix ms
-- ARGV[3]   window, ms
-- ARGV[4]   copy window, ms (how long a delivery is remembered)
-- ARGV[4+i] 'f' (firing) or 'r' (resolved) for query i, followed by ':<j>' when
--           KEYS[j] is its delivery key
-- Record: "<first_seen>|<last_seen>|<count>|<placement>", placement '?' (pending:
-- the first alert's edge has not said yet which CR counts it), '' (own CR) or
-- '<namespace>/<name>' (a storm's CR). A delivery key holds the time until which
-- its copies are recognised (compared with ARGV[2], as records are, so the
-- script agrees with the memory store whatever the clock; the TTL only cleans up).
-- Reply per query: "N|<record>", "D|<record>", "R|<record>", "U", or for a copy
-- of a delivery already counted "C|<record>" (its window open) or "C".
local ttl = ARGV[1]
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local copy_ttl = ARGV[4]
local n = #ARGV - 4
local out = {}
for i = 1, n do
  local key = KEYS[i]
  local arg = ARGV[4 + i]
  local firing = string.sub(arg, 1, 1) == 'f'
  local delivery = string.match(arg, ':(%d+)$')
  local rec = redis.call('GET', key)
  local first, last, count, bound
  local open = false
  if rec then
    local a, b, c, d = string.match(rec, '^(%-?%d+)|(%-?%d+)|(%d+)|(.*)$')
    if a then
      first, last, count, bound = tonumber(a), tonumber(b), tonumber(c), d
      open = (now - last) < window
    end
  end
  local copy = false
  if delivery then
    local dkey = KEYS[tonumber(delivery)]
    local remembered = tonumber(redis.call('GET', dkey))
    copy = remembered ~= nil and now < remembered
    if not copy then
      redis.call('SET', dkey, string.format('%d', now + tonumber(copy_ttl)), 'PX', copy_ttl)
    end
  end
  if copy then
    if open then out[i] = 'C|' .. rec else out[i] = 'C' end
  elseif firing then
    local v
    if open then
      if now > last then last = now end
      v = string.format('%d|%d|%d|%s', first, last, count + 1, bound)
      out[i] = 'D|' .. v
    else
      v = string.format('%d|%d|1|?', now, now)
      out[i] = 'N|' .. v
    end
    redis.call('SET', key, v, 'PX', ttl)
  else
    if rec then redis.call('DEL', key) end
    if open then out[i] = 'R|' .. rec else out[i] = 'U' end
  end
end
return out
