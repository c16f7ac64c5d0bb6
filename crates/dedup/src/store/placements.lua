#!lua
-- Reads records, laid out as in check.lua, with their placement spelled out.
-- KEYS[1..3]        binding tables of epochs E-1, E, E+1
-- KEYS[3i+1..3i+3]  the record hashes of window i in epochs E-1, E, E+1
-- ARGV[1]           unused
-- ARGV[1+i]         window i's field
-- Reply per window: '<first>|<last>|<count>|<placement>[|<ends_at>]', or '' when
-- there is none.
local out = {}
for i = 1, #ARGV - 1 do
  local field = ARGV[1 + i]
  out[i] = ''
  for e = 3, 1, -1 do
    local rec = redis.call('HGET', KEYS[3 * i + e], field)
    if rec then
      local a, b, c, d, ends = string.match(rec, '^(%-?%d+)|(%d+)|(%d+)|([^|]*)(.*)$')
      if a then
        if string.sub(d, 1, 1) == '#' then d = redis.call('HGET', KEYS[e], string.sub(d, 2)) or '?' end
        out[i] = string.format('%d|%d|%d|%s', tonumber(a), tonumber(a) + tonumber(b), tonumber(c), d) .. ends
      end
      break
    end
  end
end
return out
