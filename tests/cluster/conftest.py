"""Fixtures of the cluster tests: the shared Redis (one per session, a namespace per test)."""

from __future__ import annotations

from tests.servers.redis import redis_namespace, redis_server

__all__ = ["redis_namespace", "redis_server"]
