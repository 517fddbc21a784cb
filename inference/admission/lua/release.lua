-- A job ended: free its concurrency and model slots and refund the tokens it reserved but
-- did not use (or charge the ones it used beyond the reservation). Idempotent: only the call that removes the lease refunds.
-- KEYS: 1 token bucket, 2 subject leases, 3 day counter, 4 model in-flight, 5 model meta
-- ARGV: 1 lease, 2 tpm, 3 burst, 4 unused tokens, 5 job duration ms (0: unknown)
local K_TOK, K_CONC, K_DAY, K_INF, K_META = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local lease = ARGV[1]
local tpm, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local unused, duration = tonumber(ARGV[4]), tonumber(ARGV[5])
local held = redis.call('ZREM', K_CONC, lease) + redis.call('ZREM', K_INF, lease)
if held == 0 then return 0 end
if unused > 0 then
  local tk = bucket(K_TOK, tpm, burst)
  if tk ~= nil then tk.lvl = math.min(tk.cap, tk.lvl + unused); save(tk) end
  refund_day(K_DAY, unused)
elseif unused < 0 then
  -- The job used more than admission could know (a session's history, retrieved context):
  -- charge the difference; the bucket may go below zero and refill before the next request.
  local tk = bucket(K_TOK, tpm, burst)
  if tk ~= nil then tk.lvl = tk.lvl + unused; save(tk) end
  if redis.call('EXISTS', K_DAY) == 1 then redis.call('INCRBY', K_DAY, -unused) end
end
if duration > 0 then
  -- Moving average of job duration: the waiting room's ETA.
  local d = tonumber(redis.call('HGET', K_META, 'd') or '0') or 0
  if d <= 0 then d = duration else d = 0.8 * d + 0.2 * duration end
  redis.call('HSET', K_META, 'd', math.floor(d))
  redis.call('PEXPIRE', K_META, 86400000)
end
return 1
