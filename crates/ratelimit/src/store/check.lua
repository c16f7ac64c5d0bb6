#!lua
-- Rate-limit decision for one webhook, atomically over every bucket it is
-- charged to (the sender's, then each namespace's with an override): the Redis
-- twin of limiter::decide_all, same float arithmetic in the same order.
-- KEYS[i]        bucket i
-- ARGV[1]        TTL cap in ms (no bucket needs longer to fill up again); each
--                key's TTL is the time until its bucket is full again plus 1 s,
--                at most this
-- ARGV[2]        now, Unix ms
-- ARGV[3i]       signals charged to bucket i
-- ARGV[3i+1]     bucket i's refill rate, tokens per ms
-- ARGV[3i+2]     bucket i's burst
-- Bucket: "<tokens>|<updated_at>"; tokens are written with %.17g so they read
-- back as the same double.
-- Reply: "A" (admitted) or "L" (refused), then "|<tokens>" per bucket after the
-- decision; the caller derives the wait and the quota from them.
local cap = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local buckets = {}
local allowed = true

for i = 1, #KEYS do
  local b = {
    n = tonumber(ARGV[3 * i]),
    rate = tonumber(ARGV[3 * i + 1]),
    burst = tonumber(ARGV[3 * i + 2]),
  }
  -- Refill. A missing bucket is full, and so is a bucket that refilled to the
  -- brim; a clock that went backwards refills nothing.
  b.tokens, b.updated = b.burst, now
  local rec = redis.call('GET', KEYS[i])
  if rec then
    local t, u = string.match(rec, '^([^|]+)|(%-?%d+)$')
    t, u = tonumber(t), tonumber(u)
    if t and u then
      if now > u then
        b.tokens = math.min(b.burst, t + (now - u) * b.rate)
      elseif t < b.burst then
        b.tokens, b.updated = t, u
      end
    end
  end
  if b.n ~= 0 and b.tokens < math.min(b.n, b.burst) then
    allowed = false
  end
  buckets[i] = b
end

local reply = allowed and 'A' or 'L'
for i, b in ipairs(buckets) do
  if allowed then
    b.tokens = b.tokens - b.n
  end
  reply = reply .. string.format('|%.17g', b.tokens)
  local ttl = math.ceil((b.burst - b.tokens) / b.rate) + 1000
  if ttl < 1 then ttl = 1 end
  if ttl > cap then ttl = cap end
  redis.call('SET', KEYS[i], string.format('%.17g|%d', b.tokens, b.updated), 'PX', string.format('%d', ttl))
end
return reply
