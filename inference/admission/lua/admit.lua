-- One admission attempt for one request ("ticket"), atomically.
--
-- Phase 1, the subject's own limits: when the request is at the head of the subject's
-- waiters (FIFO), its request and token buckets hold 1 request and `cost` tokens, its daily
-- budget has room and it has a free concurrency slot, all of them are taken at once (the
-- reservation). Otherwise it waits in the subject's FIFO (or is refused, if it may not wait
-- or the buckets cannot refill within its remaining wait).
-- Phase 2, the model's capacity: a reserved request takes one of the model's in-flight
-- slots if fewer than `capacity` are taken and it is among the first `free` waiters of the
-- model's waiting room, ordered by tier (higher first), then start-time fair queueing across
-- users (per-user virtual time: a user with many waiting requests does not push others back).
--
-- KEYS: 1 request bucket, 2 token bucket, 3 subject leases (zset), 4 subject day counter,
--       5 subject waiters (zset by arrival), 6 their expiry (zset),
--       7 model in-flight leases (zset), 8 model waiters (zset by tier/fair tag), 9 their expiry,
--       10 model meta (hash: vt, u:<user>, n arrivals, d job duration), 11 ticket (hash)
-- ARGV: 1 ticket, 2 rpm, 3 tpm, 4 burst (minutes), 5 cost, 6 max concurrent, 7 daily budget,
--       8 lease ms, 9 capacity, 10 queue cap, 11 tier, 12 fairness key, 13 waiter ms,
--       14 wait left ms, 15 day counter ttl s
-- Returns: {status, wait ms, position, requests left, requests reset ms, tokens left,
--           tokens reset ms, concurrency blocked}
-- status: 1 admitted, 0 waiting (limits), 2 waiting (capacity), -1 rate limited,
--         -2 overloaded, -3 larger than the token bucket, -4 daily budget spent
local K_REQ, K_TOK, K_CONC, K_DAY, K_SQ, K_SX, K_INF, K_MQ, K_MX, K_META, K_T =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local ticket = ARGV[1]
local rpm, tpm, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, max_conc, daily = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lease_ms, capacity, qcap = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local tier, fair, waiter_ms = tonumber(ARGV[11]), ARGV[12], tonumber(ARGV[13])
local wait_left, day_ttl = tonumber(ARGV[14]), tonumber(ARGV[15])

redis.call('ZREMRANGEBYSCORE', K_CONC, '-inf', now)
redis.call('ZREMRANGEBYSCORE', K_INF, '-inf', now)
local function purge(order, expiry)
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 200)
  if #gone > 0 then
    redis.call('ZREM', order, unpack(gone))
    redis.call('ZREM', expiry, unpack(gone))
  end
end
purge(K_SQ, K_SX)
purge(K_MQ, K_MX)

local rq = bucket(K_REQ, rpm, burst)
local tk = bucket(K_TOK, tpm, burst)

local function result(status, wait, position, conc_blocked)
  return {status, wait, position, level(rq), reset_ms(rq), level(tk), reset_ms(tk), conc_blocked}
end

local function leave_subject_queue()
  redis.call('ZREM', K_SQ, ticket)
  redis.call('ZREM', K_SX, ticket)
end

local state = redis.call('HGET', K_T, 's')
if state ~= 'r' then
  if not state and qcap > 0 and redis.call('ZCARD', K_INF) + redis.call('ZCARD', K_MQ) >= qcap then
    return result(-2, 0, 0, 0)
  end
  if tk ~= nil and cost > tk.cap then
    return result(-3, 0, 0, 0)
  end
  local used = tonumber(redis.call('GET', K_DAY) or '0') or 0
  if daily > 0 and used + cost > daily then
    leave_subject_queue()
    redis.call('DEL', K_T)
    return result(-4, 0, 0, 0)
  end
  local wait = math.max(need_ms(rq, 1), need_ms(tk, cost))
  local conc_ok = max_conc <= 0 or redis.call('ZCARD', K_CONC) < max_conc
  local head = redis.call('ZRANGE', K_SQ, 0, 0)
  local my_turn = (#head == 0) or (head[1] == ticket)
  if wait == 0 and conc_ok and my_turn then
    if rq ~= nil then rq.lvl = rq.lvl - 1; save(rq) end
    if tk ~= nil then tk.lvl = tk.lvl - cost; save(tk) end
    redis.call('INCRBY', K_DAY, cost)
    redis.call('EXPIRE', K_DAY, day_ttl)
    -- A short lease until the model admits it: a waiter that vanishes frees its slot soon.
    zadd_expiring(K_CONC, now + waiter_ms, ticket)
    leave_subject_queue()
    redis.call('HSET', K_T, 's', 'r', 'c', cost)
    redis.call('PEXPIRE', K_T, waiter_ms)
  else
    local blocked = conc_ok and 0 or 1
    if wait_left <= 0 or wait > wait_left then
      leave_subject_queue()
      redis.call('DEL', K_T)
      return result(-1, wait, 0, blocked)
    end
    if not redis.call('ZSCORE', K_SQ, ticket) then
      -- Arrival order, strictly increasing even within one millisecond.
      local arrival = now
      local last = redis.call('ZRANGE', K_SQ, -1, -1, 'WITHSCORES')
      if #last == 2 and tonumber(last[2]) >= arrival then arrival = tonumber(last[2]) + 1 end
      redis.call('ZADD', K_SQ, arrival, ticket)
    end
    redis.call('PEXPIRE', K_SQ, waiter_ms)
    zadd_expiring(K_SX, now + waiter_ms, ticket)
    redis.call('HSET', K_T, 's', 'w')
    redis.call('PEXPIRE', K_T, waiter_ms)
    return result(0, wait, redis.call('ZRANK', K_SQ, ticket) + 1, blocked)
  end
end

-- Phase 2: reserved; take a model slot or wait for one.
local cost_reserved = tonumber(redis.call('HGET', K_T, 'c')) or cost
zadd_expiring(K_CONC, now + waiter_ms, ticket)
local inflight = redis.call('ZCARD', K_INF)
local vt = tonumber(redis.call('HGET', K_META, 'vt') or '0') or 0
local score = redis.call('ZSCORE', K_MQ, ticket)
local rank, tag
if score then
  rank = redis.call('ZRANK', K_MQ, ticket)
  tag = tonumber(redis.call('HGET', K_T, 'g')) or (vt + 1)
else
  local last = tonumber(redis.call('HGET', K_META, 'u:' .. fair) or '0') or 0
  tag = math.max(vt, last) + 1
  -- Tier first, then the fair tag, then arrival (mod 1000) among equal tags. Integers below
  -- 1e14, so exact as doubles and as Lua's %.14g strings: tags restart whenever the room
  -- empties (below), so they stay far below 1e9.
  local arrival = redis.call('HINCRBY', K_META, 'n', 1) % 1000
  score = (9 - tier) * 1e12 + tag * 1000 + arrival
  rank = redis.call('ZCOUNT', K_MQ, '-inf', '(' .. score)
end
local free = 1e9
if capacity > 0 then free = capacity - inflight end

if rank < free then
  redis.call('ZREM', K_MQ, ticket)
  redis.call('ZREM', K_MX, ticket)
  zadd_expiring(K_INF, now + lease_ms, ticket)
  zadd_expiring(K_CONC, now + lease_ms, ticket)
  if redis.call('ZCARD', K_MQ) == 0 then
    -- Nobody waits: no contention to be fair about, so virtual time starts over.
    local d = redis.call('HGET', K_META, 'd')
    redis.call('DEL', K_META)
    if d then redis.call('HSET', K_META, 'd', d) end
  elseif tag - 1 > vt then
    redis.call('HSET', K_META, 'vt', tag - 1)
  end
  redis.call('PEXPIRE', K_META, 86400000)
  redis.call('DEL', K_T)
  return result(1, 0, 0, 0)
end

local per_job = tonumber(redis.call('HGET', K_META, 'd') or '0') or 0
local eta = math.ceil(per_job * math.ceil((rank + 1) / math.max(capacity, 1)))
if wait_left <= 0 then
  -- Give the reservation back: the request is refused, not served.
  if rq ~= nil then rq.lvl = math.min(rq.cap, rq.lvl + 1); save(rq) end
  if tk ~= nil then tk.lvl = math.min(tk.cap, tk.lvl + cost_reserved); save(tk) end
  refund_day(K_DAY, cost_reserved)
  redis.call('ZREM', K_CONC, ticket)
  redis.call('ZREM', K_MQ, ticket)
  redis.call('ZREM', K_MX, ticket)
  redis.call('DEL', K_T)
  return result(-2, eta, rank + 1, 0)
end
if not redis.call('ZSCORE', K_MQ, ticket) then
  redis.call('ZADD', K_MQ, score, ticket)
  redis.call('HSET', K_META, 'u:' .. fair, tag)
  redis.call('PEXPIRE', K_META, 86400000)
  redis.call('HSET', K_T, 'g', tag)
end
redis.call('PEXPIRE', K_MQ, waiter_ms)
zadd_expiring(K_MX, now + waiter_ms, ticket)
redis.call('PEXPIRE', K_T, waiter_ms)
return result(2, eta, rank + 1, 0)
