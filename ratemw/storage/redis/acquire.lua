-- ratemw: check every hit of one request and consume them all only if every enforced hit
-- fits (all-or-nothing), in one round trip, on the Redis server's clock.
--
-- KEYS[i]: the storage key of hit i (all in one hash slot on a cluster).
-- ARGV[1]: "<acquire|peek> <time>" or "<refund|undo> <stamp> [<time>]". mode: "acquire",
--   "peek", "refund" (give back what an acquire at <stamp> took), "undo" (the same, for a
--   request that was refused after all: a fixed window it opened is closed again, as if the
--   request had never come). time, in ms: the clock to use instead of this server's (left
--   out or "0": this server's TIME; a request spanning cluster slots uses its first slot's
--   time on all of them, so that every hit carries one stamp; tests pass a clock of their
--   own to hold this script to ratemw/storage/strategies.py exactly);
-- ARGV[1 + i]: hit i as "<strategy> <amount> <window ms> <cost> <enforce 1/0> <extra>":
--   strategy "fw" fixed window, "mw" moving window, "sw" sliding-window counter, "gc" GCRA,
--   "cc" concurrency; extra is the GCRA burst (0 = amount) or the concurrency token.
--   (One argument per hit rather than six: every argument costs the client time to pack.)
-- ARGV[#KEYS + 2]: the call's token, a whole number the reply ends with, so that the client
--   can tell its reply from any other (a connection out of step is closed, never trusted).
-- Returns 4 integers per hit: fits (1/0), remaining, reset (ms), wait (ms, -1 = never),
-- then the time (ms) the decision was made at, then the token; "refund"/"undo" return
-- {token}.
--
-- Every argument is checked before anything is written: a call the script cannot count
-- exactly is refused whole with an error reply starting "ratemw:", naming the argument,
-- and leaves every key as it was. The arithmetic mirrors ratemw/storage/strategies.py line
-- for line.

local tonumber, math, string, redis, ipairs = tonumber, math, string, redis, ipairs

-- Every number the script computes, stores or sends to Redis stays a whole number below
-- 2^53, where Lua's doubles are exact and Redis prints them as digits (a larger one would
-- go out as "1e+17", which PEXPIRE refuses). A cost has no upper bound: one larger than
-- its quota never fits, is never written, and only compares as larger than any count.
local MAX_COUNT = 2 ^ 53 - 1  -- amount, burst
local MAX_WINDOW = 2 ^ 51     -- ms (about 71,000 years); now + 2 windows stays below 2^53
local MAX_PRODUCT = 2 ^ 52    -- units x window ms, for the strategies that multiply them
local MAX_TOKEN = 2 ^ 53 - 1

local function refuse(what)
  return redis.error_reply('ERR ratemw: ' .. what)
end

local function quoted(text)
  text = string.gsub(tostring(text), '%c', '?')  -- an error reply is one line
  if #text > 40 then text = string.sub(text, 1, 40) .. '...' end
  return "'" .. text .. "'"
end

-- A whole number written in digits, from low to high; nil for anything else.
local function whole(text, low, high)
  if text == nil or #text > 16 or not string.match(text, '^%d+$') then return nil end
  local n = tonumber(text)
  if n < low or n > high then return nil end
  return n
end

if #ARGV ~= #KEYS + 2 then
  return refuse('expected ' .. (#KEYS + 2) .. ' arguments for ' .. #KEYS .. ' keys, got ' .. #ARGV)
end
local DECIDING = {acquire = true, peek = true}
local HANDING_BACK = {refund = true, undo = true}
local mode, time_arg, clock_arg = string.match(ARGV[1], '^(%a+) (%S+) (%S+)$')
if mode == nil then mode, time_arg = string.match(ARGV[1], '^(%a+) (%S+)$') end
if not (DECIDING[mode] and clock_arg == nil or HANDING_BACK[mode]) then
  return refuse('ARGV[1] ' .. quoted(ARGV[1]) ..
    ' is not "<acquire|peek> <time ms>" nor "<refund|undo> <stamp ms> [<time ms>]"')
end
local stamp = whole(time_arg, 0, MAX_WINDOW)
if stamp == nil then
  return refuse('time ' .. quoted(time_arg) .. ' is not a whole number of ms from 0 to 2^51')
end
local clock = stamp  -- "acquire"/"peek": the time to decide on; "refund"/"undo": the stamp
if HANDING_BACK[mode] then
  clock = whole(clock_arg or '0', 0, MAX_WINDOW)
  if clock == nil then
    return refuse('time ' .. quoted(clock_arg) .. ' is not a whole number of ms from 0 to 2^51')
  end
end
local token = whole(ARGV[#ARGV], 0, MAX_TOKEN)
if token == nil then
  return refuse('token ' .. quoted(ARGV[#ARGV]) .. ' is not a whole number from 0 to 2^53 - 1')
end

local now = clock
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Every decision compares times on `now` (TIME, or the request's clock) with times stored in
-- the keys; expiry only reclaims memory. A key outlives its last use by this margin, so that
-- Redis's own millisecond clock (and, on a cluster, another node's) can never drop state
-- that still counts.
local EXPIRY_MARGIN = 1000

local function expire_at(key, at)
  redis.call('PEXPIRE', key, at - now + EXPIRY_MARGIN)
end

-- Fixed window: a hash {c = count, e = window end (ms)}; the window starts at a key's first hit.
local function fixed_current(key)
  local v = redis.call('HMGET', key, 'c', 'e')
  local e = tonumber(v[2])
  if e == nil or now >= e then return 0, nil end
  return tonumber(v[1]) or 0, e
end

local function fixed_window(key, amount, window, cost)
  local count, e = fixed_current(key)
  local reset = window
  if e then reset = e - now end
  local state = {e = e}
  if count + cost <= amount then
    return 1, amount - count - cost, reset, 0, state
  end
  local wait = reset
  if cost > amount then wait = -1 end
  return 0, amount - count, reset, wait, state
end

local function consume_fixed(key, window, cost, state)
  if state.e then
    redis.call('HINCRBY', key, 'c', cost)
  else
    redis.call('HSET', key, 'c', cost, 'e', now + window)
    expire_at(key, now + window)
  end
end

-- Moving window: a list of "stamp:cost" entries, newest first.
local function moving_window(key, amount, window, cost)
  local raw = redis.call('LRANGE', key, 0, -1)
  local entries = {}
  local used = 0
  for i = #raw, 1, -1 do  -- oldest first
    local sep = string.find(raw[i], ':', 1, true)
    local stamp = tonumber(string.sub(raw[i], 1, sep - 1))
    local c = tonumber(string.sub(raw[i], sep + 1))
    if stamp > now - window then
      entries[#entries + 1] = {stamp, c}
      used = used + c
    end
  end
  local state = {stale = #raw - #entries}
  if used + cost <= amount then
    return 1, amount - used - cost, window, 0, state
  end
  local reset = 0
  if #entries > 0 then reset = entries[#entries][1] + window - now end
  if cost > amount then return 0, amount - used, reset, -1, state end
  local needed = used + cost - amount
  local freed = 0
  for i = 1, #entries do
    freed = freed + entries[i][2]
    if freed >= needed then
      return 0, amount - used, reset, entries[i][1] + window - now, state
    end
  end
  return 0, amount - used, reset, -1, state
end

-- "%d", not tostring: every digit of a large number (tostring prints 14 significant ones).
local function moving_entry(at, cost)
  return string.format('%d:%d', at, cost)
end

local function consume_moving(key, window, cost, state)
  for _ = 1, state.stale do redis.call('RPOP', key) end
  redis.call('LPUSH', key, moving_entry(now, cost))
  expire_at(key, now + window)
end

-- Sliding-window counter: a hash {s = current window start, p = previous count, c = current}.
local function sliding_current(key, window)
  local start = now - now % window
  local v = redis.call('HMGET', key, 's', 'p', 'c')
  local s, p, c = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if s == start then return start, p, c end
  if s == start - window then return start, c, 0 end
  return start, 0, 0
end

local function sliding_wait(start, prev, curr, amount, window, cost)
  local spare = amount - curr - cost
  if spare >= 0 and prev > 0 then
    local needed = window - math.floor(spare * window / prev)
    if needed < window then return math.max(needed - (now - start), 0) end
  end
  local next_start = start + window
  if curr == 0 then return next_start - now end
  local needed = math.max(window - math.floor((amount - cost) * window / curr), 0)
  return next_start + needed - now
end

local function sliding_window(key, amount, window, cost)
  local start, prev, curr = sliding_current(key, window)
  local elapsed = now - start
  local room = amount * window - (prev * (window - elapsed) + curr * window)
  local reset = 0
  if curr + cost > 0 then
    reset = start + 2 * window - now
  elseif prev > 0 then
    reset = start + window - now
  end
  local state = {start = start, prev = prev, curr = curr}
  if cost * window <= room then
    return 1, math.floor((room - cost * window) / window), reset, 0, state
  end
  local remaining = math.floor(math.max(room, 0) / window)
  if cost > amount then return 0, remaining, reset, -1, state end
  return 0, remaining, reset, sliding_wait(start, prev, curr, amount, window, cost), state
end

local function consume_sliding(key, window, cost, state)
  redis.call('HSET', key, 's', state.start, 'p', state.prev, 'c', state.curr + cost)
  expire_at(key, state.start + 2 * window)
end

-- GCRA: a hash {t = theoretical arrival time (ms), r = remainder in 1/amount ms}.
local function gcra_backlog(key, amount)
  local v = redis.call('HMGET', key, 't', 'r')
  local tat = tonumber(v[1])
  if tat == nil then return 0 end
  return math.max((tat - now) * amount + (tonumber(v[2]) or 0), 0)
end

local function ceil_div(a, b)
  return -math.floor(-a / b)
end

local function gcra(key, amount, window, cost, extra)
  local burst = tonumber(extra)
  if burst == nil or burst == 0 then burst = amount end
  local capacity = burst * window
  local backlog = gcra_backlog(key, amount)
  local after = backlog + cost * window
  local state = {after = after}
  if after <= capacity then
    return 1, math.floor((capacity - after) / window), ceil_div(after, amount), 0, state
  end
  local remaining = math.floor((capacity - backlog) / window)
  local reset = ceil_div(backlog, amount)
  if cost > burst then return 0, remaining, reset, -1, state end
  return 0, remaining, reset, ceil_div(after - capacity, amount), state
end

local function gcra_store(key, amount, backlog)
  local tat = now + math.floor(backlog / amount)
  redis.call('HSET', key, 't', tat, 'r', backlog % amount)
  expire_at(key, tat + 1)
end

local function consume_gcra(key, window, cost, state, amount)
  gcra_store(key, amount, state.after)
end

-- Concurrency: a sorted set of the requests in flight, token -> time its slot lapses.
local function concurrency(key, amount, window, cost, extra)
  local in_flight = redis.call('ZCOUNT', key, '(' .. now, '+inf')
  if in_flight + 1 <= amount then return 1, amount - in_flight - 1, 0, 0, {token = extra} end
  -- When a slot frees is up to the requests in flight; ask again in a second.
  return 0, amount - in_flight, 0, 1000, {token = extra}
end

local function consume_concurrency(key, window, cost, state)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('ZADD', key, now + window, state.token)
  expire_at(key, now + window)
end

local checks = {
  fw = fixed_window, mw = moving_window, sw = sliding_window, gc = gcra, cc = concurrency
}
local consumes = {
  fw = consume_fixed, mw = consume_moving, sw = consume_sliding, gc = consume_gcra,
  cc = consume_concurrency
}
local refunds = {}

-- ratemw: strategies of your own are inserted here --

-- Hand back what an "acquire" at `stamp` consumed (mirrors each strategy's refund()).
local function refund(key, strategy, amount, window, cost, extra)
  if strategy == 'fw' then
    local _, e = fixed_current(key)
    -- Only the window the hit was counted in can give it back.
    if e and stamp >= e - window then
      local left = redis.call('HINCRBY', key, 'c', -cost)
      if left <= 0 then
        if mode == 'undo' then redis.call('DEL', key) else redis.call('HSET', key, 'c', 0) end
      end
    end
  elseif strategy == 'mw' then
    redis.call('LREM', key, 1, moving_entry(stamp, cost))
  elseif strategy == 'sw' then
    local s = tonumber(redis.call('HGET', key, 's'))
    if s == stamp - stamp % window and redis.call('HINCRBY', key, 'c', -cost) < 0 then
      redis.call('HSET', key, 'c', 0)
    end
  elseif strategy == 'gc' then
    if redis.call('EXISTS', key) == 1 then
      gcra_store(key, amount, math.max(gcra_backlog(key, amount) - cost * window, 0))
    end
  elseif strategy == 'cc' then
    redis.call('ZREM', key, extra)
  elseif refunds[strategy] then
    refunds[strategy](key, amount, window, cost, extra, stamp)
  end
end

-- Each hit's arguments, checked: {strategy, amount, window, cost, enforce, extra}, or nil
-- and what is wrong with them.
local HIT = '^(%S+) (%d+) (%d+) (%d+) ([01]) (%S*)$'
local FIELDS = '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S*)$'

-- Why a hit's text does not match HIT: which field is not what it should be.
local function malformed(text)
  local _, amount, window, cost, enforce = string.match(text, FIELDS)
  if amount == nil then
    return quoted(text) .. ' is not "<strategy> <amount> <window ms> <cost> <enforce> <extra>"'
  end
  for _, field in ipairs({{'amount', amount}, {'window', window}, {'cost', cost}}) do
    if not string.match(field[2], '^%d+$') then
      return field[1] .. ' ' .. quoted(field[2]) .. ' is not a whole number'
    end
  end
  return 'enforce ' .. quoted(enforce) .. ' is not 0 or 1'
end

local function parse_hit(text)
  local strategy, amount, window, cost, enforce, extra = string.match(text, HIT)
  if strategy == nil then return nil, malformed(text) end
  if checks[strategy] == nil then return nil, 'unknown strategy ' .. quoted(strategy) end
  amount, window, cost = tonumber(amount), tonumber(window), tonumber(cost)
  if amount < 1 or amount > MAX_COUNT then
    return nil, 'amount ' .. quoted(amount) .. ' is not from 1 to 2^53 - 1'
  end
  if window < 1 or window > MAX_WINDOW then
    return nil, 'window ' .. quoted(window) .. ' is not from 1 to 2^51 ms'
  end
  if cost < 1 then return nil, 'cost ' .. quoted(cost) .. ' is below 1' end
  -- What is handed back was counted, so fits in a count (and HINCRBY takes it as digits).
  if cost > MAX_COUNT and (mode == 'refund' or mode == 'undo') then
    return nil, 'cost ' .. quoted(cost) .. ' is above 2^53 - 1: it cannot have been counted'
  end
  if strategy == 'gc' then
    local burst = whole(extra, 0, MAX_COUNT)
    if burst == nil then return nil, 'burst is not a whole number from 0 to 2^53 - 1' end
    if burst == 0 then burst = amount end
    if burst * window > MAX_PRODUCT then
      return nil, 'burst x window exceeds 2^52: too large to count exactly'
    end
  elseif strategy == 'sw' then
    if amount * window > MAX_PRODUCT then
      return nil, 'amount x window exceeds 2^52: too large to count exactly'
    end
  elseif strategy == 'cc' and extra == '' then
    return nil, 'no token for the concurrency slot'
  end
  return {strategy, amount, window, cost, enforce == '1', extra}
end

-- What a refund may find in a key: anything else is left alone, and the call refused.
local TYPES = {fw = 'hash', mw = 'list', sw = 'hash', gc = 'hash', cc = 'zset'}

local hits = {}
local seen = {}
for i = 1, #KEYS do
  local hit, why = parse_hit(ARGV[i + 1])
  if hit == nil then return refuse('hit ' .. i .. ' (' .. quoted(KEYS[i]) .. '): ' .. why) end
  hits[i] = hit
  if #KEYS > 1 then
    -- One key counted by two strategies would meet a key of the wrong type half-way.
    local other = seen[KEYS[i]]
    if other ~= nil and other ~= hit[1] then
      return refuse('hit ' .. i .. ' (' .. quoted(KEYS[i]) .. '): the key is counted by ' ..
        quoted(other) .. ' too')
    end
    seen[KEYS[i]] = hit[1]
  end
end

if mode == 'refund' or mode == 'undo' then
  -- Refunds write as they go: every key is checked first.
  for i = 1, #KEYS do
    local expected = TYPES[hits[i][1]]
    local found = redis.call('TYPE', KEYS[i])['ok']
    if expected and found ~= 'none' and found ~= expected then
      return refuse('hit ' .. i .. ' (' .. quoted(KEYS[i]) .. '): the key holds a ' .. found)
    end
  end
  local handed = {}  -- a key is handed back once per call, by its first hit (as it is counted)
  for i = 1, #KEYS do
    local h = hits[i]
    if not handed[KEYS[i]] then
      handed[KEYS[i]] = true
      refund(KEYS[i], h[1], h[2], h[3], h[4], h[6])
    end
  end
  return {token}
end

local out = {}
local pending = {}
local admit = true
for i = 1, #KEYS do
  local h = hits[i]
  local strategy, amount, window, cost = h[1], h[2], h[3], h[4]
  local fits, remaining, reset, wait, state = checks[strategy](KEYS[i], amount, window, cost, h[6])
  if fits == 0 and h[5] then admit = false end
  pending[i] = {strategy, window, cost, state, fits, amount}
  out[#out + 1] = fits
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = wait
end

if mode == 'acquire' and admit then
  -- A shadow hit without room is reported, not consumed (as in the memory storage). A key
  -- named by several hits (two limits on one counter) counts the request once: by the first
  -- of its hits that fits. Every hit was checked against the key as the request found it.
  local counted = {}
  for i = 1, #KEYS do
    local p = pending[i]
    if p[5] == 1 and not counted[KEYS[i]] then
      counted[KEYS[i]] = true
      consumes[p[1]](KEYS[i], p[2], p[3], p[4], p[6])
    end
  end
else
  -- Nothing consumed: a hit that fitted keeps its units (a concurrency slot is one unit).
  for i = 1, #KEYS do
    if out[(i - 1) * 4 + 1] == 1 then
      local units = pending[i][3]
      if pending[i][1] == 'cc' then units = 1 end
      out[(i - 1) * 4 + 2] = out[(i - 1) * 4 + 2] + units
    end
  end
end
out[#out + 1] = now
out[#out + 1] = token
return out
