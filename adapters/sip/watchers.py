"""Where the SIP adapter keeps its SIP watchers' subscriptions (RFC 6665 §4.2 dialogs).

One node: in memory (:class:`Watchers`). Several nodes on one Redis
(docs/scaling.md): in the shared store (:class:`SharedWatchers`), so whichever node
claims a NOTIFY for a watcher can send it in the dialog, and whichever node the proxy
hands a refresh to can answer it — also after the node that accepted the SUBSCRIBE died.
The dialog's local CSeq lives apart from the rest and is taken with an atomic increment
(RFC 3261 §12.2.1.1: each in-dialog request has a higher CSeq than the one before), so
two nodes never send one CSeq twice.

Keys (``P`` = the store's ``{namespace}:`` prefix, one hash slot):

- ``P:sipn:CALLID NUL LOCALTAG NUL REMOTETAG``: hash ``n`` (the notifier's JSON,
  :meth:`~adapters.sip.subscription.Notifier.to_json`) and ``c`` (the last local CSeq);
  expires a minute after the subscription does.
- ``P:sipw:PRESENTITY``: set of those keys, the watchers of one presentity.
"""

from __future__ import annotations

from typing import Any, Protocol

from adapters.sip.subscription import DEFAULT_EXPIRES, Notifier

DialogKey = tuple[str, str, str]

#: Seconds a stored dialog outlives its subscription (a late refresh still finds it).
GRACE = 60.0


class SharedStore(Protocol):
    """What :class:`SharedWatchers` needs of the gateway's shared store: a redis-py
    asyncio client and the namespace's key prefix (``gateway.store.redis.RedisStore``)."""

    client: Any
    prefix: str


class Watchers:
    """SIP watchers' subscriptions of this node only, in memory."""

    shared = False

    def __init__(self) -> None:
        self._by_key: dict[DialogKey, Notifier] = {}

    async def get(self, key: DialogKey) -> Notifier | None:
        return self._by_key.get(key)

    async def save(self, notifier: Notifier) -> None:
        self._by_key[notifier.dialog.key] = notifier

    async def remove(self, notifier: Notifier) -> bool:
        """Forget the subscription; False when it was gone already."""
        return self._by_key.pop(notifier.dialog.key, None) is not None

    async def of_presentity(self, presentity: str) -> list[Notifier]:
        return [n for n in self._by_key.values() if n.presentity == presentity]

    async def reserve(self, notifier: Notifier) -> bool:
        """Make the dialog's next request take a CSeq no other node takes; False when the
        subscription is gone (nothing is to be sent in it)."""
        return True

    def held(self) -> list[Notifier]:
        """The subscriptions this node looks after (for expiry and a graceful stop)."""
        return list(self._by_key.values())

    async def expire(self, notifier: Notifier, now: float) -> Notifier | None:
        """End ``notifier`` if it has expired by ``now``: the subscription as it ended when
        this call ended it (the caller sends the final NOTIFY, its CSeq reserved here),
        else None (not expired, refreshed elsewhere, or ended by someone else)."""
        if now < notifier.expires_at:
            return None
        return notifier if await self.remove(notifier) else None


_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HINCRBY', KEYS[1], 'c', 1)
end
return false
"""


class SharedWatchers(Watchers):
    """SIP watchers' subscriptions in the cluster's Redis: any node serves any of them."""

    shared = True

    def __init__(self, store: SharedStore) -> None:
        super().__init__()  # _by_key: the ones this node accepted, refreshed or notified
        self.client = store.client
        self.prefix = store.prefix

    def _key(self, key: DialogKey) -> str:
        return self.prefix + "sipn:" + "\x00".join(key)

    def _index(self, presentity: str) -> str:
        return self.prefix + "sipw:" + presentity

    def _decode(self, value: list[Any]) -> Notifier | None:
        text, cseq = value
        if text is None:
            return None
        return Notifier.from_json(text, local_cseq=int(cseq or 0))

    async def get(self, key: DialogKey) -> Notifier | None:
        notifier = self._decode(await self.client.hmget(self._key(key), "n", "c"))
        if notifier is not None:
            self._by_key[key] = notifier
        return notifier

    async def save(self, notifier: Notifier) -> None:
        key = self._key(notifier.dialog.key)
        until = int((notifier.expires_at + GRACE) * 1000)
        index = self._index(notifier.presentity)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, "n", notifier.to_json())
            pipe.hsetnx(key, "c", notifier.dialog.local_cseq)
            pipe.pexpireat(key, until)
            pipe.sadd(index, key)
            pipe.pexpireat(index, until + int(DEFAULT_EXPIRES * 1000), gt=True)
            pipe.pexpireat(index, until + int(DEFAULT_EXPIRES * 1000), nx=True)
            await pipe.execute()
        self._by_key[notifier.dialog.key] = notifier

    async def remove(self, notifier: Notifier) -> bool:
        key = self._key(notifier.dialog.key)
        self._by_key.pop(notifier.dialog.key, None)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.srem(self._index(notifier.presentity), key)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def of_presentity(self, presentity: str) -> list[Notifier]:
        index = self._index(presentity)
        keys = sorted(await self.client.smembers(index))
        if not keys:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, "n", "c")
            values = await pipe.execute()
        found: list[Notifier] = []
        gone = []
        for key, value in zip(keys, values, strict=True):
            notifier = self._decode(value)
            if notifier is None:
                gone.append(key)  # expired with its subscription
            else:
                found.append(notifier)
                self._by_key[notifier.dialog.key] = notifier
        if gone:
            await self.client.srem(index, *gone)
        return found

    async def reserve(self, notifier: Notifier) -> bool:
        cseq = await self.client.eval(_RESERVE, 1, self._key(notifier.dialog.key))
        if cseq is None:
            self._by_key.pop(notifier.dialog.key, None)
            return False
        notifier.dialog.local_cseq = int(cseq) - 1  # Dialog.request() adds one
        return True

    async def expire(self, notifier: Notifier, now: float) -> Notifier | None:
        if now < notifier.expires_at:
            return None
        current = await self.get(notifier.dialog.key)
        if current is None:
            self._by_key.pop(notifier.dialog.key, None)
            return None  # ended elsewhere
        if now < current.expires_at or not await self.reserve(current):
            return None  # refreshed through another node, or just ended
        return current if await self.remove(current) else None  # one node wins the DEL
