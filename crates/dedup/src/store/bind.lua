#!lua
-- Places open incidents, on their own CR ('') or a storm's ('<ns>/<name>'),
-- keeping their expiry and end; or gives them an end ('!<ends_at>': the window
-- closes then, however often its alert fires until then, because its CR was
-- finished and the cooldown after it ends then), keeping their placement.
-- Records are laid out as in check.lua.
-- KEYS[1..3]        binding tables of epochs E-1, E, E+1
-- KEYS[3i+1..3i+3]  the record hashes of binding i in epochs E-1, E, E+1
-- ARGV[1]           unused
-- ARGV[2]           now, Unix ms
-- ARGV[3]           window, ms
-- ARGV[4]           E
-- ARGV[2+3i..4+3i]  binding i: the record's field, the first_seen it is for,
--                   and '', '#<id>|<namespace>/<name>' or '!<ends_at>'
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local epoch = tonumber(ARGV[4])
local applied = 0
for i = 1, (#ARGV - 4) / 3 do
  local field, first_seen, to = ARGV[2 + 3 * i], ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  for e = 3, 1, -1 do
    local key = KEYS[3 * i + e]
    local rec = redis.call('HGET', key, field)
    if rec then
      local a, b, c, placement, ends = string.match(rec, '^(%-?%d+)|(%d+)|(%d+)|([^|]*)(.*)$')
      local ended = a ~= nil and ends ~= '' and now >= tonumber(string.sub(ends, 2))
      if a and a == first_seen and (now - tonumber(a) - tonumber(b)) < window and not ended then
        local ends_at = string.match(to, '^!(%-?%d+)$')
        if ends_at then
          ends = '|' .. ends_at
        else
          placement = ''
          local id, name = string.match(to, '^#([^|]+)|(.+)$')
          if id then
            placement = '#' .. id
            redis.call('HSET', KEYS[e], id, name)
            redis.call('PEXPIRE', KEYS[e], string.format('%d', (epoch + e) * window - now + 1000))
          end
        end
        redis.call('HSET', key, field, string.format('%s|%s|%s|%s%s', a, b, c, placement, ends))
        applied = applied + 1
      end
      break
    end
  end
end
return applied
