#!lua
-- Gives open incident windows an end: the window closes then, however often its
-- alert fires until then (its CR was finished, and the cooldown after it ends
-- then). Keeps placement and expiry. Records are laid out as in check.lua.
-- KEYS[1..3]        binding tables of epochs E-1, E, E+1 (unused)
-- KEYS[3i+1..3i+3]  the record hashes of window i in epochs E-1, E, E+1
-- ARGV[1]           unused
-- ARGV[2]           now, Unix ms
-- ARGV[3]           window, ms
-- ARGV[1+3i..3+3i]  window i: the record's field, the first_seen it is for, and
--                   its end, Unix ms
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local ended = 0
for i = 1, (#ARGV - 3) / 3 do
  local field, first_seen, ends_at = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  for e = 3, 1, -1 do
    local key = KEYS[3 * i + e]
    local rec = redis.call('HGET', key, field)
    if rec then
      local a, b, c, d, ends = string.match(rec, '^(%-?%d+)|(%d+)|(%d+)|([^|]*)|?(%-?%d*)$')
      local open = a and (now - tonumber(a) - tonumber(b)) < window and (ends == '' or now < tonumber(ends))
      if open and a == first_seen then
        redis.call('HSET', key, field, string.format('%s|%s|%s|%s|%s', a, b, c, d, ends_at))
        ended = ended + 1
      end
      break
    end
  end
end
return ended
