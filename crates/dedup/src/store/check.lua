#!lua
-- Dedup decision for a batch, atomically: the Redis twin of DedupWindow::decide.
-- KEYS[i]   record key of query i
-- ARGV[1]   TTL in ms (the window: the record lives as long as the incident is open)
-- ARGV[2]   now, Unix ms
-- ARGV[3]   window, ms
-- ARGV[3+i] 'f' (firing) or 'r' (resolved) for query i
-- Record: "<first_seen>|<last_seen>|<count>|<placement>", placement '?' (pending:
-- the first alert's edge has not said yet which CR counts it), '' (own CR) or
-- '<namespace>/<name>' (a storm's CR).
-- Reply per query: "N|<record>", "D|<record>", "R|<record>" or "U".
local ttl = ARGV[1]
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  local firing = ARGV[3 + i] == 'f'
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
  if firing then
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
