"""The HTTP API (aiohttp): routes, authentication, and the answers (docs/http-api.md).

Every request is authenticated first — a peer gateway by its verified TLS client
certificate (mutual TLS), an application by ``Authorization: Bearer`` (RFC 6750) — and
then checked against what that principal may do: it sends only as addresses it owns
(the envelope sender *and* the From inside the object, RFC 3862 §2.2) and reads only its
own statuses and events. An operation is answered ``202 Accepted`` only after the gateway
core stored it (``deliver`` returned its Receipt, DESIGN.md "Delivery"), with a status
resource the sender can poll. Refusals are RFC 9457 problem objects whose status comes
from one table (:data:`adapters.cpim.mapping.HTTP_STATUS`); a ``ParseError`` carries its
code, line and byte offset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import hdrs, web

from adapters.contract import Deliver, Outcome, OutcomeLookup, OutcomeState
from adapters.cpim.ledger import Ledger, Status
from adapters.cpim.listener import Gate
from adapters.cpim.mapping import (
    APPLICATION_ATTRIBUTES,
    ATTRIBUTE,
    CARRIED,
    ID,
    REPORT_IDENTITY,
    REPORT_MESSAGE,
    REPORT_REASON,
    HttpMapper,
    HttpRequest,
    Reading,
    problem,
    status_of,
)
from adapters.cpim.stream import Hub, parse_cursor, serve_sse, serve_websocket
from adapters.cpim.token import Principal, RateBook, TokenBook, certificate_names
from canonical.envelope import Operation, Origin, identity_of
from canonical.errors import DeliveryError, GatewayError, ParseError, Reason, SecurityError

PRINCIPAL = web.RequestKey("principal", Principal)
PROBLEM = "application/problem+json"
_RETRY_HINT = re.compile(r"retry after ([0-9]+(?:\.[0-9]+)?)s")
_UNAUTHENTICATED_PATHS = frozenset({"/openapi.yaml"})
#: Operations whose final failure the core reports to the adapter they came from, with
#: the reason (``Gateway._report``, RFC 3860 §3.4.1); for the others no report follows.
_REPORTED = frozenset({Operation.MESSAGE.value, Operation.SUBSCRIBE.value})
#: Seconds a status read keeps an operation the store gave up *accepted* while the core's
#: report (and so the reason) is on its way; after that the adapter records the failure
#: itself, reason ``internal``.
REPORT_GRACE = 5.0
#: Failures waiting for their report that a status read remembers (oldest forgotten).
_UNREPORTED_MAX = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def openapi_text() -> str:
    """The OpenAPI document shipped with the adapter (``adapters/cpim/openapi.yaml``)."""
    return resources.files("adapters.cpim").joinpath("openapi.yaml").read_text("utf-8")


def problem_response(
    error: GatewayError, *, status: int | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """The RFC 9457 answer for ``error``; 429/503 carry ``Retry-After`` (RFC 9110 §10.2.3)."""
    code = status if status is not None else status_of(error.reason)
    extra = dict(headers or {})
    if code in (429, 503):
        wait = getattr(error, "retry_after", None)
        if wait is None:
            found = _RETRY_HINT.search(error.hint or "")
            wait = float(found.group(1)) if found else 1.0
        extra.setdefault("Retry-After", str(max(1, math.ceil(wait))))
    if code == 401:
        extra.setdefault("WWW-Authenticate", 'Bearer realm="cpimgw"')
    return web.json_response(
        problem(error, status=code), status=code, headers=extra, content_type=PROBLEM
    )


def status_body(status: Status) -> dict[str, Any]:
    """The JSON of a status resource."""
    return {
        "id": status.identity,
        "operation": status.operation,
        "state": status.state,
        "cpim_status": status.cpim_status,
        "reason": status.reason,
        "detail": status.detail,
        "attempts": status.attempts,
        "created_at": status.created_at,
    }


class Api:
    """The aiohttp application of one adapter instance."""

    def __init__(
        self,
        *,
        name: str,
        mapper: HttpMapper,
        tokens: TokenBook,
        ledger: Ledger,
        hub: Hub,
        clock: Callable[[], float],
        count: Callable[..., None],
        logger: Any,
        max_body: int,
        heartbeat: float = 15.0,
        body_timeout: float = 30.0,
        gate: Gate | None = None,
        outcome: OutcomeLookup | None = None,
        report_grace: float = REPORT_GRACE,
    ) -> None:
        self.name = name
        self.mapper = mapper
        self.tokens = tokens
        self.ledger = ledger
        self.hub = hub
        self.clock = clock
        self.count = count
        self.log = logger
        self.max_body = max_body
        self.heartbeat = heartbeat
        self.body_timeout = body_timeout
        self.gate = gate
        self.outcome = outcome
        self.report_grace = report_grace
        #: identity -> when a status read first found the store had given it up while
        #: no report had landed here yet
        self._unreported: dict[str, float] = {}
        self.deliver: Deliver | None = None
        self.rates = RateBook()
        self._openapi = openapi_text()

    def app(self) -> web.Application:
        middlewares = [self._answer_errors, self._authenticate]
        if self.gate is not None:
            middlewares.insert(0, self.gate.track)
        app = web.Application(middlewares=middlewares, client_max_size=self.max_body)
        app.router.add_get("/openapi.yaml", self.openapi)
        app.router.add_get("/v1/me", self.me)
        for method, path in (
            ("POST", "/v1/messages"),
            ("POST", "/v1/subscriptions"),
            ("DELETE", "/v1/subscriptions"),
            ("POST", "/v1/presence"),
            ("POST", "/v1/authorizations"),
        ):
            app.router.add_route(method, path, self.operate)
        app.router.add_get("/v1/status/{id}", self.status)
        app.router.add_get("/v1/events", self.events)
        app.router.add_post("/v1/events/ack", self.ack)
        return app

    # -- middlewares ------------------------------------------------------------------

    @web.middleware
    async def _answer_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            self.count("http_refused", adapter=self.name, reason=exc.reason.value)
            return problem_response(exc)
        except web.HTTPRequestEntityTooLarge:
            return problem_response(
                GatewayError(
                    f"the body is larger than {self.max_body} bytes",
                    reason=Reason.TOO_LARGE,
                    hint="send a smaller object",
                )
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = {404: Reason.UNKNOWN_DESTINATION, 413: Reason.TOO_LARGE}.get(
                exc.status, Reason.BAD_REQUEST
            )
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return problem_response(
                GatewayError(
                    f"{request.method} {request.path}: {exc.reason}",
                    reason=reason,
                    hint="see /openapi.yaml for the operations",
                ),
                status=exc.status,
                headers=headers,
            )
        except (ConnectionResetError, TimeoutError):
            raise
        except Exception as exc:
            self.log.exception("http %s: %s %s failed", self.name, request.method, request.path)
            return problem_response(
                GatewayError(f"internal error: {type(exc).__name__}", reason=Reason.INTERNAL)
            )

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _UNAUTHENTICATED_PATHS:
            return await handler(request)
        principal = None
        transport = request.transport
        if transport is not None:
            names = certificate_names(transport.get_extra_info("peercert"))
            principal = self.tokens.peer(names) if names else None
        if principal is None:
            principal = self.tokens.authenticate(request.headers.get(hdrs.AUTHORIZATION))
        if principal is None:
            given = hdrs.AUTHORIZATION in request.headers
            raise GatewayError(
                "the bearer token is not valid" if given else "authentication required",
                reason=Reason.UNAUTHENTICATED,
                hint="send Authorization: Bearer <token> (or connect with a peer certificate)",
            )
        request[PRINCIPAL] = principal
        return await handler(request)

    # -- operations ---------------------------------------------------------------------

    async def operate(self, request: web.Request) -> web.Response:
        principal = request[PRINCIPAL]
        now = self.clock()
        if principal.kind == "client":
            wait = self.rates.take(
                principal.name, rate=principal.rate, burst=principal.burst, now=now
            )
            if wait > 0:
                raise SecurityError(
                    f"{principal.name} sends faster than {principal.rate:g} operations/s",
                    reason=Reason.RATE_LIMITED,
                    hint=f"retry after {wait:.1f}s",
                )
        length = request.content_length
        if length is not None and length > self.max_body:
            raise GatewayError(
                f"the body of {length} bytes is larger than {self.max_body}",
                reason=Reason.TOO_LARGE,
                hint="send a smaller object",
            )
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await request.read()
        except TimeoutError:
            return self._late(request, principal)
        native = self._native(request, principal, body)
        reading = self.mapper.read(
            native,
            origin=Origin(adapter=self.name, peer=principal.name, context={"kind": principal.kind}),
            received_at=now,
        )
        refused = [loss.field for loss in reading.envelope.losses if ATTRIBUTE in loss.field]
        if refused:
            raise ParseError(
                "HTTP_PRIVATE_ATTRIBUTE",
                f"an application may not set {', '.join(refused)}",
                hint="applications may set: " + ", ".join(sorted(APPLICATION_ATTRIBUTES)),
            )
        self._check_sender(principal, reading)
        deliver = self.deliver
        if deliver is None:
            raise DeliveryError(
                "the adapter is not connected to the gateway yet",
                retryable=True,
                reason=Reason.UNAVAILABLE,
                retry_after=1.0,
            )
        envelope = reading.envelope
        receipt = await deliver(envelope)
        self.ledger.accepted(
            envelope.identity, principal.name, envelope.operation.value, at=now
        ).add_done_callback(self._recorded)
        failed = envelope.attributes.get(REPORT_IDENTITY)
        if principal.kind == "peer" and failed is not None:
            # A peer reports the final failure of an operation that went out through
            # it; if it was sent here, its status resource says so too.
            await self.ledger.failed(
                failed,
                reason=envelope.attributes.get(REPORT_REASON, Reason.INTERNAL.value),
                detail=envelope.attributes.get(REPORT_MESSAGE, ""),
                at=now,
            )
        self.count("http_accepted", adapter=self.name, operation=envelope.operation.value)
        location = f"/v1/status/{envelope.identity}"
        return web.json_response(
            {
                "id": envelope.identity,
                "state": "accepted",
                "duplicate": receipt.duplicate,
                "status": location,
            },
            status=202,
            headers={"Location": location, ID: envelope.identity},
        )

    def _late(self, request: web.Request, principal: Principal) -> web.Response:
        """A body that did not arrive within ``body_timeout``: 408 and the connection
        closed (RFC 9110 §15.5.9), so a slow sender holds no descriptor past it."""
        self.count("http_body_timeouts", adapter=self.name)
        self.log.warning(
            "http %s: %s did not send the body of %s %s within %gs (body_timeout)",
            self.name,
            principal.name,
            request.method,
            request.path,
            self.body_timeout,
        )
        response = problem_response(
            GatewayError(
                f"the body did not arrive within {self.body_timeout:g}s",
                reason=Reason.TIMEOUT,
                hint="send the whole body at once, or raise body_timeout",
            ),
            status=408,
        )
        response.force_close()
        return response

    def _recorded(self, written: asyncio.Future[Any]) -> None:
        if not written.cancelled() and written.exception() is not None:
            self.log.error(
                "http %s: a status row was not written: %s", self.name, written.exception()
            )
            self.count("http_status_lost", adapter=self.name)

    def _native(self, request: web.Request, principal: Principal, body: bytes) -> HttpRequest:
        carried = {name.lower() for name in CARRIED}
        headers: list[tuple[str, str]] = []
        for name, given in request.headers.items():
            if name.lower() not in carried:
                continue
            value = given
            if name.lower() == ID.lower() and principal.kind == "client":
                # An application's id is its own idempotency key: scope it to the
                # principal, so no caller can collide with another's identities.
                value = identity_of("cpim-http", principal.name, given)
            headers.append((name, value))
        return HttpRequest(request.method, request.path, tuple(headers), body)

    def _check_sender(self, principal: Principal, reading: Reading) -> None:
        """RFC 3860 §4 / RFC 3862 §2.2: nobody sends as an address it does not own."""
        envelope = reading.envelope
        claimed = [("envelope sender", envelope.sender)]
        if reading.authors.sender is not None:
            claimed.append(
                ("object's From" if envelope.payload else "sender", reading.authors.sender)
            )
        for what, address in claimed:
            if not principal.may_send_as(address):
                raise SecurityError(
                    f"{principal.name} may not send as {address} (the {what})",
                    reason=Reason.FORBIDDEN,
                    hint="send as one of: " + ", ".join(str(p) for p in principal.send_as)
                    if principal.send_as
                    else "this token may not send; ask the operator for send_as patterns",
                )

    # -- statuses, events, identity ----------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        principal = request[PRINCIPAL]
        identity = request.match_info["id"]
        found = await self.ledger.status(identity)
        if found is None or found.principal != principal.name:
            raise GatewayError(
                f"no operation {identity[:64]!r} sent by {principal.name}",
                reason=Reason.UNKNOWN_DESTINATION,
                hint="use the id (or Location) of the 202 answer",
            )
        if found.state == "accepted":
            found = await self._settle(found)
        return web.json_response(status_body(found))

    async def _settle(self, status: Status) -> Status:
        """An accepted operation's status completed from the gateway store's outcome
        (any store backend); ``known`` is False when the store cannot tell (RFC 3860
        §3.4.1 *indeterminant*): no store to ask, or it no longer remembers the identity
        (finished longer ago than its dedup window)."""
        lookup = self.outcome
        if lookup is None:
            return dataclasses.replace(status, known=False)
        try:
            outcome = await lookup(status.identity)
        except GatewayError as exc:
            self.log.warning("http %s: the store could not tell an outcome: %s", self.name, exc)
            return dataclasses.replace(status, known=False)
        if outcome is None:
            return dataclasses.replace(status, known=False)
        if outcome.state is OutcomeState.DELIVERED:
            await self.ledger.delivered(status.identity, at=self.clock())
            return dataclasses.replace(status, state="delivered")
        if outcome.state is OutcomeState.FAILED:
            return await self._given_up(status, outcome)
        return dataclasses.replace(status, detail=outcome.error, attempts=outcome.attempts)

    async def _given_up(self, status: Status, outcome: Outcome) -> Status:
        """The status of an operation the gateway store says failed.

        A failed status always carries its reason, and the reason comes only with the
        core's report (:meth:`CpimHttpAdapter.report`), which the core sends *after* the
        store marked the entry failed. So until the report lands the status stays
        *accepted* (with the store's attempts and error), for at most ``report_grace``
        seconds; a failure no report follows (an operation the core does not report on,
        an operator's drop, a report lost in a crash or taken by another node) is then
        recorded here with reason ``internal`` and the store's error as detail.
        """
        identity = status.identity
        landed = await self.ledger.status(identity)  # the report may be in since the read
        if landed is not None and landed.state != "accepted":
            self._unreported.pop(identity, None)
            return landed
        now = self.clock()
        if status.operation in _REPORTED:
            first = self._unreported.setdefault(identity, now)
            if len(self._unreported) > _UNREPORTED_MAX:
                del self._unreported[next(iter(self._unreported))]
            if now - first < self.report_grace:
                return dataclasses.replace(status, detail=outcome.error, attempts=outcome.attempts)
        self._unreported.pop(identity, None)
        detail = outcome.error or "the gateway gave the operation up"
        self.log.warning(
            "http %s: %s failed and no report with its reason came; recorded as internal: %s",
            self.name,
            identity,
            detail,
        )
        await self.ledger.failed(
            identity, reason=Reason.INTERNAL.value, detail=detail, at=now, unless_settled=True
        )
        found = await self.ledger.status(identity)
        if found is None:  # pruned meanwhile
            return dataclasses.replace(
                status, state="failed", reason=Reason.INTERNAL.value, detail=detail
            )
        return found

    def _client(self, request: web.Request) -> Principal:
        principal = request[PRINCIPAL]
        if principal.kind != "client" or not principal.watch:
            raise SecurityError(
                f"{principal.name} watches no address",
                reason=Reason.FORBIDDEN,
                hint="ask the operator for watch patterns on this token",
            )
        return principal

    async def events(self, request: web.Request) -> web.StreamResponse:
        principal = self._client(request)
        text = request.headers.get("Last-Event-ID", request.query.get("after"))
        cursor = parse_cursor(text)
        if text is not None and cursor is None:
            raise ParseError(
                "HTTP_BAD_CURSOR",
                f"{text[:40]!r} is not an event id",
                hint="send the id of the last event received (decimal digits)",
            )
        if cursor:
            await self.ledger.ack(principal.name, through=cursor)
        if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
            return await serve_websocket(
                request,
                principal=principal.name,
                cursor=cursor or 0,
                ledger=self.ledger,
                hub=self.hub,
                heartbeat=self.heartbeat,
                logger=self.log,
            )
        return await serve_sse(
            request,
            principal=principal.name,
            cursor=cursor or 0,
            ledger=self.ledger,
            hub=self.hub,
            heartbeat=self.heartbeat,
        )

    async def ack(self, request: web.Request) -> web.Response:
        principal = self._client(request)
        text = request.query.get("through")
        through = parse_cursor(text)
        if through is None:
            raise ParseError(
                "HTTP_BAD_CURSOR",
                "?through= must be the id of the last event processed",
                hint="POST /v1/events/ack?through=<event id>",
            )
        removed = await self.ledger.ack(principal.name, through=through)
        return web.json_response({"removed": removed})

    async def me(self, request: web.Request) -> web.Response:
        principal = request[PRINCIPAL]
        backlog = await self.ledger.backlog(principal.name) if principal.kind == "client" else 0
        return web.json_response(
            {
                "name": principal.name,
                "kind": principal.kind,
                "send_as": [str(p) for p in principal.send_as],
                "watch": [str(p) for p in principal.watch],
                "backlog": backlog,
            }
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi, content_type="application/yaml")


__all__ = ["PRINCIPAL", "Api", "openapi_text", "problem_response", "status_body"]
