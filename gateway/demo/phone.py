"""A small SIP user agent on cpimgw's own SIP stack (:mod:`adapters.sip`), used as a client
library: it registers with the proxy, sends MESSAGE and PUBLISH, subscribes to presence,
and keeps every MESSAGE and NOTIFY it receives, with its exact bytes.

It is the demo's SIP user (and the end-to-end tests' receiver of binary bodies, which SIPp's
message trace cannot record). RFC 3261 §10 (REGISTER), RFC 3428 (MESSAGE), RFC 3903
(PUBLISH), RFC 6665 (SUBSCRIBE/NOTIFY dialogs, only what a watcher needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from adapters.sip.codec import Request, Response
from adapters.sip.endpoint import Endpoint, Incoming, new_tag
from adapters.sip.transaction import Timers
from adapters.sip.transport import Peer
from gateway.demo.servers import free_port


@dataclass
class _Dialog:
    """The watcher side of one subscription dialog (RFC 6665 §4.1.2)."""

    call_id: str
    local_tag: str
    remote_uri: str
    remote_tag: str | None = None
    target: str | None = None
    route: list[str] = field(default_factory=list)
    cseq: int = 1


class SipPhone:
    """``user``@``domain`` on 127.0.0.1, sending everything through ``proxy``."""

    def __init__(
        self,
        user: str,
        domain: str,
        proxy: tuple[str, int],
        *,
        display: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.user = user
        self.domain = domain
        self.display = display
        self.proxy = Peer("UDP", proxy[0], proxy[1])
        self.received: list[Request] = []
        self._changed = asyncio.Event()
        self._dialogs: dict[str, _Dialog] = {}
        self._etag: str | None = None
        self.logger = logger or logging.getLogger("cpimgw.demo.phone")
        self.endpoint = self._endpoint()

    def _endpoint(self) -> Endpoint:
        return Endpoint(
            handler=self._on_request,
            methods=frozenset({"MESSAGE", "NOTIFY", "OPTIONS"}),
            timers=Timers(t1=0.1, t2=0.8, t4=1.0),
            user_agent="cpimgw-demo-phone",
            logger=self.logger,
        )

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def _from(self, tag: str) -> str:
        name = f'"{self.display}" ' if self.display else ""
        return f"{name}<{self.aor}>;tag={tag}"

    def _contact(self) -> str:
        local = self.endpoint.local("UDP")
        return f"<sip:{self.user}@{local.host}:{local.port}>"

    async def start(self) -> SipPhone:
        """Listen on UDP and TCP on one free port of 127.0.0.1 (large requests come by TCP)."""
        for attempt in range(5):
            port = free_port("udp")
            try:
                await self.endpoint.listen("UDP", "127.0.0.1", port)
                await self.endpoint.listen("TCP", "127.0.0.1", port)
            except OSError:
                await self.endpoint.close(grace=0)
                self.endpoint = self._endpoint()
                if attempt == 4:
                    raise
                continue
            break
        return self

    async def close(self) -> None:
        await self.endpoint.close(grace=0.5)

    async def __aenter__(self) -> SipPhone:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ inbound

    async def _on_request(self, incoming: Incoming) -> None:
        request = incoming.request
        if request.method == "OPTIONS":
            incoming.respond(200, "OK")
            return
        incoming.respond(200, "OK")
        self.received.append(request)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Request], bool], *, within: float = 10.0, after: int = 0
    ) -> Request:
        """The first received request (from index ``after`` on) matching ``predicate``."""
        async with asyncio.timeout(within):
            while True:
                for request in self.received[after:]:
                    if predicate(request):
                        return request
                self._changed.clear()
                await self._changed.wait()

    # ------------------------------------------------------------------ outbound

    def _request(
        self,
        method: str,
        uri: str,
        to: str,
        *,
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        call_id: str | None = None,
        tag: str | None = None,
        cseq: int = 1,
    ) -> Request:
        headers = [
            ("From", self._from(tag or new_tag())),
            ("To", to),
            ("Call-ID", call_id or f"{secrets.token_hex(12)}@{self.domain}"),
            ("CSeq", f"{cseq} {method}"),
            ("Max-Forwards", "70"),
            *extra,
        ]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        return Request.build(method, uri, headers, body)

    async def register(self, expires: int = 600) -> Response:
        """Bind our address to this phone (RFC 3261 §10.2)."""
        return await self.bind(self.user, self._contact(), expires=expires)

    async def bind(self, user: str, contact: str, *, expires: int = 600) -> Response:
        """REGISTER ``user``@domain at ``contact`` (a third-party registration, §10.2:
        the benchmark binds many users to one SIPp receiver this way)."""
        aor = f"sip:{user}@{self.domain}"
        request = self._request(
            "REGISTER",
            f"sip:{self.domain}",
            f"<{aor}>",
            extra=[("Contact", contact), ("Expires", str(expires))],
        )
        return await self.endpoint.request(request, self.proxy)

    async def message(
        self, to: str, body: bytes, content_type: str, *, call_id: str | None = None
    ) -> Response:
        """One MESSAGE to ``to`` (a SIP URI); the final response."""
        request = self._request(
            "MESSAGE", to, f"<{to}>", body=body, content_type=content_type, call_id=call_id
        )
        return await self.endpoint.request(request, self.proxy)

    async def publish(self, pidf: bytes, *, expires: int = 600) -> Response:
        """PUBLISH our presence (RFC 3903 §4); later calls modify the same publication."""
        extra = [("Event", "presence"), ("Expires", str(expires))]
        if self._etag is not None:
            extra.append(("SIP-If-Match", self._etag))
        request = self._request(
            "PUBLISH",
            self.aor,
            f"<{self.aor}>",
            extra=extra,
            body=pidf,
            content_type="application/pidf+xml",
        )
        response = await self.endpoint.request(request, self.proxy)
        if 200 <= response.status < 300:
            self._etag = response.get("SIP-ETag") or self._etag
        return response

    async def subscribe(self, to: str, *, expires: int = 600) -> Response:
        """SUBSCRIBE to ``to``'s presence; NOTIFYs land in :attr:`received`."""
        dialog = _Dialog(
            call_id=f"{secrets.token_hex(12)}@{self.domain}", local_tag=new_tag(), remote_uri=to
        )
        self._dialogs[to] = dialog
        request = self._request(
            "SUBSCRIBE",
            to,
            f"<{to}>",
            extra=[
                ("Contact", self._contact()),
                ("Event", "presence"),
                ("Accept", "application/pidf+xml"),
                ("Expires", str(expires)),
            ],
            call_id=dialog.call_id,
            tag=dialog.local_tag,
        )
        response = await self.endpoint.request(request, self.proxy)
        if 200 <= response.status < 300:
            dialog.remote_tag = response.to.tag
            contact = response.contact
            dialog.target = contact.uri.text if contact is not None else to
            dialog.route = [str(r) for r in reversed(response.record_routes)]
        return response

    async def unsubscribe(self, to: str) -> Response | None:
        """End the subscription to ``to`` (Expires: 0 in the dialog, RFC 6665 §4.1.2.3)."""
        dialog = self._dialogs.pop(to, None)
        if dialog is None or dialog.remote_tag is None:
            return None
        dialog.cseq += 1
        extra = [("Route", r) for r in dialog.route]
        extra += [
            ("Contact", self._contact()),
            ("Event", "presence"),
            ("Expires", "0"),
        ]
        request = self._request(
            "SUBSCRIBE",
            dialog.target or to,
            f"<{to}>;tag={dialog.remote_tag}",
            extra=extra,
            call_id=dialog.call_id,
            tag=dialog.local_tag,
            cseq=dialog.cseq,
        )
        with contextlib.suppress(Exception):
            return await self.endpoint.request(request, self.proxy)
        return None
