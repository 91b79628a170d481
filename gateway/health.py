"""The small HTTP listener for operators: ``/healthz``, ``/readyz``, ``/metrics`` (aiohttp).

- ``/healthz``: 200 while the process serves its event loop (liveness).
- ``/readyz``: 200 when the store is open, the gateway accepts work and every adapter is
  ready; otherwise 503. The JSON body lists each component, so a failing probe says why;
  ``reasons`` (present when an adapter is down and says why) names the cause and its fix.
- ``/metrics``: the Prometheus text format of the gateway's registry.
"""

from __future__ import annotations

import json

from aiohttp import web

from gateway.core import Gateway

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    """Serves the three endpoints for one gateway on ``host:port``."""

    def __init__(self, gateway: Gateway, *, host: str, port: int) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        state = self.gateway.ready()
        ok = all(state.values())
        answer: dict[str, object] = {"ready": ok, "components": state}
        reasons = {
            f"adapter:{name}": reason
            for name, adapter in self.gateway.adapters.items()
            if not state.get(f"adapter:{name}", True)
            and (reason := adapter.not_ready_reason()) is not None
        }
        if reasons:  # why an adapter is down and what to fix (Adapter.not_ready_reason)
            answer["reasons"] = reasons
        body = json.dumps(answer, sort_keys=True) + "\n"
        return web.Response(text=body, status=200 if ok else 503, content_type="application/json")

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self.gateway.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def start(self) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
