#!lua
-- Places open incidents: on their own CR ('') or another one ('<ns>/<name>'),
-- keeping their expiry.
-- KEYS[i]       record key of binding i
-- ARGV[1]       TTL in ms; unused: a binding never extends a window (KEEPTTL)
-- ARGV[2]       now, Unix ms
-- ARGV[3]       window, ms
-- ARGV[2+2i]    first_seen the binding is for
-- ARGV[3+2i]    the placement: '' or '<namespace>/<name>'
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local bound = 0
for i, key in ipairs(KEYS) do
  local rec = redis.call('GET', key)
  if rec then
    local a, b, c = string.match(rec, '^(%-?%d+)|(%-?%d+)|(%d+)|')
    if a and a == ARGV[2 + 2 * i] and (now - tonumber(b)) < window then
      redis.call('SET', key, string.format('%s|%s|%s|%s', a, b, c, ARGV[3 + 2 * i]), 'KEEPTTL')
      bound = bound + 1
    end
  end
end
return bound
