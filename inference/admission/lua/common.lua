-- Shared by the admission scripts (prepended to each one; Redis runs each as one script).
-- Token buckets are hashes {v = level, t = ms of last update}; a missing key is a full bucket.
-- Every write sets a TTL: a bucket expires once it would be full again anyway.
local now
do
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function bucket(key, limit, burst)
  if limit <= 0 then return nil end
  local cap = limit * burst
  if cap < 1 then cap = 1 end
  local rate = limit / 60000.0
  local raw = redis.call('HMGET', key, 'v', 't')
  local v, ts = tonumber(raw[1]), tonumber(raw[2])
  local lvl = cap
  if v ~= nil and ts ~= nil then
    lvl = v + math.max(0, now - ts) * rate
    if lvl > cap then lvl = cap end
  end
  return {lvl = lvl, cap = cap, rate = rate, key = key}
end

local function save(b)
  redis.call('HSET', b.key, 'v', b.lvl, 't', now)
  redis.call('PEXPIRE', b.key, math.ceil((b.cap - b.lvl) / b.rate) + 1000)
end

local function need_ms(b, amount)
  if b == nil or b.lvl >= amount then return 0 end
  return math.ceil((amount - b.lvl) / b.rate)
end

local function reset_ms(b)
  if b == nil then return 0 end
  return math.ceil((b.cap - b.lvl) / b.rate)
end

local function level(b)
  if b == nil then return -1 end
  return math.floor(b.lvl)
end

-- A sorted set whose scores are expiry times: the key lives as long as its longest member.
local function zadd_expiring(key, expiry, member)
  redis.call('ZADD', key, expiry, member)
  local ttl = redis.call('PTTL', key)
  if ttl < expiry - now then redis.call('PEXPIRE', key, expiry - now) end
end

local function refund_day(day_key, amount)
  if amount <= 0 then return end
  local used = tonumber(redis.call('GET', day_key) or '0') or 0
  if used <= 0 then return end
  if amount > used then amount = used end
  redis.call('DECRBY', day_key, amount)
end
