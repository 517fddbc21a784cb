-- Read-only: the subject's live levels (headers, /api/v1/me/quota).
-- KEYS: 1 request bucket, 2 token bucket, 3 subject leases, 4 day counter
-- ARGV: 1 rpm, 2 tpm, 3 burst
local rq = bucket(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[3]))
local tk = bucket(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))
local conc = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
local used = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
return {level(rq), reset_ms(rq), level(tk), reset_ms(tk), conc, used}
