"""Prometheus metrics of one gateway (prometheus_client), in their own registry.

Names and labels (documented in the operators' guide, "Metrics"):

- ``cpimgw_messages_in_total{adapter,operation}``: envelopes accepted (stored).
- ``cpimgw_messages_out_total{adapter,operation}``: envelopes delivered to a peer.
- ``cpimgw_messages_failed_total{adapter,reason}``: deliveries given up.
- ``cpimgw_rejected_total{adapter,reason}``: inbound envelopes refused (policy, routing, loop).
- ``cpimgw_duplicates_total{adapter}``: inbound envelopes dropped as already stored.
- ``cpimgw_retries_total{adapter,reason}``: delivery attempts rescheduled.
- ``cpimgw_reports_total{adapter,result}``: failure reports to senders (``sent``/``error``).
- ``cpimgw_signatures_total{state}``: signature checks under ``verify``/``require``.
- ``cpimgw_author_mismatches_total{adapter}``: CPIM From not the sender, let through
  (``[security] author = "off"``).
- ``cpimgw_presence_dropped_total``: NOTIFYs not passed on (no authorised watcher).
- ``cpimgw_delivery_latency_seconds{adapter}``: from receipt to delivery (histogram).
- ``cpimgw_queue_depth{adapter}``, ``cpimgw_queue_failed``, ``cpimgw_queue_oldest_age_seconds``.
- ``cpimgw_presence_subscriptions{state}``.
- ``cpimgw_adapter_ready{adapter}``: 1 while the adapter is connected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from gateway.presence import SubscriptionState
from gateway.store import QueueStats

#: Latency buckets (seconds): sub-millisecond in-process hops up to queued retries.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


class Metrics:
    """The gateway's counters, gauges and histograms (one registry per gateway)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_in = Counter(
            "cpimgw_messages_in", "Envelopes accepted", ["adapter", "operation"], registry=r
        )
        self.messages_out = Counter(
            "cpimgw_messages_out", "Envelopes delivered", ["adapter", "operation"], registry=r
        )
        self.failed = Counter(
            "cpimgw_messages_failed", "Deliveries given up", ["adapter", "reason"], registry=r
        )
        self.rejected = Counter(
            "cpimgw_rejected", "Inbound envelopes refused", ["adapter", "reason"], registry=r
        )
        self.duplicates = Counter(
            "cpimgw_duplicates", "Inbound duplicates dropped", ["adapter"], registry=r
        )
        self.retries = Counter(
            "cpimgw_retries", "Delivery attempts rescheduled", ["adapter", "reason"], registry=r
        )
        self.reports = Counter(
            "cpimgw_reports", "Failure reports to senders", ["adapter", "result"], registry=r
        )
        self.signatures = Counter("cpimgw_signatures", "Signature checks", ["state"], registry=r)
        self.author_mismatches = Counter(
            "cpimgw_author_mismatches",
            "Messages whose CPIM From is not their sender, let through ([security] author = off)",
            ["adapter"],
            registry=r,
        )
        self.presence_dropped = Counter(
            "cpimgw_presence_dropped", "NOTIFYs without an authorised watcher", registry=r
        )
        self.latency = Histogram(
            "cpimgw_delivery_latency_seconds",
            "Receipt to delivery",
            ["adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "cpimgw_queue_depth", "Pending queue entries", ["adapter"], registry=r
        )
        self.queue_failed = Gauge("cpimgw_queue_failed", "Failed entries kept", registry=r)
        self.queue_age = Gauge(
            "cpimgw_queue_oldest_age_seconds", "Age of the oldest pending entry", registry=r
        )
        self.subscriptions = Gauge(
            "cpimgw_presence_subscriptions", "Subscriptions by state", ["state"], registry=r
        )
        self.adapter_ready = Gauge(
            "cpimgw_adapter_ready", "1 while the adapter is ready", ["adapter"], registry=r
        )
        self.store_errors = Counter(
            "cpimgw_store_errors",
            "Store calls of the delivery loops that raised",
            ["operation"],
            registry=r,
        )
        self.internal_errors = Counter(
            "cpimgw_internal_errors",
            "Programming errors a delivery loop caught and restarted after",
            ["where"],
            registry=r,
        )
        self.adapter_dropped = Counter(
            "cpimgw_adapter_series_dropped",
            "Adapter counts not kept: the metric had its maximum of label sets",
            ["adapter"],
            registry=r,
        )
        reserved = {
            str(getattr(m, "_name", ""))
            for m in vars(self).values()
            if isinstance(m, Counter | Gauge | Histogram)
        }
        self.adapters = AdapterCounters(reserved=frozenset(reserved), dropped=self.adapter_dropped)
        r.register(self.adapters)
        self._targets: set[str] = set()
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the hot path asks for the same few often."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_queue(self, stats: QueueStats) -> None:
        for target in self._targets | set(stats.by_target):
            self.queue_depth.labels(target).set(stats.by_target.get(target, 0))
        self._targets |= set(stats.by_target)
        self.queue_failed.set(stats.failed)
        self.queue_age.set(stats.oldest_age)

    def observe_subscriptions(self, counts: dict[SubscriptionState, int]) -> None:
        for state, count in counts.items():
            self.subscriptions.labels(state.value).set(count)

    def render(self) -> bytes:
        """The text exposition format (``/metrics``)."""
        return bytes(generate_latest(self.registry))


#: Label sets one adapter metric may have; counts for further ones are dropped (and
#: counted in ``cpimgw_adapter_series_dropped_total``) so that a label an adapter fills
#: from its peers (a client principal, a status code) cannot grow memory without bound.
MAX_SERIES = 1000
#: Distinct adapter metric names kept (adapter code names them, so this is a backstop).
MAX_FAMILIES = 500
#: Call shapes remembered for the hot path (orderings of label sets, bounded too).
FAST_LIMIT = 50_000

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_log = logging.getLogger("cpimgw.metrics")


def metric_name(name: str) -> str:
    """The exported family name of an adapter count: ``cpimgw_`` + ``name`` with every
    character Prometheus does not allow in a name turned to ``_`` and a trailing
    ``_total`` taken off (the exposition adds it to the sample)."""
    clean = _INVALID.sub("_", name).strip("_") or "unnamed"
    if clean.endswith("_total"):
        clean = clean[: -len("_total")] or "unnamed"
    return f"cpimgw_{clean}"


def label_name(name: str) -> str:
    """A Prometheus label name (``[a-zA-Z_][a-zA-Z0-9_]*``, not starting with ``__``)."""
    clean = _INVALID.sub("_", name) or "label"
    if clean[0].isdigit() or clean.startswith("__"):
        clean = f"l_{clean.lstrip('_')}"
    return clean


class _Series:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _Family:
    __slots__ = ("capped", "name", "series")

    def __init__(self, name: str) -> None:
        self.name = name
        self.series: dict[tuple[tuple[str, str], ...], _Series] = {}
        self.capped = False


class AdapterCounters:
    """The counters adapters keep through ``AdapterContext.count(name, **labels)``,
    exported as Prometheus counters (a registry collector, rendered at scrape time).

    ``count`` is on the adapters' hot paths: a repeated call is one dict lookup and an
    addition. Each family keeps at most ``max_series`` label sets and the collector at
    most ``max_families`` names; counts past either are dropped and counted per adapter
    in ``dropped``. Label names and values are taken as given (values as ``str``); the
    adapter's name is added as the ``adapter`` label unless the adapter passes one."""

    def __init__(
        self,
        *,
        max_series: int = MAX_SERIES,
        max_families: int = MAX_FAMILIES,
        reserved: frozenset[str] = frozenset(),
        dropped: Any = None,
    ) -> None:
        self.max_series = max_series
        self.max_families = max_families
        self.reserved = reserved
        self.dropped = dropped
        self._families: dict[str, _Family] = {}
        #: (adapter, name, labels as passed) -> series: the hot path's one lookup
        self._fast: dict[tuple[str, str, tuple[tuple[str, object], ...]], _Series] = {}

    def for_adapter(self, adapter: str) -> Callable[..., None]:
        """The ``count`` callable for ``AdapterContext`` of adapter ``adapter``."""

        def count(name: str, /, **labels: object) -> None:
            self.count(adapter, name, **labels)

        return count

    def count(self, adapter: str, name: str, /, **labels: object) -> None:
        """Add one to the counter ``name`` of ``adapter`` with ``labels``."""
        try:
            key = (adapter, name, tuple(labels.items()))
            series = self._fast.get(key)
        except TypeError:  # an unhashable label value: take the slow path
            key, series = None, None
        if series is None:
            series = self._series(adapter, name, labels)
            if series is None:
                if self.dropped is not None:
                    self.dropped.labels(adapter).inc()
                return
            if key is not None and len(self._fast) < FAST_LIMIT:
                self._fast[key] = series
        series.value += 1.0

    def _series(self, adapter: str, name: str, labels: dict[str, object]) -> _Series | None:
        family_name = metric_name(name)
        family = self._families.get(family_name)
        if family is None:
            if family_name in self.reserved or len(self._families) >= self.max_families:
                _log.warning("adapter metric not kept", extra={"adapter": adapter, "metric": name})
                return None
            family = self._families[family_name] = _Family(family_name)
        canonical = {label_name(k): str(v) for k, v in labels.items()}
        canonical.setdefault("adapter", adapter)
        key = tuple(sorted(canonical.items()))
        series = family.series.get(key)
        if series is None:
            if len(family.series) >= self.max_series:
                if not family.capped:
                    family.capped = True
                    _log.warning(
                        "adapter metric has its maximum of label sets; further ones are "
                        "dropped and counted in cpimgw_adapter_series_dropped_total",
                        extra={"adapter": adapter, "metric": family_name, "max": self.max_series},
                    )
                return None
            series = family.series[key] = _Series()
        return series

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        for family in list(self._families.values()):
            metric = CounterMetricFamily(
                family.name, "Counted by an adapter (operators' guide, Adapter metrics)"
            )
            for labels, series in list(family.series.items()):
                metric.add_sample(family.name + "_total", dict(labels), series.value)
            yield metric
