"""The shared store: the :class:`~gateway.store.Store` protocol on Redis, for several
gateway nodes at once (redis-py's asyncio client; Redis >= 7 or Valkey).

Why this shape (docs/scaling.md has the costs and the model at scale):

- **Every state change is one Redis Function call** (library ``cpimgw_3``, loaded with
  ``FUNCTION LOAD REPLACE`` at :meth:`RedisStore.open`): a function runs atomically, so
  :meth:`RedisStore.commit` writes the dedup mark, the queue entries, the subscription
  changes and the last presence together or not at all (DESIGN.md "Delivery"). Functions
  are kept in the AOF, so a restarted Redis still has them.
- **The delivery queue is a Redis Stream read through one consumer group** (``XADD``,
  ``XREADGROUP``, ``XACK``): each node is a consumer; an entry a node read and has not
  finished stays in that node's pending list. A node whose heartbeat expired has its
  pending entries taken by the others once they have been idle ``claim_idle`` seconds
  (``XPENDING ... IDLE`` + ``XCLAIM``; see :mod:`gateway.cluster`). A restarted node reads
  its own pending list first (``XREADGROUP ... 0``) and takes its unfinished work back.
- **Retries wait in a sorted set** scored by their due time; :meth:`RedisStore.claim`
  moves the due ones into the stream before reading it, so every node sees them.
- **Indexes for the operator** (pending and failed ids, pending per target) are kept by
  the same functions, so ``cpimgw queue`` and ``/metrics`` never scan the keyspace.
- **Group commit**: concurrent calls are sent in one pipeline per round trip (each call
  still atomic on its own); ``[store] replicas = N`` appends ``WAIT N`` to each pipeline
  that holds a commit, so a sender is acknowledged only once N replicas have the envelope.
- The dedup window is a key per identity holding the time it was first seen
  (``SET ... PX window``): the decision uses the time passed in, Redis's expiry is the
  housekeeping. Id mappings are keys with a TTL; rate-limit buckets are hashes updated by
  a function (atomic across nodes).
- **Outcomes** (:meth:`RedisStore.outcome`): each entry hash keeps its envelope's
  identity, a set per identity lists its entry ids (kept while an entry can still be
  pending, and a dedup window past that, or past its failure), and a dropped entry
  leaves a mark for a dedup window; :func:`gateway.store.outcome_of` decides from those
  and the dedup mark, in one read-only function call.

All keys of one gateway cluster share the hash tag ``{namespace}``, so they live in one
Redis Cluster slot and multi-key functions stay legal there; a second namespace (another
set of component domains, docs/scaling.md "Sharding by domain") can live on another
Redis or another slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from canonical.envelope import Envelope, Operation
from canonical.errors import ConfigError, DeliveryError, GatewayError, Reason
from gateway.cluster import (
    Consumer,
    Node,
    Timing,
    decode_presence,
    decode_subscription,
    encode_presence,
    encode_subscription,
    may_take_over,
    node_name,
    orphaned,
    retired,
    subscription_field,
)
from gateway.presence import STATE, LastPresence, Subscription
from gateway.store import Accepted, Commit, Entry, EntryState, Outcome, QueueStats, outcome_of
from gateway.store.sqlite import decode_envelope, encode_envelope

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger("cpimgw.store.redis")

#: The library's version: part of every function name, so nodes of two cpimgw versions
#: sharing one Redis each call their own functions during a rolling upgrade.
LIBRARY = "cpimgw_3"
GROUP = "nodes"
#: Attribute the core sets on the SUBSCRIBEs it sends to re-establish subscriptions
#: after a start (gateway.presence.PresenceBook.resubscribe).
REFRESH = "subscription.refresh"

_LIBRARY_CODE = """#!lua name=cpimgw_3
-- Every function takes the key prefix "{namespace}:" as its first argument and declares
-- KEYS[1] = "{namespace}:streams" (so Redis Cluster routes the call to the namespace's
-- slot). The delivery queue is one stream per target adapter, "{namespace}:q:TARGET",
-- each read through the consumer group "nodes" (one consumer per node name).

local function stream(P, target)
  local q = P .. 'q:' .. target
  if redis.call('SADD', P .. 'streams', target) == 1 then
    redis.pcall('XGROUP', 'CREATE', q, 'nodes', '0', 'MKSTREAM')
  end
  return q
end

local function forget_message(P, target, sid)
  if sid and sid ~= '' then
    local q = P .. 'q:' .. target
    redis.call('XACK', q, 'nodes', sid)
    redis.call('XDEL', q, sid)
  end
end

local function unqueue(P, id, f)
  -- forget every trace of entry id (f = state, sid, target) outside its hash
  redis.call('ZREM', P .. 'due', id)
  forget_message(P, f[3], f[2])
  if f[1] == 'pending' then
    redis.call('ZREM', P .. 'pending', id)
    if redis.call('HINCRBY', P .. 'targets', f[3], -1) <= 0 then
      redis.call('HDEL', P .. 'targets', f[3])
    end
  elseif f[1] == 'failed' then
    redis.call('ZREM', P .. 'failed', id)
  end
end

local function keep(key, ms)
  -- make key live at least ms milliseconds from now (never shorten its life; at most
  -- ten years, so the number stays an integer Redis reads)
  ms = math.min(math.max(1, math.ceil(tonumber(ms))), 315360000000)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, string.format('%d', ms))
  end
end

local function book(P, maxlen, ...)
  -- n numbers the changes without gaps: a reader that sees one missing was trimmed past
  local n = redis.call('INCR', P .. 'bookseq')
  redis.call('XADD', P .. 'book', 'MAXLEN', '~', maxlen, '*', 'n', n, ...)
end

-- commit(P, identity, at, window, window_ms, book_maxlen, n,
--        n x (target, expires_at, meta, body, guard, guard_ms, entry_identity),
--        n_subs, n_subs x (field, value), n_ended, n_ended x field, pres_field, pres_value)
local function commit(keys, a)
  local P = a[1]
  local identity, at = a[2], a[3]
  if identity ~= '' then
    local seen = P .. 'seen:' .. identity
    local old = redis.call('GET', seen)
    if old and tonumber(at) - tonumber(old) < tonumber(a[4]) then
      return {1}
    end
    redis.call('SET', seen, at, 'PX', a[5])
  end
  local maxlen = a[6]
  local out = {0}
  local i = 8
  for _ = 1, tonumber(a[7]) do
    local target, expires, meta, body, guard = a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4]
    local guard_ms, ident = a[i + 5], a[i + 6]
    i = i + 7
    local fresh = true
    if guard ~= '' then
      -- an effect several nodes may produce for one event: only the first is queued
      fresh = redis.call('SET', P .. 'guard:' .. guard, at, 'PX', guard_ms, 'NX')
    end
    if fresh then
      local id = tostring(redis.call('INCR', P .. 'seq'))
      local sid = redis.call('XADD', stream(P, target), '*', 'id', id, 'at', at)
      redis.call('HSET', P .. 'e:' .. id, 'target', target, 'state', 'pending',
        'attempts', '0', 'next_at', at, 'created_at', at, 'expires_at', expires,
        'meta', meta, 'body', body, 'sid', sid, 'identity', ident)
      if ident ~= '' then
        local x = P .. 'x:' .. ident
        redis.call('SADD', x, id)
        local life = math.ceil((tonumber(expires) - tonumber(at)) * 1000)
        keep(x, math.max(0, life) + tonumber(a[5]))
      end
      redis.call('ZADD', P .. 'pending', id, id)
      redis.call('HINCRBY', P .. 'targets', target, 1)
      out[#out + 1] = id
    end
  end
  for _ = 1, tonumber(a[i]) do
    redis.call('HSET', P .. 'subs', a[i + 1], a[i + 2])
    book(P, maxlen, 'k', 'put', 'f', a[i + 1], 'v', a[i + 2])
    i = i + 2
  end
  i = i + 1
  for _ = 1, tonumber(a[i]) do
    redis.call('HDEL', P .. 'subs', a[i + 1])
    book(P, maxlen, 'k', 'end', 'f', a[i + 1])
    i = i + 1
  end
  i = i + 1
  if a[i] ~= '' then
    redis.call('HSET', P .. 'pres', a[i], a[i + 1])
    book(P, maxlen, 'k', 'pres', 'f', a[i], 'v', a[i + 1])
  end
  return out
end

local FIELDS = {'state', 'sid', 'target', 'attempts', 'next_at', 'created_at',
  'expires_at', 'last_error', 'meta', 'body'}

local function entry_of(fields)
  if fields then
    for k = 1, #fields, 2 do
      if fields[k] == 'id' then return fields[k + 1] end
    end
  end
  return false
end

-- hand out messages of stream q whose entry is still pending under that message id;
-- ack and delete the others (completed, failed, dropped, or queued again meanwhile)
local function hand_out(q, P, msgs, out)
  local n = 0
  for _, m in ipairs(msgs) do
    local sid, id = m[1], entry_of(m[2])
    local ok = false
    if id then
      local f = redis.call('HMGET', P .. 'e:' .. id, unpack(FIELDS))
      if f[1] == 'pending' and f[2] == sid then
        local k = #out
        out[k + 1] = id
        out[k + 2] = sid
        for j = 3, 10 do out[k + j] = f[j] end
        ok = true
        n = n + 1
      end
    end
    if not ok then
      redis.call('XACK', q, 'nodes', sid)
      redis.call('XDEL', q, sid)
    end
  end
  return n
end

-- claim(P, me, now, count, promote_max, target...): due retries into their streams, then
-- up to count new messages from the streams of the targets named ('*': every stream)
-- -> 10 fields per entry (id, sid, target, attempts, next_at, created_at, expires_at,
--    last_error, meta, body)
local function claim(keys, a)
  local P, me, now, left = a[1], a[2], a[3], tonumber(a[4])
  local due = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', now, 'LIMIT', 0, a[5])
  for _, id in ipairs(due) do
    redis.call('ZREM', P .. 'due', id)
    local e = P .. 'e:' .. id
    local f = redis.call('HMGET', e, 'state', 'next_at', 'target')
    if f[1] == 'pending' then
      redis.call('HSET', e, 'sid', redis.call('XADD', stream(P, f[3]), '*', 'id', id, 'at', f[2]))
    end
  end
  local targets = {}
  if a[6] == '*' then
    targets = redis.call('SMEMBERS', P .. 'streams')
  else
    for k = 6, #a do
      if redis.call('SISMEMBER', P .. 'streams', a[k]) == 1 then targets[#targets + 1] = a[k] end
    end
  end
  local out = {}
  for _, target in ipairs(targets) do
    if left <= 0 then break end
    local q = P .. 'q:' .. target
    local r = redis.call('XREADGROUP', 'GROUP', 'nodes', me, 'COUNT', left, 'STREAMS', q, '>')
    if r then
      hand_out(q, P, r[1][2], out)
      left = left - #r[1][2]
    end
  end
  return out
end

-- requeue_claims(P, me, target, from, min_idle_ms, sid...): take the messages of node from
-- (a dead one, or this node's own unfinished ones) and queue their entries again as new
-- messages of the stream, for any node that serves the target -> how many
local function requeue_claims(keys, a)
  local P, me, target, from = a[1], a[2], a[3], a[4]
  if from ~= me and redis.call('EXISTS', P .. 'node:' .. from) == 1 then return 0 end
  local sids = {}
  for k = 6, #a do sids[#sids + 1] = a[k] end
  if #sids == 0 then return 0 end
  local q = P .. 'q:' .. target
  local n = 0
  for _, m in ipairs(redis.call('XCLAIM', q, 'nodes', me, a[5], unpack(sids))) do
    local sid, id = m[1], entry_of(m[2])
    if id then
      local e = P .. 'e:' .. id
      local f = redis.call('HMGET', e, 'state', 'sid', 'next_at')
      if f[1] == 'pending' and f[2] == sid then
        redis.call('HSET', e, 'sid', redis.call('XADD', q, '*', 'id', id, 'at', f[3]))
        n = n + 1
      end
    end
    redis.call('XACK', q, 'nodes', sid)
    redis.call('XDEL', q, sid)
  end
  if from ~= me and n > 0 then
    redis.call('HINCRBY', P .. 'roster:' .. me, 'recovered', n)
  end
  return n
end

-- complete(P, id, held_target, held_sid)
local function complete(keys, a)
  local P, id = a[1], a[2]
  forget_message(P, a[3], a[4])
  local e = P .. 'e:' .. id
  local f = redis.call('HMGET', e, 'state', 'sid', 'target')
  if not f[1] then return 0 end
  unqueue(P, id, f)
  redis.call('DEL', e)
  return 1
end

-- reschedule(P, id, held_target, held_sid, next_at, attempts, error)
local function reschedule(keys, a)
  local P, id = a[1], a[2]
  forget_message(P, a[3], a[4])
  local e = P .. 'e:' .. id
  local f = redis.call('HMGET', e, 'state', 'sid', 'target')
  if f[1] ~= 'pending' then return 0 end
  if f[2] ~= a[4] then forget_message(P, f[3], f[2]) end
  redis.call('HDEL', e, 'sid')
  redis.call('HSET', e, 'next_at', a[5], 'attempts', a[6], 'last_error', a[7])
  redis.call('ZADD', P .. 'due', a[5], id)
  return 1
end

-- fail(P, id, held_target, held_sid, error, now, window_ms[, report]): with a report
-- reason, the failure report owed to the sender is kept with the entry (set 'reports')
local function fail(keys, a)
  local P, id = a[1], a[2]
  forget_message(P, a[3], a[4])
  local e = P .. 'e:' .. id
  local f = redis.call('HMGET', e, 'state', 'sid', 'target', 'identity')
  if not f[1] then return 0 end
  if f[4] and f[4] ~= '' and a[7] then keep(P .. 'x:' .. f[4], a[7]) end
  unqueue(P, id, f)
  redis.call('HDEL', e, 'sid')
  redis.call('HSET', e, 'state', 'failed', 'last_error', a[5], 'next_at', a[6])
  redis.call('ZADD', P .. 'failed', id, id)
  if a[8] and a[8] ~= '' then
    redis.call('HSET', e, 'report', a[8])
    redis.call('ZADD', P .. 'reports', id, id)
  end
  return 1
end

-- reported(P, id): the failure report of the entry was handed to its origin adapter
local function reported(keys, a)
  local P, id = a[1], a[2]
  redis.call('ZREM', P .. 'reports', id)
  redis.call('DEL', P .. 'guard:report:' .. id)
  if redis.call('EXISTS', P .. 'e:' .. id) == 1 then
    redis.call('HDEL', P .. 'e:' .. id, 'report')
  end
  return 1
end

-- take_reports(P, value, hold_ms, id...): of these reports, the ids still owed (not
-- reported since they were read) that no other node holds; each one returned is held for
-- value for hold_ms
local function take_reports(keys, a)
  local P, value, hold = a[1], a[2], a[3]
  local out = {}
  for i = 4, #a do
    local k = P .. 'guard:report:' .. a[i]
    local holder = redis.call('GET', k)
    local owed = redis.call('ZSCORE', P .. 'reports', a[i])
    if owed and (not holder or holder == value) then
      redis.call('SET', k, value, 'PX', hold)
      out[#out + 1] = a[i]
    end
  end
  return out
end

-- requeue(P, now, window_ms, id...): failed or pending entries become pending and due now
local function requeue(keys, a)
  local P, now = a[1], a[2]
  local n = 0
  for k = 4, #a do
    local id = a[k]
    local e = P .. 'e:' .. id
    local f = redis.call('HMGET', e, 'state', 'sid', 'target', 'identity', 'expires_at')
    if f[1] and f[4] and f[4] ~= '' then
      local x = P .. 'x:' .. f[4]
      redis.call('SADD', x, id)
      local life = math.ceil((tonumber(f[5]) - tonumber(now)) * 1000)
      keep(x, math.max(0, life) + tonumber(a[3]))
    end
    if f[1] == 'failed' then
      redis.call('ZREM', P .. 'failed', id)
      redis.call('ZREM', P .. 'reports', id)
      redis.call('HDEL', e, 'report')
      redis.call('ZADD', P .. 'pending', id, id)
      redis.call('HINCRBY', P .. 'targets', f[3], 1)
      redis.call('HSET', e, 'state', 'pending', 'next_at', now, 'attempts', '0')
      redis.call('ZADD', P .. 'due', now, id)
      n = n + 1
    elseif f[1] == 'pending' then
      redis.call('HSET', e, 'next_at', now, 'attempts', '0')
      if not f[2] then redis.call('ZADD', P .. 'due', now, id) end
      n = n + 1
    end
  end
  return n
end

-- drop(P, window_ms, id...)
local function drop(keys, a)
  local P = a[1]
  local n = 0
  for k = 3, #a do
    local e = P .. 'e:' .. a[k]
    local f = redis.call('HMGET', e, 'state', 'sid', 'target', 'identity')
    if f[1] then
      if f[4] and f[4] ~= '' then
        redis.call('SET', P .. 'dropped:' .. f[4], '1', 'PX', a[2])
      end
      unqueue(P, a[k], f)
      redis.call('DEL', e)
      redis.call('ZREM', P .. 'reports', a[k])
      n = n + 1
    end
  end
  return n
end

-- outcome(P, identity) -> {seen 0/1, dropped 0/1, state, attempts, last_error, ...} for
-- each entry of the identity still stored
local function outcome(keys, a)
  local P, ident = a[1], a[2]
  local out = {redis.call('EXISTS', P .. 'seen:' .. ident),
    redis.call('EXISTS', P .. 'dropped:' .. ident)}
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'x:' .. ident)) do
    local f = redis.call('HMGET', P .. 'e:' .. id, 'state', 'attempts', 'last_error')
    if f[1] then
      out[#out + 1] = f[1]
      out[#out + 1] = f[2] or '0'
      out[#out + 1] = f[3] or ''
    end
  end
  return out
end

-- stats(P) -> {pending, failed, scheduled, oldest created_at or '', target, count, ...}
local function stats(keys, a)
  local P = a[1]
  local out = {redis.call('ZCARD', P .. 'pending'), redis.call('ZCARD', P .. 'failed'),
    redis.call('ZCARD', P .. 'due'), ''}
  local first = redis.call('ZRANGE', P .. 'pending', 0, 0)
  if first[1] then
    out[4] = redis.call('HGET', P .. 'e:' .. first[1], 'created_at') or ''
  end
  local targets = redis.call('HGETALL', P .. 'targets')
  for k = 1, #targets do out[#out + 1] = targets[k] end
  return out
end

-- next_due(P, target...) -> the earliest due time of an entry no node has read, among
-- the retries and the streams of the targets named ('*': every stream), or false
local function next_due(keys, a)
  local P = a[1]
  local best = false
  local due = redis.call('ZRANGE', P .. 'due', 0, 0, 'WITHSCORES')
  if due[2] then best = tonumber(due[2]) end
  local targets = {}
  if a[2] == '*' then
    targets = redis.call('SMEMBERS', P .. 'streams')
  else
    for k = 2, #a do targets[#targets + 1] = a[k] end
  end
  for _, target in ipairs(targets) do
    local q = P .. 'q:' .. target
    if redis.call('EXISTS', q) == 1 then
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', q)) do
        local info = {}
        for k = 1, #g, 2 do info[g[k]] = g[k + 1] end
        if info['name'] == 'nodes' then
          local r = redis.call('XRANGE', q, '(' .. info['last-delivered-id'], '+', 'COUNT', 1)
          if r[1] then
            local f = r[1][2]
            for k = 1, #f, 2 do
              if f[k] == 'at' then
                local at = tonumber(f[k + 1])
                if not best or at < best then best = at end
              end
            end
          end
        end
      end
    end
  end
  if best then return tostring(best) end
  return false
end

-- take_token(P, key, rate, burst, now, ttl_ms) -> '0' or the seconds to wait
local function take_token(keys, a)
  local k = a[1] .. 'tb:' .. a[2]
  local rate, burst, now = tonumber(a[3]), tonumber(a[4]), tonumber(a[5])
  local f = redis.call('HMGET', k, 'tokens', 'stamp')
  local tokens, stamp = burst, now
  if f[1] then tokens, stamp = tonumber(f[1]), tonumber(f[2]) end
  tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
  local wait = '0'
  if tokens >= 1 then
    tokens = tokens - 1
  elseif rate > 0 then
    wait = string.format('%.17g', (1 - tokens) / rate)
  else
    wait = 'inf'
  end
  redis.call('HSET', k, 'tokens', string.format('%.17g', tokens), 'stamp', a[5])
  redis.call('PEXPIRE', k, a[6])
  return wait
end

-- node(P, mode, name, value, now, ttl_ms): 'join' and 'beat' renew the heartbeat of
-- node name when nobody else holds it ('force' takes it anyway) and return 'ok', else
-- the holder's value; 'leave' gives it up
local function node(keys, a)
  local P, mode, name, value, now = a[1], a[2], a[3], a[4], a[5]
  local k = P .. 'node:' .. name
  local holder = redis.call('GET', k)
  if mode == 'leave' then
    if holder == value then redis.call('DEL', k) end
    redis.call('HSET', P .. 'roster:' .. name, 'stopped_at', now)
    return 'ok'
  end
  if holder and holder ~= value and mode ~= 'force' then return holder end
  redis.call('SET', k, value, 'PX', a[6])
  redis.call('SADD', P .. 'roster', name)
  if mode == 'beat' then
    redis.call('HSET', P .. 'roster:' .. name, 'node', value, 'beat_at', now)
  else
    redis.call('HSET', P .. 'roster:' .. name, 'node', value, 'beat_at', now, 'stopped_at', '')
  end
  return 'ok'
end

-- lease(P, mode, name, value, ttl_ms): 'acquire' or renew the lease name for value
-- -> 1 (held) or 0; 'release' it; 'holder' -> its value or false
local function lease(keys, a)
  local P, mode, name, value = a[1], a[2], a[3], a[4]
  local k = P .. 'lease:' .. name
  local holder = redis.call('GET', k)
  if mode == 'holder' then return holder end
  if mode == 'release' then
    if holder == value then redis.call('DEL', k) end
    return 0
  end
  if holder == value then
    redis.call('PEXPIRE', k, a[5])
    return 1
  end
  if not holder and mode == 'acquire' then
    redis.call('SET', k, value, 'PX', a[5])
    return 1
  end
  return 0
end

-- retire(P, name): remove a dead node's consumer from every stream where it holds nothing
local function retire(keys, a)
  local P, name = a[1], a[2]
  if redis.call('EXISTS', P .. 'node:' .. name) == 1 then return 0 end
  local n = 0
  for _, target in ipairs(redis.call('SMEMBERS', P .. 'streams')) do
    local q = P .. 'q:' .. target
    if redis.call('EXISTS', q) == 1
        and #redis.call('XPENDING', q, 'nodes', '-', '+', 1, name) == 0 then
      n = n + redis.call('XGROUP', 'DELCONSUMER', q, 'nodes', name)
    end
  end
  return n
end

local function register(name, fn, flags)
  redis.register_function{function_name = 'cpimgw_3_' .. name, callback = fn, flags = flags}
end
register('commit', commit, {})
register('claim', claim, {})
register('requeue_claims', requeue_claims, {})
register('complete', complete, {})
register('reschedule', reschedule, {})
register('fail', fail, {})
register('reported', reported, {})
register('take_reports', take_reports, {})
register('requeue', requeue, {})
register('drop', drop, {})
register('stats', stats, {'no-writes'})
register('outcome', outcome, {'no-writes'})
register('next_due', next_due, {'no-writes'})
register('take_token', take_token, {})
register('node', node, {})
register('lease', lease, {})
register('retire', retire, {})
"""

_CONNECTION_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    OSError,
)


def _stale(exc: BaseException) -> bool:
    """A broken connection (not a slow server, not a loading one): worth one more try."""
    return isinstance(exc, redis_errors.ConnectionError) and not isinstance(
        exc, redis_errors.BusyLoadingError
    )


def unavailable(url: str, exc: BaseException) -> DeliveryError:
    """The error every caller sees while the shared store cannot be reached."""
    return DeliveryError(
        f"the shared store at {url} is unreachable: {exc}",
        retryable=True,
        reason=Reason.UNAVAILABLE,
        hint="check that Redis runs and this node reaches it; send again in a moment",
        retry_after=5.0,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _num(value: float) -> str:
    """A float as Redis and Lua read it back exactly."""
    return repr(float(value))


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the presence change log: ``put``/``end`` a subscription (``field`` is
    :func:`~gateway.cluster.subscription_field`), or ``pres``: a presentity's last
    presence (``value`` from :func:`~gateway.cluster.encode_presence`)."""

    id: str
    kind: str
    field: str
    value: bytes = b""
    seq: int = 0


@dataclass(slots=True)
class _Call:
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    wait: bool = False


@dataclass(slots=True)
class _Pipeline:
    """Group commit over one connection: calls made while a round trip is in flight go
    together in the next one (each call still atomic on its own)."""

    client: Redis
    url: str
    reload: Callable[[], Any]
    replicas: int = 0
    replica_timeout: float = 1.0
    limit: int = 512
    queue: list[_Call] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    round_trips: int = 0
    calls: int = 0

    def call(self, *args: Any, wait: bool = False) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append(_Call(args, future, wait))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain(), name="cpimgw-store:redis")
        return future

    async def flush(self) -> None:
        while self.task is not None and not self.task.done():
            await asyncio.shield(self.task)

    async def _drain(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[: self.limit], self.queue[self.limit :]
            try:
                await self._send(batch, retry=True)
            except Exception as exc:  # noqa: BLE001 - every caller gets it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    async def _send(self, batch: list[_Call], *, retry: bool) -> None:
        waits = self.replicas > 0 and any(c.wait for c in batch)
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for item in batch:
                pipe.execute_command(*item.args)
            if waits:
                pipe.execute_command("WAIT", self.replicas, int(self.replica_timeout * 1000))
            try:
                results = await pipe.execute(raise_on_error=False)
                break
            except _CONNECTION_ERRORS as exc:
                if attempt == 1 and _stale(exc):
                    # a pooled connection Redis closed (it restarted, or timed the client
                    # out): send once more on a fresh one. Every call is safe to repeat:
                    # commits are deduplicated by identity, the others are idempotent.
                    await self.client.connection_pool.disconnect()
                    continue
                raise unavailable(self.url, exc) from exc
            finally:
                await pipe.reset()  # type: ignore[no-untyped-call]
        self.round_trips += 1
        self.calls += len(batch)
        short = None
        if waits:
            acked = results.pop()
            if isinstance(acked, int) and acked < self.replicas:
                short = DeliveryError(
                    f"only {acked} of {self.replicas} Redis replicas confirmed the write"
                    f" within {self.replica_timeout:g}s",
                    retryable=True,
                    reason=Reason.UNAVAILABLE,
                    hint="check the replicas; the sender's retry is deduplicated",
                    retry_after=1.0,
                )
        missing = []
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, redis_errors.ResponseError) and "not found" in str(result):
                missing.append(item)
            elif isinstance(result, _CONNECTION_ERRORS):
                item.future.set_exception(unavailable(self.url, result))
            elif isinstance(result, Exception):
                item.future.set_exception(
                    GatewayError(
                        f"the shared store refused {_text(item.args[1])}: {result}",
                        reason=Reason.INTERNAL,
                        hint="check the Redis version (>= 7.0) and its log",
                    )
                )
            elif short is not None and item.wait:
                item.future.set_exception(short)
            else:
                item.future.set_result(result)
        if missing:
            if not retry:
                raise GatewayError(
                    "the cpimgw functions are missing from Redis after loading them",
                    reason=Reason.INTERNAL,
                    hint="check that Redis allows FUNCTION LOAD (ACL) and has memory",
                )
            await self.reload()  # Redis restarted without its AOF, or FUNCTION FLUSH
            await self._send(missing, retry=False)


class RedisStore:
    """The :class:`~gateway.store.Store` protocol on a shared Redis (several nodes).

    ``node`` names this node (see :func:`gateway.cluster.node_name`); ``serve=False``
    opens the store for the operator's commands: no heartbeat, no claims.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "cpimgw",
        node: str | None = None,
        timing: Timing | None = None,
        dedup_window: float = 3600.0,
        id_ttl: float = 7 * 86400.0,
        resubscribe_guard: float = 300.0,
        notify_guard: float = 5.0,
        change_log: int = 100_000,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        promote_batch: int = 1000,
        serve: bool = True,
        client: Redis | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not namespace or any(c in namespace for c in "{}: \t\r\n"):
            raise GatewayError(
                f"the store namespace {namespace!r} is not usable",
                reason=Reason.INTERNAL,
                hint="use letters, digits, '-' or '_' ([store] namespace)",
            )
        self.url = url
        self.namespace = namespace
        self.name = node_name(node)
        self.timing = timing or Timing()
        self.dedup_window = dedup_window
        self.id_ttl = id_ttl
        self.resubscribe_guard = resubscribe_guard
        self.notify_guard = notify_guard
        self.change_log = change_log
        self.replicas = replicas
        self.replica_timeout = replica_timeout
        self.promote_batch = promote_batch
        self.serve = serve
        self.clock = clock
        self.prefix = f"{{{namespace}}}:"
        self.streams_key = self.prefix + "streams"
        self.client: Redis = client or Redis.from_url(
            url,
            retry=Retry(NoBackoff(), 0),  # a blind resend could run a commit twice
            socket_timeout=10.0,
            socket_connect_timeout=5.0,
            client_name=f"cpimgw:{self.name}",
        )
        self.node: Node | None = None
        self.recovered = 0
        #: Which target adapters this node can send to now (None: every one). The runner
        #: sets it (gateway.cluster.watch): a node then claims only what it can deliver.
        self.serving: Callable[[], Collection[str]] | None = None
        self._pipe = _Pipeline(
            self.client, url, self._load, replicas=replicas, replica_timeout=replica_timeout
        )
        self._held: dict[str, tuple[str, str]] = {}  # entry id -> (target, message id)
        self._turn = 0
        self._last_recover = -math.inf
        self._beat_task: asyncio.Task[None] | None = None
        self._open = False
        self._warned = 0.0

    # -- plumbing -------------------------------------------------------------------

    @property
    def round_trips(self) -> int:
        """Pipelines sent so far (group commit: fewer than calls)."""
        return self._pipe.round_trips

    @property
    def calls(self) -> int:
        return self._pipe.calls

    @property
    def held(self) -> int:
        """Entries this node claimed and has not finished."""
        return len(self._held)

    def _fn(self, name: str, *args: Any, wait: bool = False) -> asyncio.Future[Any]:
        return self._pipe.call(
            "FCALL", f"{LIBRARY}_{name}", 1, self.streams_key, self.prefix, *args, wait=wait
        )

    async def _direct(self, *args: Any) -> Any:
        """One read (or idempotent write) outside the pipeline; once more on a stale
        connection."""
        for attempt in (1, 2):
            try:
                return await self.client.execute_command(*args)  # type: ignore[no-untyped-call]
            except _CONNECTION_ERRORS as exc:
                if attempt == 1 and _stale(exc):
                    await self.client.connection_pool.disconnect()
                    continue
                raise unavailable(self.url, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _load(self) -> None:
        await self._direct("FUNCTION", "LOAD", "REPLACE", _LIBRARY_CODE)

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned >= 10.0:
            self._warned = now
            log.warning("shared store unavailable; trying again: %s", exc)

    async def open(self) -> None:
        if self._open:
            return
        try:
            await self._direct("PING")
        except DeliveryError as exc:
            raise GatewayError(
                f"cannot reach the shared store at {self.url}: {exc.__cause__}",
                reason=Reason.INTERNAL,
                hint="start Redis (>= 7.0) or fix [store] url",
            ) from exc
        info = await self._direct("INFO", "server")
        version = _text(info.get("redis_version", "0") if isinstance(info, dict) else "0")
        if int(version.split(".")[0]) < 7:
            raise GatewayError(
                f"the shared store at {self.url} runs Redis {version}; cpimgw needs 7.0 or later",
                reason=Reason.INTERNAL,
                hint="upgrade Redis, or use Valkey 7.2+",
            )
        await self._load()
        if self.serve:
            await self._join()
            await self._take_back()
            self._beat_task = asyncio.create_task(self._beat(), name="cpimgw-store:heartbeat")
        self._open = True

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat_task
            self._beat_task = None
        await self._pipe.flush()
        if self.serve and self.node is not None:
            # the others take what this node still holds once it has been idle long enough
            with contextlib.suppress(GatewayError):
                await self._fn("node", "leave", self.name, self.node.encode(), _num(self.clock()))
        await self._pipe.flush()
        await self.client.aclose()

    # -- node membership ------------------------------------------------------------

    async def _join(self) -> None:
        me = Node.here(self.name, now=self.clock())
        ttl_ms = str(int(self.timing.ttl * 1000))
        deadline = time.monotonic() + self.timing.ttl + 2 * self.timing.heartbeat
        while True:
            answer = _text(await self._fn("node", "join", self.name, me.encode(), "0", ttl_ms))
            if answer == "ok":
                break
            holder = Node.decode(answer)
            running = holder is not None and holder.host == me.host and _running(holder.pid)
            if may_take_over(holder, me, holder_running=running):
                log.info("taking over the name of a stopped node", extra={"node": self.name})
                await self._fn("node", "force", self.name, me.encode(), "0", ttl_ms)
                break
            if time.monotonic() > deadline:
                where = f" (pid {holder.pid} on {holder.host})" if holder else ""
                raise GatewayError(
                    f"the node name {self.name!r} is in use by another running gateway{where}",
                    reason=Reason.INTERNAL,
                    hint="give every node its own [cluster] node name",
                )
            await asyncio.sleep(self.timing.heartbeat / 2)
        self.node = me
        await self._fn("node", "beat", self.name, me.encode(), _num(self.clock()), ttl_ms)

    async def _beat(self) -> None:
        assert self.node is not None
        ttl_ms = str(int(self.timing.ttl * 1000))
        value = self.node.encode()
        while True:
            await asyncio.sleep(self.timing.heartbeat)
            try:
                answer = _text(
                    await self._fn("node", "beat", self.name, value, _num(self.clock()), ttl_ms)
                )
            except GatewayError as exc:
                self._warn(exc)
                continue
            if answer != "ok":
                log.error(
                    "another process took this node's name; this node stops claiming work",
                    extra={"node": self.name, "holder": answer},
                )
                return

    # -- the queue ------------------------------------------------------------------

    def _guard(self, target: str, envelope: Envelope) -> tuple[str, float]:
        """The key and lifetime under which an effect goes out once per cluster:

        - the SUBSCRIBEs that re-establish subscriptions after a start, once per
          ``resubscribe_guard`` seconds however many nodes start;
        - a NOTIFY of the same document from the same presentity to the same watcher,
          once per ``notify_guard`` seconds: the presentity's network notifies each of
          its subscription dialogs, and after a restart several nodes may hold one for
          the same watcher (presence is state: the copy adds nothing).
        """
        if envelope.origin.peer == "cpimgw" and envelope.attributes.get(REFRESH) == "restart":
            key = f"resub:{target}\x00{envelope.sender}\x00{envelope.recipient}"
            return key, self.resubscribe_guard
        if envelope.operation is Operation.NOTIFY and envelope.payload is not None:
            digest = hashlib.sha256()
            for part in (
                target,
                envelope.sender,
                envelope.recipient,
                envelope.attributes.get(STATE, ""),
                envelope.payload.content_type,
            ):
                digest.update(part.encode() + b"\x00")
            digest.update(envelope.payload.body)
            return f"notify:{digest.hexdigest()}", self.notify_guard
        return "", 0.0

    async def commit(self, batch: Commit) -> Accepted:
        args: list[Any] = [
            batch.identity,
            _num(batch.at),
            _num(self.dedup_window),
            self._window_ms,
            str(self.change_log),
            str(len(batch.entries)),
        ]
        for out in batch.entries:
            meta, body = encode_envelope(out.envelope)
            guard, lifetime = self._guard(out.target, out.envelope)
            args += [
                out.target,
                _num(out.expires_at),
                meta,
                body or b"",
                guard,
                str(max(1, math.ceil(lifetime * 1000))),
                out.envelope.identity,
            ]
        args.append(str(len(batch.subscriptions)))
        for sub in batch.subscriptions:
            args += [subscription_field(sub.watcher, sub.presentity), encode_subscription(sub)]
        args.append(str(len(batch.ended)))
        args += [subscription_field(w, p) for w, p in batch.ended]
        if batch.presence is not None:
            args += [batch.presence.presentity, encode_presence(batch.presence)]
        else:
            args += ["", ""]
        result = await self._fn("commit", *args, wait=True)
        if int(result[0]) == 1:
            return Accepted(duplicate=True)
        return Accepted(duplicate=False, ids=tuple(_text(i) for i in result[1:]))

    def _handed(self, result: Sequence[Any]) -> list[Entry]:
        out = []
        for i in range(0, len(result), 10):
            entry_id, sid, target, attempts, next_at, created, expires, error, meta, body = result[
                i : i + 10
            ]
            entry_id, target = _text(entry_id), _text(target)
            self._held[entry_id] = (target, _text(sid))
            out.append(
                Entry(
                    id=entry_id,
                    target=target,
                    envelope=decode_envelope(_text(meta), body),
                    state=EntryState.PENDING,
                    attempts=int(attempts),
                    next_at=float(next_at),
                    created_at=float(created),
                    expires_at=float(expires),
                    last_error=None if error is None else _text(error),
                )
            )
        return out

    def _targets(self) -> list[str] | None:
        """The targets to read now (None: every stream), in turn first so no target
        starves another when ``limit`` is reached."""
        if self.serving is None:
            return None
        targets = sorted(self.serving())
        if not targets:
            return []
        self._turn = (self._turn + 1) % len(targets)
        return targets[self._turn :] + targets[: self._turn]

    async def claim(self, now: float, limit: int) -> list[Entry]:
        """Hand out up to ``limit`` due entries to this node. While Redis cannot be reached
        this raises (:func:`unavailable`) like a locked SQLite file does, so the gateway's
        dispatcher counts it, reports the store not ready and backs off; an answer lost
        with the connection leaves the entries in this node's pending list, where
        :meth:`_recover` queues them again after ``claim_idle``."""
        if not self.serve:
            raise GatewayError("this store was opened for inspection only", reason=Reason.INTERNAL)
        # heartbeats and idle times are Redis's real time, so is this interval
        tick = time.monotonic()
        if tick - self._last_recover >= self.timing.recover_interval:
            self._last_recover = tick
            await self._recover()
        targets = self._targets()
        # with no target served the call still moves due retries into their streams
        chosen = ["*"] if targets is None else targets or [""]
        result = await self._fn(
            "claim", self.name, _num(now), str(limit), str(self.promote_batch), *chosen
        )
        return self._handed(result)

    async def _take_back(self) -> None:
        """At start: whatever this node's name still holds (it was killed) goes back into
        the streams, for whichever node serves each target."""
        for target in await self.streams():
            while sids := await self._stale(target, self.name, 0, 500):
                await self._fn("requeue_claims", self.name, target, self.name, "0", *sids)

    async def _recover(self) -> None:
        """Queue again the entries dead nodes held, once idle ``claim_idle`` seconds, and
        this node's own that no task holds any more (a finish lost with a connection)."""
        per_target = {t: await self._consumers_of(t) for t in await self.streams()}
        alive = await self.alive(sorted({c.name for cs in per_target.values() for c in cs}))
        idle_ms = int(self.timing.claim_idle * 1000)
        held = {sid for _, sid in self._held.values()}
        for target, consumers in per_target.items():
            for consumer in orphaned(consumers, alive, self.name):
                sids = await self._stale(target, consumer.name, idle_ms, 1000)
                if not sids:
                    continue
                taken = int(
                    await self._fn(
                        "requeue_claims", self.name, target, consumer.name, str(idle_ms), *sids
                    )
                )
                if taken:
                    log.warning(
                        "queued again the entries of a dead node",
                        extra={"node": self.name, "from": consumer.name, "count": taken},
                    )
                self.recovered += taken
            own = [s for s in await self._stale(target, self.name, idle_ms, 1000) if s not in held]
            if own:
                await self._fn("requeue_claims", self.name, target, self.name, str(idle_ms), *own)
        for name in retired(_merged(per_target.values()), alive, self.name):
            await self._fn("retire", name)

    async def _stale(self, target: str, consumer: str, idle_ms: int, count: int) -> list[str]:
        try:
            rows = await self.client.xpending_range(
                self.prefix + "q:" + target,
                GROUP,
                "-",
                "+",
                count,
                consumername=consumer,
                idle=idle_ms,
            )
        except redis_errors.ResponseError:
            return []  # the stream or its group is gone
        except _CONNECTION_ERRORS as exc:
            raise unavailable(self.url, exc) from exc
        return [_text(row["message_id"]) for row in rows or ()]

    async def streams(self) -> list[str]:
        """The targets that have a delivery stream."""
        return sorted(_text(t) for t in await self._direct("SMEMBERS", self.streams_key))

    async def _consumers_of(self, target: str) -> list[Consumer]:
        try:
            rows = await self._direct("XINFO", "CONSUMERS", self.prefix + "q:" + target, GROUP)
        except redis_errors.ResponseError:
            return []
        return [
            Consumer(_text(row[b"name"]), int(row[b"pending"]), int(row[b"idle"])) for row in rows
        ]

    async def claims(self) -> dict[str, dict[str, int]]:
        """Entries each node holds, by target: ``{node: {target: count}}``."""
        out: dict[str, dict[str, int]] = {}
        for target in await self.streams():
            for consumer in await self._consumers_of(target):
                if consumer.pending:
                    out.setdefault(consumer.name, {})[target] = consumer.pending
        return out

    async def consumers(self) -> list[Consumer]:
        """Every node that ever claimed work, over all streams (pending summed)."""
        return _merged([await self._consumers_of(t) for t in await self.streams()])

    async def alive(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` have a live heartbeat."""
        if not names:
            return set()
        values = await self._direct("MGET", *(self.prefix + "node:" + n for n in names))
        return {n for n, v in zip(names, values, strict=True) if v is not None}

    async def next_due(self) -> float | None:
        """The earliest due time; raises while Redis cannot be reached (see :meth:`claim`)."""
        targets = self._targets()
        found = await self._fn("next_due", *(["*"] if targets is None else targets))
        return None if found is None else float(found)

    # A finish forgets the claim only once Redis took it: a call that raised can be made
    # again (the gateway retries it), and meanwhile recovery leaves the entry to us.

    async def complete(self, entry_id: str) -> None:
        await self._fn("complete", entry_id, *self._held.get(entry_id, ("", "")))
        self._held.pop(entry_id, None)

    async def reschedule(self, entry_id: str, *, next_at: float, attempts: int, error: str) -> None:
        await self._fn(
            "reschedule",
            entry_id,
            *self._held.get(entry_id, ("", "")),
            _num(next_at),
            str(attempts),
            error,
        )
        self._held.pop(entry_id, None)

    async def fail(
        self, entry_id: str, *, error: str, now: float, report: str | None = None
    ) -> None:
        await self._fn(
            "fail",
            entry_id,
            *self._held.get(entry_id, ("", "")),
            error,
            _num(now),
            self._window_ms,
            report or "",
        )
        self._held.pop(entry_id, None)

    async def reports(self, limit: int = 1000) -> list[Entry]:
        ids = await self._direct("ZRANGE", self.prefix + "reports", 0, limit - 1)
        return await self._read_entries([int(i) for i in ids])

    async def take_reports(
        self, limit: int = 1000, *, hold: float = 60.0, failed_before: float | None = None
    ) -> list[Entry]:
        """The owed reports (among the first ``limit``) given up before ``failed_before``,
        whose origin adapter this node serves now (:attr:`serving`: an exclusive adapter
        only where it runs) and no other node took within its hold; those returned are
        held for this node (``P:guard:report:ID``) for ``hold`` seconds. A store opened
        without a node name (the operator's commands) takes nothing: it reads."""
        serving = self.serving() if self.serving is not None else None
        wanted = [
            e
            for e in await self.reports(limit)
            if (failed_before is None or e.next_at < failed_before)
            and (serving is None or e.envelope.origin.adapter in serving)
        ]
        if self.node is None or not wanted:
            return wanted
        taken = await self._fn(
            "take_reports", self.name, str(max(1, int(hold * 1000))), *(e.id for e in wanted)
        )
        mine = {_text(i) for i in taken}
        return [e for e in wanted if e.id in mine]

    async def reported(self, entry_id: str) -> None:
        await self._fn("reported", entry_id)

    async def check(self) -> None:
        """Raise while Redis does not answer (the gateway's probe of a failing store)."""
        await self._direct("PING")

    # -- leases: one node at a time runs an adapter ------------------------------------

    async def lease(self, mode: str, name: str, ttl: float) -> bool:
        """``acquire`` (or renew) the lease ``name`` for this node, ``renew`` it only if
        held, or ``release`` it; True while this node holds it."""
        assert self.node is not None, "leases need a serving store"
        held = await self._fn("lease", mode, name, self.node.encode(), str(int(ttl * 1000)))
        return bool(held)

    async def lease_holder(self, name: str) -> Node | None:
        found = await self._fn("lease", "holder", name, "", "0")
        return None if found is None else Node.decode(found)

    async def _ids(self, state: EntryState, limit: int) -> list[int]:
        key = self.prefix + ("pending" if state is EntryState.PENDING else "failed")
        return [int(i) for i in await self._direct("ZRANGE", key, 0, limit - 1)]

    async def entries(self, state: EntryState | None = None, limit: int = 100) -> list[Entry]:
        states = [state] if state is not None else [EntryState.PENDING, EntryState.FAILED]
        ids: list[int] = []
        for one in states:
            ids += await self._ids(one, limit)
        return await self._read_entries(sorted(ids)[:limit])

    async def _read_entries(self, ids: list[int]) -> list[Entry]:
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.execute_command("HGETALL", f"{self.prefix}e:{entry_id}")
        try:
            rows = await pipe.execute()
        except _CONNECTION_ERRORS as exc:
            raise unavailable(self.url, exc) from exc
        out = []
        for entry_id, row in zip(ids, rows, strict=True):
            if not row:
                continue  # finished between the two reads
            f = {_text(k): v for k, v in row.items()}
            out.append(
                Entry(
                    id=str(entry_id),
                    target=_text(f["target"]),
                    envelope=decode_envelope(_text(f["meta"]), f.get("body")),
                    state=EntryState(_text(f["state"])),
                    attempts=int(f["attempts"]),
                    next_at=float(f["next_at"]),
                    created_at=float(f["created_at"]),
                    expires_at=float(f["expires_at"]),
                    last_error=_text(f["last_error"]) if "last_error" in f else None,
                    report=_text(f["report"]) if "report" in f else None,
                )
            )
        return out

    async def _all_ids(self, state: EntryState) -> list[str]:
        key = self.prefix + ("pending" if state is EntryState.PENDING else "failed")
        return [_text(i) for i in await self._direct("ZRANGE", key, 0, -1)]

    async def requeue(self, ids: Sequence[str] | None, *, now: float) -> int:
        chosen = list(ids) if ids is not None else await self._all_ids(EntryState.FAILED)
        total = 0
        for start in range(0, len(chosen), 500):
            total += int(
                await self._fn("requeue", _num(now), self._window_ms, *chosen[start : start + 500])
            )
        return total

    async def drop(self, ids: Sequence[str] | None, *, state: EntryState | None = None) -> int:
        if ids is not None:
            chosen = list(ids)
        else:
            states = [state] if state is not None else [EntryState.PENDING, EntryState.FAILED]
            chosen = []
            for one in states:
                chosen += await self._all_ids(one)
        total = 0
        for start in range(0, len(chosen), 500):
            total += int(await self._fn("drop", self._window_ms, *chosen[start : start + 500]))
        for entry_id in chosen:
            self._held.pop(entry_id, None)
        return total

    async def stats(self, now: float) -> QueueStats:
        result = await self._fn("stats")
        pending, failed = int(result[0]), int(result[1])
        oldest = float(result[3]) if result[3] not in (None, b"", "") else now
        by_target = {
            _text(result[i]): int(result[i + 1])
            for i in range(4, len(result), 2)
            if int(result[i + 1]) > 0
        }
        return QueueStats(pending, failed, max(0.0, now - oldest), by_target)

    @property
    def _window_ms(self) -> str:
        return str(max(1, math.ceil(self.dedup_window * 1000)))

    async def outcome(self, identity: str) -> Outcome | None:
        if not identity:
            return None
        found = await self._fn("outcome", identity)
        entries = [
            (_text(found[i]), int(found[i + 1]), _text(found[i + 2]) or None)
            for i in range(2, len(found), 3)
        ]
        return outcome_of(entries, dropped=int(found[1]) == 1, seen=int(found[0]) == 1)

    async def scheduled(self) -> int:
        """Entries waiting for a retry (not yet back in the stream)."""
        return int(await self._direct("ZCARD", self.prefix + "due"))

    async def unclaimed(self) -> int:
        """Entries in the streams no node has read yet. Finished entries are deleted from
        the streams, so this is their length less what the nodes hold (the group's
        ``lag`` is not kept once entries are deleted)."""
        total = 0
        for target in await self.streams():
            key = self.prefix + "q:" + target
            try:
                groups = await self._direct("XINFO", "GROUPS", key)
            except redis_errors.ResponseError:
                continue
            length = int(await self._direct("XLEN", key))
            held = sum(int(g[b"pending"]) for g in groups if _text(g[b"name"]) == GROUP)
            total += max(0, length - held)
        return total

    async def roster(self) -> dict[str, dict[str, Any]]:
        """What each node last wrote about itself (node, beat_at, recovered, stopped_at)."""
        names = sorted(_text(n) for n in await self._direct("SMEMBERS", self.prefix + "roster"))
        out = {}
        for name in names:
            row = await self._direct("HGETALL", f"{self.prefix}roster:{name}")
            out[name] = {_text(k): _text(v) for k, v in row.items()}
        return out

    # -- presence, ids, buckets -------------------------------------------------------

    async def _scan(self, key: str) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        cursor: Any = 0
        while True:
            cursor, chunk = await self._direct("HSCAN", key, cursor, "COUNT", 1000)
            out += list(chunk.items())
            if int(cursor) == 0:
                return out

    async def subscriptions(self) -> list[Subscription]:
        rows = await self._scan(self.prefix + "subs")
        subs = [decode_subscription(k.decode(), v.decode()) for k, v in rows]
        return sorted(subs, key=lambda s: (s.presentity, s.watcher))

    async def presences(self) -> list[LastPresence]:
        rows = await self._scan(self.prefix + "pres")
        return sorted((decode_presence(k.decode(), v) for k, v in rows), key=lambda p: p.presentity)

    async def change_position(self) -> str:
        """Where the presence change log ends now (an opaque token for :meth:`changes`)."""
        last = await self._direct("XREVRANGE", self.prefix + "book", "+", "-", "COUNT", 1)
        if not last:
            seq = await self._direct("GET", self.prefix + "bookseq")
            return f"0-0#{_text(seq) if seq is not None else '0'}"
        return f"{_text(last[0][0])}#{_text(last[0][1][b'n'])}"

    async def changes(
        self, position: str, *, count: int = 1000, block: float = 1.0
    ) -> tuple[list[Change], str, bool]:
        """Presence changes after ``position`` (waiting up to ``block`` seconds for the
        first), the new position, and whether changes were trimmed from the log before
        they were read (then the caller compares the whole book instead)."""
        key = self.prefix + "book"
        after, _, seq = position.partition("#")
        reply = await self._direct(
            "XREAD", "COUNT", count, "BLOCK", max(1, int(block * 1000)), "STREAMS", key, after
        )
        if not reply:
            return [], position, False
        out = [
            Change(_text(sid), _text(f[b"k"]), _text(f[b"f"]), f.get(b"v", b""), int(f[b"n"]))
            for sid, f in reply[0][1]
        ]
        trimmed = out[0].seq != int(seq or 0) + 1
        return out, f"{out[-1].id}#{out[-1].seq}", trimmed

    async def map_id(self, namespace: str, key: str, value: str, *, now: float) -> None:
        ttl = str(max(1, math.ceil(self.id_ttl * 1000)))
        await self._pipe.call("SET", f"{self.prefix}id:{namespace}\x00{key}", value, "PX", ttl)

    async def lookup_id(self, namespace: str, key: str) -> str | None:
        found = await self._pipe.call("GET", f"{self.prefix}id:{namespace}\x00{key}")
        return None if found is None else _text(found)

    async def take_token(self, key: str, *, rate: float, burst: float, now: float) -> float:
        """One bucket for the whole cluster: every node takes from the same hash."""
        refill = burst / rate if rate > 0 else 86400.0
        ttl = str(max(1000, math.ceil((refill + 1.0) * 1000)))
        wait = _text(
            await self._pipe.call(
                "FCALL",
                f"{LIBRARY}_take_token",
                1,
                self.streams_key,
                self.prefix,
                key,
                _num(rate),
                _num(burst),
                _num(now),
                ttl,
            )
        )
        return float(wait)

    async def maintain(self, now: float) -> None:
        """Dedup marks, id mappings and buckets expire by themselves (TTL); what is left
        is removing dead nodes that hold nothing from the consumer groups."""
        if not self.serve:
            return
        consumers = await self.consumers()
        alive = await self.alive([c.name for c in consumers])
        for name in retired(consumers, alive, self.name):
            await self._fn("retire", name)


def _merged(groups: Iterable[Sequence[Consumer]]) -> list[Consumer]:
    """One consumer per name over several streams: pending summed, the shortest idle."""
    merged: dict[str, Consumer] = {}
    for consumers in groups:
        for c in consumers:
            seen = merged.get(c.name)
            merged[c.name] = (
                c
                if seen is None
                else Consumer(c.name, seen.pending + c.pending, min(seen.idle_ms, c.idle_ms))
            )
    return sorted(merged.values(), key=lambda c: c.name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def redis_store_of(settings: Settings, *, serve: bool = True) -> RedisStore:
    """The Redis store a config asks for (``[store] backend = "redis"`` and ``[cluster]``)."""
    store, cluster = settings.store, settings.cluster
    send_timeout = settings.delivery.send_timeout
    if cluster.claim_idle <= send_timeout:
        raise ConfigError(
            f"{cluster.claim_idle:g}s is not longer than [delivery] send_timeout"
            f" ({send_timeout:g}s): a slow send could be taken from a live node and sent twice",
            key="cluster.claim_idle",
            hint=f"make it at least {2 * send_timeout:g}s",
        )
    return RedisStore(
        store.url,
        namespace=store.namespace,
        node=cluster.node,
        timing=Timing(
            heartbeat=cluster.heartbeat,
            ttl=cluster.ttl,
            claim_idle=cluster.claim_idle,
            recover_interval=cluster.recover_interval,
        ),
        dedup_window=store.dedup_window,
        replicas=store.replicas,
        replica_timeout=store.replica_timeout,
        serve=serve,
    )


__all__ = ["GROUP", "LIBRARY", "Change", "RedisStore", "redis_store_of", "unavailable"]
