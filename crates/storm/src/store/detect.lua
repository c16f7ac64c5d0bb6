-- Storm decision for a batch, atomically: the Redis twin of StormRules::decide.
-- KEYS[2i-1] window record of query i: "<start>|<last>|<alerts>|<distinct>|<omitted>|<storm 0/1/2>|<storm_alerts>"
-- KEYS[2i]   capped set of the window's listed resources
-- ARGV[1] TTL ms (the inactivity timeout: a window never outlives it)
-- ARGV[2] now ms, ARGV[3] rate threshold, ARGV[4] pattern threshold,
-- ARGV[5] inactivity ms, ARGV[6] max window ms, ARGV[7] list cap,
-- ARGV[7+i] resource id of query i
-- Reply per query: "<N|O|J>|<storm 0/1/2>|<window start>|<storm_alerts>|<listed 0/1>|<omitted>"
local ttl = ARGV[1]
local now = tonumber(ARGV[2])
local rate, pattern = tonumber(ARGV[3]), tonumber(ARGV[4])
local inactivity, maxw, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local out = {}
for i = 1, #KEYS / 2 do
  local wkey, rkey, res = KEYS[2 * i - 1], KEYS[2 * i], ARGV[7 + i]
  local rec = redis.call('GET', wkey)
  local open = false
  local start, last, alerts, distinct, omitted, storm, storm_alerts
  if rec then
    local f = {}
    for n in string.gmatch(rec, '(%-?%d+)') do f[#f + 1] = tonumber(n) end
    if #f == 7 then
      start, last, alerts, distinct, omitted, storm, storm_alerts = f[1], f[2], f[3], f[4], f[5], f[6], f[7]
      open = (now - last) < inactivity and (now - start) < maxw
    end
  end
  local listed = false
  if open then
    listed = redis.call('SISMEMBER', rkey, res) == 1
  else
    start, last, alerts, distinct, omitted, storm, storm_alerts = now, now, 0, 0, 0, 0, 0
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
  local outcome
  if storm ~= 0 then
    storm_alerts = storm_alerts + 1
    outcome = 'J'
  else
    if alerts > rate then storm = 1 elseif distinct > pattern then storm = 2 end
    if storm ~= 0 then
      storm_alerts = 1
      outcome = 'O'
    else
      outcome = 'N'
    end
  end
  if add then redis.call('SADD', rkey, res) end
  redis.call('PEXPIRE', rkey, ttl)
  redis.call('SET', wkey, string.format('%d|%d|%d|%d|%d|%d|%d', start, last, alerts, distinct, omitted, storm, storm_alerts), 'PX', ttl)
  local shown = 0
  if listed or add then shown = 1 end
  out[i] = string.format('%s|%d|%d|%d|%d|%d', outcome, storm, start, storm_alerts, shown, omitted)
end
return out
