"""The adapter under test, as the kit sees it: a pure mapper, its declared capabilities
and two addresses to send envelopes between.

A target is built from an installed adapter (entry point name), from an adapter class, or
directly from a mapper (for unit tests of a mapper that has no shell yet). Building one
does no I/O: the adapter's constructor must not do any (DESIGN.md rule 2).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapters.contract import (
    Adapter,
    AdapterContext,
    Capability,
    Mapper,
    Sample,
    available,
    load,
)
from canonical.errors import AdapterError, ConfigError
from canonical.policy import DEFAULT, Policy

#: The gateway id the kit's envelopes carry in their trace.
GATEWAY_ID = "cpimgw-conformance"


@dataclass(frozen=True, slots=True)
class Target:
    """One adapter under test.

    ``local`` is a user on the adapter's network, ``remote`` one elsewhere (gateway-wide
    addresses); ``name`` is the entry-point name, ``kind`` the adapter's kind (native
    vector folders are matched by kind).
    """

    name: str
    kind: str
    mapper: Mapper[Any]
    capabilities: frozenset[Capability]
    local: str = "im:charles@example.net"
    remote: str = "im:ada@example.com"
    distribution: str | None = None
    version: str | None = None
    policy: Policy = DEFAULT

    def supports(self, needed: frozenset[Capability]) -> bool:
        return needed <= self.capabilities

    def missing(self, needed: frozenset[Capability]) -> frozenset[Capability]:
        return needed - self.capabilities

    @classmethod
    def from_adapter(
        cls,
        adapter: type[Adapter],
        *,
        name: str | None = None,
        sample: Sample | None = None,
        config: Mapping[str, Any] | None = None,
        distribution: str | None = None,
        version: str | None = None,
    ) -> Target:
        """A target from an adapter class: its :meth:`~Adapter.sample` (or ``sample``), with
        ``config`` (a TOML/JSON section) validated by the adapter's config model when given."""
        chosen = sample if sample is not None else adapter.sample()
        if config is not None:
            try:
                parsed = adapter.config_model.model_validate(dict(config))
            except ValueError as exc:
                raise ConfigError(
                    f"invalid config for adapter {adapter.kind!r}: {exc}",
                    hint="give the keys of the adapter's [adapters.NAME] section",
                ) from exc
            chosen = Sample(config=parsed, local=chosen.local, remote=chosen.remote)
        label = name or adapter.kind
        context = AdapterContext(
            gateway_id=GATEWAY_ID, logger=logging.getLogger(f"cpimgw.conformance.{label}")
        )
        instance = adapter(label, chosen.config, context)
        return cls(
            name=label,
            kind=adapter.kind,
            mapper=instance.mapper,
            capabilities=frozenset(adapter.capabilities),
            local=chosen.local,
            remote=chosen.remote,
            distribution=distribution,
            version=version,
            policy=context.policy,
        )

    @classmethod
    def installed(cls, name: str, *, config: Mapping[str, Any] | None = None) -> Target:
        """A target from the adapter registered as ``name`` in ``cpimgw.adapters``."""
        adapter = load(name)
        info = next((i for i in available() if i.name == name), None)
        try:
            return cls.from_adapter(
                adapter,
                name=name,
                config=config,
                distribution=info.distribution if info else None,
                version=info.version if info else None,
            )
        except (ConfigError, AdapterError):
            raise
        except Exception as exc:
            raise AdapterError(
                f"adapter {name!r} cannot be built for the conformance run: "
                f"{type(exc).__name__}: {exc}",
                hint="its sample() config must build the adapter without I/O",
            ) from exc
