#!lua
-- Dedup decision for a batch, atomically: the Redis twin of DedupWindow::decide
-- and of the memory store's copy check.
--
-- Records are fields of small hashes, not keys of their own: a key costs Redis
-- about 100 bytes before its value, a field of a small hash (listpack) only its
-- bytes. A record's hash is chosen by the epoch of its last_seen
-- (floor(last_seen / window)) and a shard of its fingerprint; it is open only
-- while now - last_seen < window, so it is in the epoch of now (E), the one
-- before, or, when the caller's clock is behind another edge's, the one after.
-- Each hash expires once every record it can hold is closed.
--
-- KEYS[1..3]        binding tables of epochs E-1, E, E+1 (id -> '<namespace>/<name>')
-- KEYS[3i+1..3i+3]  the record hashes of query i (i = 1..n) in epochs E-1, E, E+1
-- further KEYS      for each query with a delivery, the delivery hashes of the
--                   copy window's epochs C-1, C, C+1 (C = floor(now / copy window))
-- ARGV[1]           unused
-- ARGV[2]           now, Unix ms
-- ARGV[3]           window, ms
-- ARGV[4]           copy window, ms (how long a delivery is remembered)
-- ARGV[5]           E
-- ARGV[6]           C
-- ARGV[6+i]         'f' (firing) or 'r' (resolved), the record's field, and
--                   ':<j>:<field>' when KEYS[j..j+2] are the query's delivery
--                   hashes and <field> its delivery's field there
-- Record: '<first_seen>|<last_seen - first_seen>|<count>|<placement>', placement
-- '?' (pending: the first alert's edge has not said yet which CR counts it), ''
-- (own CR) or '#<id>' (a storm's CR, named in the epoch's binding table), then
-- '|<ends_at>' when the window has an end (its CR finished; see bind.lua). A
-- delivery is remembered the same way, by the epoch of the copy window it was
-- seen in: its value is the time until which its copies are recognised
-- (compared with ARGV[2], as records are, so the script agrees with the memory
-- store whatever the clock; the TTLs only clean up).
-- Reply per query, the placement spelled out ('<namespace>/<name>'):
-- "N|<first>|<last>|<count>|<placement>[|<ends_at>]", "D|…", "R|…", "U", or for a
-- copy of a delivery already counted "C|…" (its window open) or "C".
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local copy_ttl = tonumber(ARGV[4])
local epoch = tonumber(ARGV[5])
local copy_epoch = tonumber(ARGV[6])
local n = #ARGV - 6

-- Until every entry the hash of `epoch` (of windows of `ms`) can hold is closed
-- (the epoch's end and a window), and a second.
local function expiry(ms, hash_epoch)
  return string.format('%d', (hash_epoch + 2) * ms - now + 1000)
end

-- The epochs to look in, most likely first: now's, the one before, the one after.
local LOOK = { 2, 1, 3 }

-- Whether the delivery in hashes KEYS[j..j+2] was seen within the copy window;
-- if not, it is remembered from now.
local function seen_before(j, field)
  local at, remembered
  for _, e in ipairs(LOOK) do
    remembered = tonumber(redis.call('HGET', KEYS[j + e - 1], field))
    if remembered then
      at = e - 1
      break
    end
  end
  if remembered and now < remembered then return true end
  local to = math.min(2, math.max(0, math.floor(now / copy_ttl) - copy_epoch + 1))
  if at and at ~= to then redis.call('HDEL', KEYS[j + at], field) end
  -- A hash's expiry is set with its first field (it is the same for all of them).
  if redis.call('HSET', KEYS[j + to], field, string.format('%d', now + copy_ttl)) == 1 then
    redis.call('PEXPIRE', KEYS[j + to], expiry(copy_ttl, copy_epoch + to - 1))
  end
  return false
end

-- '|<ends_at>', or '' for a window without an end.
local function end_part(ends)
  if ends then return string.format('|%d', ends) end
  return ''
end

local function spelled(first, last, count, placement, ends, at)
  if string.sub(placement, 1, 1) == '#' then
    -- A binding lost to eviction leaves the incident pending: its edge asks again.
    placement = redis.call('HGET', KEYS[at], string.sub(placement, 2)) or '?'
  end
  return string.format('%d|%d|%d|%s', first, last, count, placement) .. end_part(ends)
end

local out = {}
for i = 1, n do
  local arg = ARGV[6 + i]
  local firing = string.sub(arg, 1, 1) == 'f'
  local field = string.match(arg, '^.([^:]+)')
  local delivery, delivery_field = string.match(arg, ':(%d+):(.+)$')
  local base = 3 * i
  local rec, at
  for _, e in ipairs(LOOK) do
    rec = redis.call('HGET', KEYS[base + e], field)
    if rec then
      at = e
      break
    end
  end
  local first, last, count, placement, ends
  local open = false
  if rec then
    local a, b, c, d, e = string.match(rec, '^(%-?%d+)|(%d+)|(%d+)|([^|]*)|?(%-?%d*)$')
    if a then
      first, last, count, placement, ends = tonumber(a), tonumber(a) + tonumber(b), tonumber(c), d, tonumber(e)
      open = (now - last) < window and (ends == nil or now < ends)
    end
  end
  local copy = delivery ~= nil and seen_before(tonumber(delivery), delivery_field)
  if copy then
    if open then out[i] = 'C|' .. spelled(first, last, count, placement, ends, at) else out[i] = 'C' end
  elseif firing then
    local tag = 'D|'
    if open then
      if now > last then last = now end
      count = count + 1
    else
      tag = 'N|'
      first, last, count, placement, ends = now, now, 1, '?', nil
    end
    local to = math.min(3, math.max(1, math.floor(last / window) - epoch + 2))
    if rec and at ~= to then
      redis.call('HDEL', KEYS[base + at], field)
      local id = open and string.match(placement, '^#(.+)$')
      if id then
        local binding = redis.call('HGET', KEYS[at], id)
        if binding then
          redis.call('HSET', KEYS[to], id, binding)
          redis.call('PEXPIRE', KEYS[to], expiry(window, epoch + to - 2))
        end
      end
    end
    local key = KEYS[base + to]
    -- A hash's expiry is set with its first field (the same for all of them).
    local value = string.format('%d|%d|%d|%s', first, last - first, count, placement) .. end_part(ends)
    if redis.call('HSET', key, field, value) == 1 then
      redis.call('PEXPIRE', key, expiry(window, epoch + to - 2))
    end
    out[i] = tag .. spelled(first, last, count, placement, ends, to)
  else
    if rec then redis.call('HDEL', KEYS[base + at], field) end
    if open then out[i] = 'R|' .. spelled(first, last, count, placement, ends, at) else out[i] = 'U' end
  end
end
return out
