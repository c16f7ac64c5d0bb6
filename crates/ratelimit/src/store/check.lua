#!lua
-- Rate-limit decision for one webhook, atomically: the Redis twin of
-- TokenBucket::decide, same float arithmetic in the same order.
-- KEYS[1]  the sender's bucket
-- ARGV[1]  TTL cap in ms (no bucket needs longer to fill up again); the key's
--          TTL is the time until its bucket is full again plus 1 s, at most this
-- ARGV[2]  now, Unix ms
-- ARGV[3]  signals in the webhook
-- ARGV[4]  refill rate, tokens per ms
-- ARGV[5]  burst
-- Bucket: "<tokens>|<updated_at>"; tokens are written with %.17g so they read
-- back as the same double.
-- Reply: "A|<tokens_left>" (allowed) or "L|<retry_after_ms>|<tokens_left>" (limited).
local cap = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])

-- Refill. A missing bucket is full, and so is a bucket that refilled to the
-- brim; a clock that went backwards refills nothing.
local tokens, updated = burst, now
local rec = redis.call('GET', KEYS[1])
if rec then
  local t, u = string.match(rec, '^([^|]+)|(%-?%d+)$')
  t, u = tonumber(t), tonumber(u)
  if t and u then
    if now > u then
      tokens = math.min(burst, t + (now - u) * rate)
    elseif t < burst then
      tokens, updated = t, u
    end
  end
end

local reply
if n == 0 then
  reply = string.format('A|%.17g', tokens)
else
  local need = math.min(n, burst)
  if tokens >= need then
    tokens = tokens - n
    reply = string.format('A|%.17g', tokens)
  else
    reply = string.format('L|%.17g|%.17g', math.ceil((need - tokens) / rate), tokens)
  end
end

local ttl = math.ceil((burst - tokens) / rate) + 1000
if ttl < 1 then ttl = 1 end
if ttl > cap then ttl = cap end
redis.call('SET', KEYS[1], string.format('%.17g|%d', tokens, updated), 'PX', string.format('%d', ttl))
return reply
