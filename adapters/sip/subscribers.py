"""Where the SIP adapter records its own subscriptions to SIP presentities (the gateway as
subscriber, RFC 6665 §4.1), so they outlive the node that made them.

One node: nowhere (:class:`Subscriptions`): after a restart the core subscribes again
from its presence book. Several nodes on one Redis (docs/scaling.md): each node records
the subscriptions it holds (:class:`SharedSubscriptions`). What is recorded is the
*intent* — watcher, presentity, event package, the Expires to ask for (RFC 6665 §4.1.2.1)
— not the dialog: a dialog lives where its Contact points (RFC 3261 §12.1.2), and a node
that takes a dead node's subscriptions makes new dialogs of its own. The presence server's
old dialog ends on its own when its NOTIFYs to the dead Contact fail or it expires.

Keys (``P`` = the store's ``{namespace}:`` prefix, one hash slot):

- ``P:sips:NODE``: hash ``watcher NUL presentity`` -> the intent's JSON
  (:meth:`Intent.to_json`), the subscriptions node NODE holds;
- ``P:sipo``: hash ``watcher NUL presentity`` -> the node that holds it (one per intent);
- ``P:sipsn``: set of the nodes that have a ``sips`` hash;
- ``P:sipsx:NODE``: set of the fields other nodes took from NODE (an unsubscribe, or a new
  SUBSCRIBE through another node): NODE ends its dialogs for them at its next check.

A node's liveness is its heartbeat key ``P:node:NAME`` (:mod:`gateway.cluster`). Every
``recover_interval`` each node lists ``P:sipsn``, asks which of them have a heartbeat, and
tries to take each dead one's hash with one script (:data:`_TAKE`): it checks the
heartbeat again, moves every field into its own hash and re-points ``P:sipo``, all
atomically, so of several surviving nodes exactly one takes a dead node's subscriptions
(the others find the hash gone), and a node that came back in between keeps its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from redis import exceptions as redis_errors

from adapters.sip.subscription import DEFAULT_EXPIRES
from canonical.errors import DeliveryError, Reason

SubscriptionKey = tuple[str, str]  # (watcher, presentity), the adapter's key


@dataclass(frozen=True, slots=True)
class Intent:
    """A subscription the gateway wants to hold on the SIP side (RFC 6665 §4.1.2.1):
    ``watcher`` (our SIP From), ``presentity``, the watcher's gateway-wide address
    ``owner`` (where the NOTIFYs go), the ``event`` package and the ``expires`` to ask."""

    watcher: str
    presentity: str
    owner: str = ""
    expires: int = DEFAULT_EXPIRES
    event: str = "presence"

    @property
    def key(self) -> SubscriptionKey:
        return (self.watcher, self.presentity)

    @property
    def field(self) -> str:
        return field_of(self.watcher, self.presentity)

    def to_json(self, *, at: float) -> str:
        """The record kept in Redis; ``at`` (wall-clock seconds) says when it was made."""
        return json.dumps(
            {
                "w": self.watcher,
                "p": self.presentity,
                "o": self.owner,
                "x": self.expires,
                "e": self.event,
                "t": at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Intent:
        data = json.loads(text)
        return cls(
            watcher=str(data["w"]),
            presentity=str(data["p"]),
            owner=str(data.get("o", "")),
            expires=int(data.get("x", DEFAULT_EXPIRES)),
            event=str(data.get("e", "presence")),
        )


def field_of(watcher: str, presentity: str) -> str:
    return f"{watcher}\x00{presentity}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterStore(Protocol):
    """What :class:`SharedSubscriptions` needs of the gateway's shared store
    (``gateway.store.redis.RedisStore``): its redis-py asyncio client, key prefix, node
    name, timing (``recover_interval``) and the heartbeat check."""

    client: Any
    prefix: str
    name: str
    timing: Any

    async def alive(self, names: list[str]) -> set[str]: ...


class Subscriptions:
    """One node: the subscriptions live in the adapter only (the core re-subscribes after
    a restart)."""

    shared = False
    node = ""

    async def record(self, intent: Intent, *, kept: bool = False) -> bool:
        """This node holds ``intent`` from now on; with ``kept`` (a re-subscription of a
        recorded one) only if it still does: False when it was ended or taken meanwhile."""
        return True

    async def forget(self, key: SubscriptionKey, *, only_mine: bool = False) -> str | None:
        """The intent is over: remove its record wherever it is (or only if this node
        holds it); returns the node that held it, None when there was none."""
        return None

    async def holder(self, key: SubscriptionKey) -> str | None:
        """The node that holds the subscription, None when nobody does."""
        return None

    async def holds(self, key: SubscriptionKey) -> bool:
        """Whether this node (still) holds the subscription: a re-subscription it
        planned is made only then."""
        return True

    def due(self, now: float) -> bool:
        """Whether a check of the shared records is due (monotonic ``now``)."""
        return False

    async def mine(self) -> list[Intent]:
        """Every subscription recorded for this node (read once, at start)."""
        return []

    async def taken_from_me(self) -> list[SubscriptionKey]:
        """Subscriptions of this node another node ended or took since the last call."""
        return []

    async def take_orphans(self) -> list[Intent]:
        """Take the subscriptions of nodes without a heartbeat; what this node took."""
        return []


_RECORD = """
local prev = redis.call('HGET', KEYS[1], ARGV[3])
if ARGV[5] == '1' and prev ~= ARGV[2] then return 0 end
if prev and prev ~= ARGV[2] then
  redis.call('HDEL', ARGV[1] .. 'sips:' .. prev, ARGV[3])
  redis.call('SADD', ARGV[1] .. 'sipsx:' .. prev, ARGV[3])
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

_FORGET = """
local holder = redis.call('HGET', KEYS[1], ARGV[2])
if not holder then return false end
if ARGV[3] ~= '' and holder ~= ARGV[3] then return false end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HDEL', ARGV[1] .. 'sips:' .. holder, ARGV[2])
if holder ~= ARGV[4] then redis.call('SADD', ARGV[1] .. 'sipsx:' .. holder, ARGV[2]) end
return holder
"""

# KEYS: dead's hash, my hash, sipo, dead's heartbeat, sipsn, dead's sipsx
# ARGV: dead, me
_TAKE = """
if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
local all = redis.call('HGETALL', KEYS[1])
local taken = {}
for i = 1, #all, 2 do
  if redis.call('HGET', KEYS[3], all[i]) == ARGV[1] then
    redis.call('HSET', KEYS[2], all[i], all[i + 1])
    redis.call('HSET', KEYS[3], all[i], ARGV[2])
    taken[#taken + 1] = all[i + 1]
  end
end
redis.call('DEL', KEYS[1], KEYS[6])
redis.call('SREM', KEYS[5], ARGV[1])
if #taken > 0 then redis.call('SADD', KEYS[5], ARGV[2]) end
return taken
"""


def unavailable(exc: Exception) -> DeliveryError:
    """The shared store did not answer: the caller (the core, or the next check) retries."""
    return DeliveryError(
        f"the shared store did not record the SIP subscription: {exc}",
        retryable=True,
        reason=Reason.UNAVAILABLE,
        hint="check that Redis is reachable ([store] url)",
    )


class SharedSubscriptions(Subscriptions):
    """Subscriptions recorded per node in the cluster's Redis, taken over by one survivor
    when their node dies."""

    shared = True

    def __init__(self, store: ClusterStore, *, clock: Any = time.time) -> None:
        self.store = store
        self.client = store.client
        self.prefix = store.prefix
        self.node = store.name
        self.interval = float(store.timing.recover_interval)
        self.clock = clock
        self._checked = -float("inf")
        self._index = self.prefix + "sipo"
        self._nodes = self.prefix + "sipsn"

    def _hash(self, node: str) -> str:
        return self.prefix + "sips:" + node

    def _taken(self, node: str) -> str:
        return self.prefix + "sipsx:" + node

    async def _run(self, command: str, *args: Any) -> Any:
        """One Redis command; a connection failure becomes a retryable DeliveryError."""
        try:
            return await getattr(self.client, command)(*args)
        except redis_errors.RedisError as exc:
            raise unavailable(exc) from exc

    async def record(self, intent: Intent, *, kept: bool = False) -> bool:
        at = self.clock()
        done = await self._run(
            "eval",
            _RECORD,
            3,
            self._index,
            self._hash(self.node),
            self._nodes,
            self.prefix,
            self.node,
            intent.field,
            intent.to_json(at=at),
            "1" if kept else "0",
        )
        return bool(done)

    async def forget(self, key: SubscriptionKey, *, only_mine: bool = False) -> str | None:
        holder = await self._run(
            "eval",
            _FORGET,
            1,
            self._index,
            self.prefix,
            field_of(*key),
            self.node if only_mine else "",
            self.node,
        )
        return None if holder is None else _text(holder)

    async def holder(self, key: SubscriptionKey) -> str | None:
        found = await self._run("hget", self._index, field_of(*key))
        return None if found is None else _text(found)

    async def holds(self, key: SubscriptionKey) -> bool:
        return await self.holder(key) == self.node

    def due(self, now: float) -> bool:
        if now - self._checked < self.interval:
            return False
        self._checked = now
        return True

    async def mine(self) -> list[Intent]:
        values = await self._run("hvals", self._hash(self.node))
        return [Intent.from_json(v) for v in values]

    async def taken_from_me(self) -> list[SubscriptionKey]:
        popped = await self._run("spop", self._taken(self.node), 1000)
        if not popped:
            return []
        fields = [_text(f) for f in popped]
        holders = await self._run("hmget", self._index, fields)
        out = []
        for name, holder in zip(fields, holders, strict=True):
            if holder is None or _text(holder) != self.node:  # not taken back meanwhile
                watcher, _, presentity = name.partition("\x00")
                out.append((watcher, presentity))
        return out

    async def take_orphans(self) -> list[Intent]:
        nodes = sorted(_text(n) for n in await self._run("smembers", self._nodes))
        others = [n for n in nodes if n != self.node]
        if not others:
            return []
        try:
            alive = await self.store.alive(others)
        except redis_errors.RedisError as exc:
            raise unavailable(exc) from exc
        taken: list[Intent] = []
        for dead in dead_nodes(others, alive):
            values = await self._run(
                "eval",
                _TAKE,
                6,
                self._hash(dead),
                self._hash(self.node),
                self._index,
                self.prefix + "node:" + dead,
                self._nodes,
                self._taken(dead),
                dead,
                self.node,
            )
            taken += [Intent.from_json(v) for v in values or ()]
        return taken


async def held_counts(client: Any, prefix: str, nodes: Iterable[str]) -> dict[str, int]:
    """How many SIP subscriptions each of ``nodes`` holds (the length of its ``P:sips:NODE``
    hash; ``cpimgw cluster status``). Raises redis-py's errors as they come."""
    names = list(nodes)
    if not names:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hlen(prefix + "sips:" + name)
        counts = await pipe.execute()
    return {name: int(n) for name, n in zip(names, counts, strict=True)}


def dead_nodes(nodes: Iterable[str], alive: set[str]) -> list[str]:
    """The nodes among ``nodes`` without a live heartbeat, in a stable order."""
    return sorted(n for n in set(nodes) if n not in alive)


__all__ = [
    "ClusterStore",
    "Intent",
    "SharedSubscriptions",
    "SubscriptionKey",
    "Subscriptions",
    "dead_nodes",
    "field_of",
    "unavailable",
]
