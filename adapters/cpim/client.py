"""The client side: delivering an operation to a peer gateway over the same API.

A peer is another cpimgw (or anything serving docs/http-api.md). The request is the one
:meth:`HttpMapper.from_canonical` builds — the object untouched, the transport facts in
headers, ``Cpimgw-Id`` the envelope identity, so the peer's store drops a resend —
sent over HTTPS with this gateway's client certificate (mutual TLS) and the peer's
certificate checked against the configured CA and the host name.

The peer answers 202 once the operation is in *its* durable store; that is when
:meth:`PeerClient.send` returns. Anything else becomes a :class:`DeliveryError` whose
``retryable`` comes from the peer's reason (or status), so the core retries from its
store with backoff; several targets (RFC 3861 §6, SRV) are tried in order when one
cannot be reached.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from typing import Any

import aiohttp
from multidict import CIMultiDict

from adapters.contract import Sent
from adapters.cpim.mapping import HttpRequest, error_from_status, retry_after_of
from adapters.cpim.resolver import HostResolver, SrvResolver
from canonical.errors import DeliveryError, Reason

USER_AGENT = "cpimgw-http/0.1"


def client_context(
    *, cafile: str | None, certfile: str | None, keyfile: str | None
) -> ssl.SSLContext:
    """TLS for talking to peers: verify the peer against ``cafile`` (or the system CAs)
    with host-name checking, and present our certificate when one is configured."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    return context


class PeerClient:
    """One connection pool for every peer of an adapter instance."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        srv: SrvResolver | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.ssl_context = ssl_context
        self.srv = srv
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self.ssl_context if self.ssl_context is not None else True,
                resolver=HostResolver(self.srv) if self.srv is not None else None,
                limit=256,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, bases: Sequence[str], request: HttpRequest) -> Sent:
        """POST/DELETE ``request`` to the first of ``bases`` (``https://host:port``) that
        can be reached; DeliveryError when none takes it."""
        if not bases:
            raise DeliveryError(
                "no peer address to send to", retryable=False, reason=Reason.UNKNOWN_DESTINATION
            )
        last: DeliveryError | None = None
        for base in bases:
            try:
                return await self._send_one(base, request)
            except DeliveryError as exc:
                if exc.status is not None:  # the peer answered: its answer is final here
                    raise
                last = exc
        assert last is not None
        raise last

    async def _send_one(self, base: str, request: HttpRequest) -> Sent:
        url = base.rstrip("/") + request.path
        headers = CIMultiDict(request.headers)  # repeated Cpimgw-Attribute stay repeated
        try:
            async with self.session.request(
                request.method,
                url,
                data=request.body if request.body else None,
                headers=headers,
                skip_auto_headers=() if request.body else ("Content-Type",),
                allow_redirects=False,
            ) as response:
                text = await response.read()
                if response.status in (200, 201, 202, 204):
                    return Sent(native_id=response.headers.get("Cpimgw-Id"), detail=url)
                body = _json(text)
                raise error_from_status(
                    response.status,
                    body,
                    retry_after=retry_after_of(response.headers.get("Retry-After")),
                    where=url,
                )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise DeliveryError(
                f"{url}: the peer's certificate does not verify: {exc.certificate_error}",
                retryable=True,
                reason=Reason.UNAVAILABLE,
                hint="check the peer's certificate and the CA configured for the adapter",
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise DeliveryError(
                f"{url}: TLS failed: {exc}",
                retryable=True,
                reason=Reason.UNAVAILABLE,
                hint="both sides need certificates from the configured CAs (mutual TLS)",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(
                f"{url}: {type(exc).__name__}: {exc}",
                retryable=True,
                reason=Reason.UNAVAILABLE,
                hint="the peer gateway is not reachable; the gateway retries from its store",
            ) from exc
        except TimeoutError as exc:
            raise DeliveryError(
                f"{url}: no answer within {self.timeout:g}s",
                retryable=True,
                reason=Reason.TIMEOUT,
            ) from exc


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


__all__ = ["USER_AGENT", "PeerClient", "client_context"]
