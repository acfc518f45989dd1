-- ratemw: check every hit of one request and consume them all only if every enforced hit
-- fits (all-or-nothing), in one round trip, on the Redis server's clock.
--
-- KEYS[i]: the storage key of hit i.
-- ARGV: mode ("acquire" or "peek"), then 5 values per hit:
--   strategy ("fw" fixed window, "mw" moving window, "sw" sliding-window counter),
--   amount, window (ms), cost, enforce ("1" or "0").
-- Returns 4 integers per hit: fits (1/0), remaining, reset (ms), wait (ms, -1 = never),
-- then the server time (ms) the decision was made at.
--
-- The arithmetic mirrors ratemw/storage/_strategies.py line for line.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]

local function fixed_window(key, amount, window, cost)
  local ttl = redis.call('PTTL', key)
  local count = 0
  local reset = window
  local fresh = true
  if ttl > 0 then
    count = tonumber(redis.call('GET', key) or '0')
    reset = ttl
    fresh = false
  end
  local state = {fresh = fresh, reset = reset}
  if count + cost <= amount then
    return 1, amount - count - cost, reset, 0, state
  end
  local wait = reset
  if cost > amount then wait = -1 end
  return 0, amount - count, reset, wait, state
end

local function consume_fixed(key, window, cost, state)
  if state.fresh then
    redis.call('SET', key, cost, 'PX', window)
  else
    redis.call('INCRBY', key, cost)
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
  local stale = #raw - #entries
  local state = {stale = stale}
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

local function consume_moving(key, window, cost, state)
  for _ = 1, state.stale do redis.call('RPOP', key) end
  redis.call('LPUSH', key, now .. ':' .. cost)
  redis.call('PEXPIRE', key, window)
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
  redis.call('PEXPIRE', key, 2 * window)
end

local checks = {fw = fixed_window, mw = moving_window, sw = sliding_window}
local consumes = {fw = consume_fixed, mw = consume_moving, sw = consume_sliding}

local out = {}
local pending = {}
local admit = true
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 5
  local strategy = ARGV[base + 1]
  local amount, window, cost = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local fits, remaining, reset, wait, state = checks[strategy](KEYS[i], amount, window, cost)
  if fits == 0 and ARGV[base + 5] == '1' then admit = false end
  pending[i] = {strategy, window, cost, state, fits}
  out[#out + 1] = fits
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = wait
end

if mode == 'acquire' and admit then
  for i = 1, #KEYS do
    local p = pending[i]
    if p[5] == 1 then consumes[p[1]](KEYS[i], p[2], p[3], p[4]) end
  end
else
  -- Nothing consumed: a hit that fitted keeps its units.
  for i = 1, #KEYS do
    if out[(i - 1) * 4 + 1] == 1 then
      out[(i - 1) * 4 + 2] = out[(i - 1) * 4 + 2] + pending[i][3]
    end
  end
end
out[#out + 1] = now
return out
