-- A waiting request gives up (client gone, server shutting down): leave every queue and
-- give back what phase 1 reserved. KEYS as admit.lua. ARGV: 1 ticket, 2 rpm, 3 tpm, 4 burst.
-- Returns 1 if a reservation was given back.
local K_REQ, K_TOK, K_CONC, K_DAY, K_SQ, K_SX, K_INF, K_MQ, K_MX, K_META, K_T =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local ticket = ARGV[1]
local rpm, tpm, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for _, key in ipairs({K_SQ, K_SX, K_MQ, K_MX}) do redis.call('ZREM', key, ticket) end
local state = redis.call('HGET', K_T, 's')
local cost = tonumber(redis.call('HGET', K_T, 'c')) or 0
redis.call('DEL', K_T)
if state ~= 'r' then return 0 end
if redis.call('ZREM', K_CONC, ticket) == 0 then return 0 end
local rq = bucket(K_REQ, rpm, burst)
local tk = bucket(K_TOK, tpm, burst)
if rq ~= nil then rq.lvl = math.min(rq.cap, rq.lvl + 1); save(rq) end
if tk ~= nil then tk.lvl = math.min(tk.cap, tk.lvl + cost); save(tk) end
refund_day(K_DAY, cost)
return 1
